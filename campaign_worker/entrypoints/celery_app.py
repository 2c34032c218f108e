"""The Celery application: configuration, beat schedule, per-process bootstrap, task policy.

Start a worker and beat with::

    celery -A campaign_worker.entrypoints.celery_app worker -l INFO
    celery -A campaign_worker.entrypoints.celery_app beat -l INFO

Settings come from ``celeryconfig`` (repo root; ``CELERY_CONFIG_MODULE`` names another
module) and from ``campaign_worker.settings`` (MongoDB, batch sizes, poll interval).

Process model: the worker's parent process ensures the MongoDB indexes once at start
(``worker_init``) and closes its client before forking; each prefork child builds one
Container (MongoClient, repositories, CampaignManager) in ``worker_process_init`` and
closes it in ``worker_process_shutdown``. SIGTERM is Celery's warm shutdown: consuming
stops, running tasks finish, unfinished (late-acked) messages go back to the broker.

Task policy (``CampaignTask``, applied by ``public_task``): arguments are validated against
the task function's signature; invalid input (``InvalidInputError``, which includes
unknown ids) is stored in ``dead_letters`` and fails the task without retry; transient
errors (MongoDB/broker connectivity, lost compare-and-set races) are retried with
exponential backoff, full jitter and a cap; a task whose retries run out, or that fails
unexpectedly, is dead-lettered too, so an operator can replay it once the cause is fixed
(``campaign-worker dead-letters``).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import structlog
from celery import Celery, Task, current_task, signals
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerOperationalError
from pydantic import ValidationError, validate_call
from pydantic_core import to_jsonable_python
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError

from campaign_worker.adapters.broker import install_payload_guard, install_redis_close_guard
from campaign_worker.adapters.logs import scrub, secrets_of
from campaign_worker.bootstrap import Container, bootstrap
from campaign_worker.domain.documents import describe_validation_error
from campaign_worker.domain.errors import (
    ConcurrencyConflictError,
    ConfigurationError,
    InvalidInputError,
    TransientError,
)
from campaign_worker.entrypoints import claims
from campaign_worker.entrypoints import observability as hooks
from campaign_worker.entrypoints.envelope import Rejection
from campaign_worker.entrypoints.preflight import EXIT_CONFIG, check_configuration
from campaign_worker.settings import Settings, get_settings

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

TASKS_MODULE = "campaign_worker.entrypoints.tasks"
DELIVERY_TASKS_MODULE = "campaign_worker.entrypoints.delivery_tasks"

install_redis_close_guard()  # a Redis restart must not end the worker: see the module
install_payload_guard()  # nor a raw message whose headers are not a mapping


def _settings_or_exit() -> Settings:
    """The settings (Celery's included, via celeryconfig), or a one-line reason and exit
    code 78 before anything starts: a process that cannot be configured must not run."""
    try:
        return get_settings()
    except ConfigurationError as exc:
        sys.stderr.write(f"campaign-worker: {exc}\n")
        raise SystemExit(EXIT_CONFIG) from None


_settings_or_exit()
app = Celery("campaign_worker", include=[TASKS_MODULE, DELIVERY_TASKS_MODULE])
app.config_from_object(os.environ.get("CELERY_CONFIG_MODULE") or "celeryconfig")
# Every task message is checked before Celery sees it: kept as a dead letter, never dropped.
app.conf.worker_consumer = "campaign_worker.entrypoints.consumer:GuardedConsumer"


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The poller runs every ``POLL_INTERVAL_SECONDS``; a poll nobody picked up within one
    interval expires (the next one supersedes it) instead of piling up."""
    interval = settings.poll_interval_seconds
    reconcile = settings.reconcile_interval_seconds
    return {
        "poll-campaigns": {
            "task": "campaign_worker.poll_campaigns",
            "schedule": interval,
            "options": {"queue": "polling", "expires": max(interval, 1.0)},
        },
        "reconcile-metrics": {
            "task": "campaign_worker.reconcile_metrics",
            "schedule": reconcile,
            "options": {"queue": "polling", "expires": max(reconcile, 1.0)},
        },
        # The dispatcher's backstop: a full batch enqueues the next one itself.
        "dispatch-deliveries": {
            "task": "campaign_worker.dispatch_deliveries",
            "schedule": settings.delivery_interval_seconds,
            "options": {
                "queue": "delivery",
                "expires": max(settings.delivery_interval_seconds, 1.0),
            },
        },
    }


app.conf.beat_schedule = beat_schedule(get_settings())
hooks.install(app)

# ----------------------------------------------------------------------------- container

_lock = threading.Lock()
_container: Container | None = None
_container_pid: int | None = None
_indexes_ready = False


def _build_container(*, create_indexes: bool) -> Container:
    settings = get_settings()
    built = bootstrap(
        settings,
        recorder=hooks.metrics_recorder(settings),
        event_listeners=hooks.mongo_event_listeners(settings),
        create_indexes=create_indexes,
    )
    if create_indexes:
        built.dead_letters.initialize()
        built.task_claims.initialize()
    return built


def container() -> Container:
    """This process's Container (built on first use if no signal built it)."""
    global _container, _container_pid
    with _lock:
        if _container is None or _container_pid != os.getpid():
            _container = _build_container(create_indexes=False)
            _container_pid = os.getpid()
        return _container


def set_container(value: Container | None) -> None:
    """Install a Container for this process (tests); None drops it (unclosed)."""
    global _container, _container_pid
    with _lock:
        _container = value
        _container_pid = os.getpid() if value is not None else None


def close_container() -> None:
    global _container, _container_pid
    with _lock:
        if _container is not None and _container_pid == os.getpid():
            _container.close()
        _container = None
        _container_pid = None


@signals.worker_init.connect
def _ensure_indexes_at_start(**_: Any) -> None:
    """Worker parent, before forking and consuming: check settings and templates, create
    the indexes once, then drop the client. A worker that could not serve stops here
    (``SystemExit``, which Celery's signal dispatch lets through) instead of consuming."""
    global _indexes_ready
    try:
        check_configuration()
        built = _build_container(create_indexes=True)
        # A changed template file becomes a new stored version as the worker starts
        # (running campaigns stay on the version they pinned).
        registered = built.manager.register_templates()
        log.info("templates_registered", versions=registered)
    except ConfigurationError as exc:
        _refuse_to_start(exc)
    except (TransientError, ConnectionFailure) as exc:
        log.error("indexes_not_ensured", error=str(exc), retry_in="worker processes")
        return
    except PyMongoError as exc:  # e.g. an index that conflicts with an existing one
        _refuse_to_start(ConfigurationError(f"cannot create the MongoDB indexes: {exc}"))
    built.close()
    _indexes_ready = True
    log.info("indexes_ensured", db=built.settings.mongodb_db)


def _refuse_to_start(exc: ConfigurationError) -> NoReturn:
    log.critical("worker_not_started", error=str(exc))
    raise SystemExit(EXIT_CONFIG)


@signals.worker_process_init.connect
def _init_process(**_: Any) -> None:
    """Prefork child: one Container per process, built after the fork."""
    global _container, _container_pid
    with _lock:
        _container, _container_pid = None, None  # the parent's, if any: not ours to close
    built = _build_container(create_indexes=False)
    set_container(built)
    if not _indexes_ready:
        try:
            _build_indexes(built)
        except (TransientError, PyMongoError) as exc:
            log.error("indexes_not_ensured", error=str(exc))
    log.info("worker_process_ready", pid=os.getpid())


def _build_indexes(built: Container) -> None:
    from campaign_worker.bootstrap import ensure_indexes
    from campaign_worker.delivery_wiring import ensure_delivery_indexes

    ensure_indexes(built.manager)
    ensure_delivery_indexes(built.db)
    built.dead_letters.initialize()
    built.task_claims.initialize()


@signals.worker_process_shutdown.connect
def _shutdown_process(**_: Any) -> None:
    close_container()
    log.info("worker_process_stopped", pid=os.getpid())


@signals.worker_shutdown.connect
def _shutdown_worker(**_: Any) -> None:
    close_container()
    log.info("worker_stopped", pid=os.getpid())


# ----------------------------------------------------------------------------- task policy

# Retried with backoff: the request was fine, the infrastructure was not (yet).
RETRYABLE: tuple[type[BaseException], ...] = (
    TransientError,
    ConcurrencyConflictError,
    ConnectionFailure,  # includes AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
    ExecutionTimeout,
    BrokerOperationalError,
    ConnectionError,
    TimeoutError,
    # Out of time (a slow database, a short CELERY_TASK_SOFT_TIME_LIMIT): every task is
    # idempotent or resumes from its checkpoint, so it is retried, not dead-lettered at once.
    SoftTimeLimitExceeded,
)


# A failed task whose dead letter cannot be stored goes back to the broker after this
# pause (the task process waits it out), so a store outage is no hot loop.
STORE_RETRY_PAUSE_SECONDS = 2.0


def current_task_id() -> str | None:
    task = current_task
    if task is None or task.request is None:
        return None
    task_id = task.request.id
    return str(task_id) if task_id else None


def jsonable(value: Any) -> Any:
    """Task results are JSON: datetimes become ISO 8601 strings."""
    return to_jsonable_python(value)


def dead_letter(
    task_name: str,
    args: Any,
    kwargs: Any,
    error: BaseException,
    *,
    reason: str = "invalid_input",
    task_id: str | None = None,
) -> None:
    """Keep a rejected message (payload, error, time) for an operator to list and replay."""
    task_id = task_id or current_task_id() or uuid.uuid4().hex
    args, kwargs = _as_list(args), dict(kwargs) if isinstance(kwargs, dict) else {}
    # The error text is listed and logged: no argument (reply text, recipient) in it.
    text = scrub(str(error), secrets_of(args, kwargs))
    c = container()
    stored = c.dead_letters.add(
        task_id,
        task_name,
        args,
        kwargs,
        text,
        type(error).__name__,
        c.manager.clock.now(),
        reason=reason,
    )
    _dead_lettered(task_name, task_id, reason, type(error).__name__, text, stored)


def dead_letter_rejection(rejection: Rejection) -> None:
    """Keep a message refused before it became a task (``envelope.check``), raw body and
    headers included, under a deterministic id (task id, else a hash of the body)."""
    c = container()
    task_name = rejection.task_name or "(none)"
    has_payload = rejection.args is not None and rejection.kwargs is not None
    stored = c.dead_letters.add(
        rejection.dead_letter_id,
        task_name,
        rejection.args or [],
        rejection.kwargs or {},
        rejection.error,
        "RejectedMessage",
        c.manager.clock.now(),
        reason=rejection.reason,
        envelope=rejection.envelope,
        payload=has_payload,
    )
    _dead_lettered(
        task_name, rejection.dead_letter_id, rejection.reason, None, rejection.error, stored
    )


def _dead_lettered(
    task_name: str, task_id: str, reason: str, error_type: str | None, error: str, stored: bool
) -> None:
    # Unregistered names (a misspelt task) share one label: label values stay bounded.
    hooks.dead_lettered(task_name if task_name in app.tasks else "unregistered", reason)
    log.warning(
        "task_dead_lettered",
        task_name=task_name,
        task_id=task_id,
        reason=reason,
        error_type=error_type,
        error=error,
        first_time=stored,
    )


def _as_list(args: Any) -> list[Any]:
    """Positional arguments as stored: a client may send ``null`` or a lone value."""
    if args is None:
        return []
    return list(args) if isinstance(args, list | tuple) else [args]


class CampaignTask(Task):  # type: ignore[type-arg]
    """Base of every public task: retry policy and dead letters."""

    autoretry_for = RETRYABLE
    dont_autoretry_for = (InvalidInputError,)
    retry_backoff = True  # 1s, 2s, 4s, ... (full jitter), capped below
    retry_backoff_max = int(app.conf.get("campaign_retry_backoff_max", 300))
    retry_jitter = True
    max_retries = int(app.conf.get("campaign_max_retries", 10))
    # Expected failures: logged as one line, without a traceback.
    throws = (InvalidInputError,)
    # Argument reprs (logs, Flower, inspect) hold ids only, never message bodies.
    Request = "campaign_worker.entrypoints.requests:RedactedRequest"

    # Keep failed messages for replay. False for the periodic poller: the next beat
    # replaces a failed poll, and a dead letter per beat would bury the real ones.
    dead_letter_failures = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task; a final failure (retries ran out, or an unexpected error) is
        dead-lettered before its message is acknowledged. If even that cannot be stored,
        the message is rejected back to the broker (``Reject(requeue=True)``) instead of
        acknowledged and lost: it runs again once the store is back.

        A copy of a message with an ETA runs only if it claims its task id
        (``claims.py``): a copy of a task done or running elsewhere does not run."""
        request = self.request
        decision = claims.RUN
        if request is not None and request.eta and not request.called_directly:
            decision = claims.decide(container(), self.name, request.id, True)
        if decision.action == "skip":
            return None
        if decision.action == "defer":
            self._defer(args, kwargs, decision.defer_seconds)
            return None
        final = True
        try:
            return super().__call__(*args, **kwargs)
        except (Retry, Reject, Ignore):
            final = False  # runs again under the same task id
            raise
        except InvalidInputError:
            raise  # already dead-lettered by ``run``
        except Exception as exc:
            if not self.dead_letter_failures:
                raise
            reason = "retries_exhausted" if isinstance(exc, RETRYABLE) else "error"
            task_id = current_task_id() or uuid.uuid4().hex
            try:
                dead_letter(self.name, args, kwargs, exc, reason=reason, task_id=task_id)
            except Exception as store_error:  # the store may be what is down
                log.error(
                    "dead_letter_not_stored",
                    task_name=self.name,
                    task_id=task_id,
                    reason=reason,
                    error=str(store_error),
                )
                time.sleep(STORE_RETRY_PAUSE_SECONDS)  # no hot loop while the store is down
                final = False
                raise Reject(reason=f"dead letter not stored: {store_error}", requeue=True) from exc
            raise
        finally:
            if decision.held is not None:
                claims.settle(container(), decision.held, final=final)

    def _defer(self, args: Any, kwargs: Any, seconds: float) -> None:
        """Publish this copy again (same task id) to be due in ``seconds``; then it is
        acknowledged. If it cannot be published it goes back to the broker."""
        try:
            self.apply_async(  # type: ignore[call-arg]  # retries: passed to send_task
                args,
                kwargs,
                task_id=self.request.id,
                countdown=seconds,
                retries=self.request.retries,
            )
        except Exception as exc:
            time.sleep(STORE_RETRY_PAUSE_SECONDS)
            raise Reject(reason=f"deferred copy not published: {exc}", requeue=True) from exc


def public_task(
    name: str,
    *,
    dead_letter_failures: bool = True,
    base: type[CampaignTask] = CampaignTask,
) -> Callable[[Callable[P, R]], CampaignTask]:
    """Register ``fn`` as the public task ``name`` with validated arguments.

    Missing, unexpected or mistyped arguments raise ``InvalidInputError`` naming each
    argument; any ``InvalidInputError`` is dead-lettered, then re-raised (no retry). A
    failure to store the dead letter is transient, so the message is retried instead.
    """

    def decorate(fn: Callable[P, R]) -> CampaignTask:
        validated = validate_call(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return jsonable(validated(*args, **kwargs))
            except ValidationError as exc:
                if exc.title != fn.__name__:
                    raise  # a model deeper down: a bug, not the caller's payload
                error = InvalidInputError(
                    f"invalid arguments for {name}: {describe_validation_error(exc)}"
                )
                dead_letter(name, args, kwargs, error)
                raise error from None
            except InvalidInputError as exc:
                dead_letter(name, args, kwargs, exc)
                raise

        return app.task(name=name, base=base, dead_letter_failures=dead_letter_failures)(run)

    return decorate


__all__ = [
    "RETRYABLE",
    "CampaignTask",
    "app",
    "beat_schedule",
    "close_container",
    "container",
    "current_task_id",
    "dead_letter",
    "dead_letter_rejection",
    "jsonable",
    "public_task",
    "set_container",
]
