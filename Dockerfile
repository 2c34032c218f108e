# campaign-worker image: the Celery worker by default; beat and the operator CLI use the
# same image with another command (see docker-compose.yml and docs/deployment.md).

# --- build: turn the package and its dependencies into wheels --------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
# Exact versions from constraints.txt, the same that make demo / make test install.
RUN pip wheel --wheel-dir /wheels -c constraints.txt .

# --- runtime ---------------------------------------------------------------------------
FROM python:3.11-slim
# Celery imports `celeryconfig` as a top-level module. pip installs it too; the copy in
# /app (first on PYTHONPATH) is the one to bind-mount over to change settings in place.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    LOG_FORMAT=json \
    METRICS_PORT=9808

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app \
    && mkdir -p /app /var/lib/campaign-worker \
    && chown app:app /var/lib/campaign-worker

# pip install . (as wheels built above, so no source tree or build tools stay in the image).
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels campaign-worker && rm -rf /wheels

WORKDIR /app
COPY celeryconfig.py /app/celeryconfig.py

USER app:app
EXPOSE 9808

HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
    CMD ["campaign-worker", "health"]

CMD ["celery", "-A", "campaign_worker.entrypoints.celery_app", "worker", \
     "-Q", "celery,polling,initialization,processing,inbound,delivery", "--loglevel=INFO"]
