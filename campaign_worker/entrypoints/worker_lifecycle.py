"""A worker's start and its processes' lives, through Celery's signals (``install()``,
called as the app is built).

Process model: the worker's parent process checks that it can serve and ensures the
MongoDB indexes once at start (``worker_init``), then closes its client before forking;
each prefork child builds one Container (MongoClient, repositories, CampaignManager) in
``worker_process_init`` and closes it in ``worker_process_shutdown``. The reply
understanding (the process's one engine, ``bootstrap.shared_understanding``) is loaded in
the parent before the fork, so the pool processes share its pages and start without
loading it; each warms it again after the fork (at once, or the load itself if the parent
could not). SIGTERM is Celery's
warm shutdown: consuming stops, running tasks finish, unfinished (late-acked) messages go
back to the broker.

A worker that cannot serve (a template or setting that does not validate, an index that
conflicts with an existing one) stops at start with exit code 78 instead of consuming.
"""

from __future__ import annotations

import os
import time
from typing import Any, NoReturn

import structlog
from celery import signals
from pymongo.errors import PyMongoError

from campaign_worker.adapters.broker import install_payload_guard, install_redis_close_guard
from campaign_worker.bootstrap import Container, bootstrap, ensure_indexes
from campaign_worker.delivery_wiring import ensure_delivery_indexes
from campaign_worker.domain.errors import ConfigurationError, TransientError
from campaign_worker.entrypoints import container as process
from campaign_worker.entrypoints import observability as hooks
from campaign_worker.entrypoints.preflight import EXIT_CONFIG, check_configuration
from campaign_worker.settings import get_settings

log = structlog.get_logger(__name__)

_installed = False
_indexes_ready = False


def build_container(*, create_indexes: bool = False) -> Container:
    """A worker process's Container: the manager records metrics, the client times
    MongoDB commands."""
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


def _guard_the_broker(**_: Any) -> None:
    """Before the consumer connects: kombu's Redis transport guarded (adapters/broker.py)."""
    install_redis_close_guard()  # a Redis restart must not end the worker
    install_payload_guard()  # nor a raw message whose headers are not a mapping


def _start(**_: Any) -> None:
    """Worker parent, before forking and consuming: check settings and templates, create
    the indexes once, then drop the client. A worker that could not serve stops here
    (``SystemExit``, which Celery's signal dispatch lets through) instead of consuming."""
    global _indexes_ready
    try:
        check_configuration()
        built = build_container(create_indexes=True)
        # A changed template file becomes a new stored version as the worker starts
        # (running campaigns stay on the version they pinned).
        registered = built.manager.register_templates()
        log.info("templates_registered", versions=registered)
        # Loaded once, before the fork: every pool process shares the model's pages.
        _warm_up(built)
    except ConfigurationError as exc:
        _refuse_to_start(exc)
    except TransientError as exc:
        log.error("indexes_not_ensured", error=str(exc), retry_in="worker processes")
        return
    except PyMongoError as exc:  # e.g. an index that conflicts with an existing one
        _refuse_to_start(ConfigurationError(f"cannot create the MongoDB indexes: {exc}"))
    built.close()
    _indexes_ready = True
    log.info("indexes_ensured", db=built.settings.mongodb_db)


def _warm_up(built: Container) -> None:
    """Load the reply understanding (model, language detector) before the first reply."""
    begun = time.perf_counter()
    built.manager.understanding.warm_up()
    log.info("reply_understanding_loaded", seconds=round(time.perf_counter() - begun, 3))


def _refuse_to_start(exc: ConfigurationError) -> NoReturn:
    log.critical("worker_not_started", error=str(exc))
    raise SystemExit(EXIT_CONFIG)


def _init_process(**_: Any) -> None:
    """Prefork child: one Container per process, built after the fork, its reply
    understanding loaded (model and language detector) before the first reply."""
    process.set_container(None)  # the parent's, if any: not ours to close
    built = build_container()
    process.set_container(built)
    _warm_up(built)  # loaded in the parent before the fork: at once (else here)
    if not _indexes_ready:
        try:
            ensure_indexes(built.manager)
            ensure_delivery_indexes(built.db)
            built.dead_letters.initialize()
            built.task_claims.initialize()
        except (TransientError, PyMongoError) as exc:
            log.error("indexes_not_ensured", error=str(exc))
    log.info("worker_process_ready", pid=os.getpid())


def _shutdown_process(**_: Any) -> None:
    process.close_container()
    log.info("worker_process_stopped", pid=os.getpid())


def _shutdown_worker(**_: Any) -> None:
    process.close_container()
    log.info("worker_stopped", pid=os.getpid())


def install() -> None:
    """Connect the handlers, and build this process's Container the worker's way."""
    global _installed
    if _installed:
        return
    _installed = True
    process.use_builder(build_container)
    signals.celeryd_init.connect(_guard_the_broker, weak=False)
    signals.worker_init.connect(_start, weak=False)
    signals.worker_process_init.connect(_init_process, weak=False)
    signals.worker_process_shutdown.connect(_shutdown_process, weak=False)
    signals.worker_shutdown.connect(_shutdown_worker, weak=False)


__all__ = ["build_container", "install"]
