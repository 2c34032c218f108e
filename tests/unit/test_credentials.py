"""Credentials come only from the environment and never reach a log line (issue 15 part 4):
the broker URL's and the MongoDB URI's passwords, the webhook secret and the SMTP password,
whether they are logged as fields, inside messages, in exception texts or in tracebacks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from campaign_worker.adapters import logs
from campaign_worker.adapters.logs import configure_logging, register_credentials
from campaign_worker.settings import Settings

BROKER_PASSWORD = "brokerpw-6a1f"
MONGO_PASSWORD = "mongo/pw@7c2e"  # URL-encoded in the URI
WEBHOOK_SECRET = "whsecret-91d0"
SMTP_PASSWORD = "smtppass-3e55"
ENVIRONMENT = {
    "CELERY_BROKER_URL": f"redis://:{BROKER_PASSWORD}@broker.internal:6379/0",
    "MONGODB_URI": "mongodb://app:mongo%2Fpw%407c2e@db.internal:27017/?authSource=admin",
    "WEBHOOK_URL": "https://hooks.example.com/in",
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "SMTP_HOST": "smtp.internal",
    "SMTP_PASSWORD": SMTP_PASSWORD,
}
SECRETS = (BROKER_PASSWORD, MONGO_PASSWORD, "mongo%2Fpw%407c2e", WEBHOOK_SECRET, SMTP_PASSWORD)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
def stream(settings: Settings) -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("DEBUG", "json", stream=out)
    register_credentials(*settings.credentials())
    yield out
    register_credentials()
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_settings_read_every_credential_from_the_environment(settings: Settings) -> None:
    assert settings.celery_broker_url == ENVIRONMENT["CELERY_BROKER_URL"]
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == WEBHOOK_SECRET
    assert settings.smtp_password is not None
    shown = repr(settings) + str(settings.model_dump())
    assert WEBHOOK_SECRET not in shown and SMTP_PASSWORD not in shown


def test_no_credential_in_any_log_line(settings: Settings, stream: io.StringIO) -> None:
    log = structlog.get_logger("test")
    log.info("connecting", broker=settings.celery_broker_url, uri=settings.mongodb_uri)
    log.warning(f"signing with {WEBHOOK_SECRET} for {settings.celery_broker_url}")
    logging.getLogger("kombu").error("cannot connect to %s", settings.celery_broker_url)
    logging.getLogger("celery").warning("smtp login failed for password %s", SMTP_PASSWORD)
    try:
        raise ConnectionError(f"auth failed: {settings.mongodb_uri} ({MONGO_PASSWORD})")
    except ConnectionError:
        log.exception("mongo_down")
    try:
        raise ValueError(WEBHOOK_SECRET)
    except ValueError:
        logging.getLogger("celery.app.trace").exception("Task failed")
    log.debug("details", nested={"deep": [f"x {SMTP_PASSWORD} y"]})
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 7
    for secret in SECRETS:
        assert secret not in text, secret
    assert text.count(logs.REDACTED) >= 8
    assert "broker.internal" in text and "db.internal" in text  # the rest stays readable


def test_short_or_missing_credentials_scrub_nothing_else(stream: io.StringIO) -> None:
    register_credentials(None, "", "abc", "redis://localhost:6379/0")
    structlog.get_logger("test").info("plain", value="abc redis://localhost:6379/0")
    assert "abc redis://localhost:6379/0" in stream.getvalue()
