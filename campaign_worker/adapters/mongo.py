"""PyMongo basics shared by the repositories: the client per process, collection names
and the mapping of connectivity errors to ``TransientError``.

The repositories live next to this module (``mongo_conversations``, ``mongo_campaigns``,
``mongo_metrics``, ``mongo_outbox``, ``mongo_dead_letters``). Every write is one atomic
operation with the condition that makes a replay harmless (a version compare-and-set, a
unique index, a status filter); batch work goes through ``insert_many(ordered=False)`` /
``bulk_write`` so round trips are per batch.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC
from typing import Any, ParamSpec, TypeVar, cast

from pymongo import MongoClient, WriteConcern
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.errors import TransientError
from campaign_worker.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

DUPLICATE_KEY = 11000
# Server errors that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}

CONVERSATIONS = "conversation_states"
CAMPAIGNS = "campaigns"
METRICS = "campaign_metrics"
OUTBOX = "outbox"
DEAD_LETTERS = "dead_letters"
TASK_CLAIMS = "task_claims"


# Acknowledged only once the write is in the on-disk journal (standalone) or on a majority
# of the replica set (which implies the journal): it survives a crash or a failover. The
# server's default (w:1 without the journal, on a standalone or where the default write
# concern was lowered) can acknowledge a write that a crash then forgets; a write that
# later writes build on (the outbox rows a publication mark is cleared for) must not be.
DURABLE = WriteConcern(w="majority", j=True)


def durable(collection: Collection[Doc]) -> Collection[Doc]:
    """``collection`` whose writes are acknowledged only once durable (``DURABLE``)."""
    return collection.with_options(write_concern=DURABLE)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (ConnectionFailure, ExecutionTimeout, WTimeoutError) as exc:
        raise TransientError(f"MongoDB unavailable: {exc}") from exc
    except OperationFailure as exc:
        if exc.code in _TRANSIENT_CODES or exc.has_error_label("RetryableWriteError"):
            raise TransientError(f"MongoDB transient failure: {exc}") from exc
        raise


def translate_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Map PyMongo's connectivity errors to TransientError (the retryable kind): the one
    place they are translated, so nothing above the adapters knows PyMongo's errors. A
    generator's errors are translated as it is iterated (a cursor reads as it goes)."""
    if inspect.isgeneratorfunction(func):
        generator: Callable[..., Iterator[object]] = func

        @functools.wraps(func)
        def iterate(*args: Any, **kwargs: Any) -> Iterator[object]:
            with _translated():
                yield from generator(*args, **kwargs)

        return cast(Callable[P, R], iterate)

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _translated():
            return func(*args, **kwargs)

    return wrapper


class MongoClientProvider:
    """One MongoClient per process, created on first use.

    PyMongo clients are not fork-safe: a process that forked (Celery prefork) gets a fresh
    client the first time it asks, because the owning pid is checked on every access.
    """

    def __init__(
        self,
        settings: Settings,
        factory: Callable[[], MongoClient[Doc]] | None = None,
        event_listeners: Sequence[Any] = (),
    ) -> None:
        self._settings = settings
        self._factory = factory
        self._listeners = list(event_listeners)
        self._lock = threading.Lock()
        self._client: MongoClient[Doc] | None = None
        self._pid: int | None = None

    def _build(self) -> MongoClient[Doc]:
        if self._factory is not None:
            return self._factory()
        s = self._settings
        return MongoClient(
            s.mongodb_uri,
            tz_aware=True,
            tzinfo=UTC,
            maxPoolSize=s.mongodb_max_pool_size,
            serverSelectionTimeoutMS=s.mongodb_server_selection_timeout_ms,
            connectTimeoutMS=s.mongodb_connect_timeout_ms,
            socketTimeoutMS=s.mongodb_socket_timeout_ms,
            retryWrites=True,
            appname="campaign-worker",
            event_listeners=self._listeners,
        )

    @property
    def client(self) -> MongoClient[Doc]:
        pid = os.getpid()
        with self._lock:
            if self._client is None or self._pid != pid:
                # The inherited client (if any) belongs to the parent: drop it unclosed.
                self._client = self._build()
                self._pid = pid
            return self._client

    @property
    def database(self) -> Database[Doc]:
        return self.client[self._settings.mongodb_db]

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None
            self._pid = None


def ignore_duplicates(exc: BulkWriteError) -> int:
    """Return how many documents an unordered insert_many did insert; re-raise anything
    that is not a duplicate key error."""
    details = exc.details
    other = [e for e in details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
    if other or details.get("writeConcernErrors"):
        raise exc
    return int(details.get("nInserted", 0))


__all__ = [
    "CAMPAIGNS",
    "CONVERSATIONS",
    "DEAD_LETTERS",
    "DURABLE",
    "METRICS",
    "OUTBOX",
    "TASK_CLAIMS",
    "MongoClientProvider",
    "PyMongoError",
    "durable",
    "ignore_duplicates",
    "translate_errors",
]
