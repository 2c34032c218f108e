"""Storing what a worker could not process as a dead letter (collection ``dead_letters``):
a task that failed for good (``task_policy.py``, ``batch_task.py``) and a message refused
before it became a task (``consumer.py``). Raises when the store cannot take it: the caller
then leaves the message to the broker (no ack unless stored)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import structlog

from campaign_worker.adapters.logs import scrub, secrets_of
from campaign_worker.entrypoints import observability as hooks
from campaign_worker.entrypoints.container import container
from campaign_worker.entrypoints.envelope import Rejection

log = structlog.get_logger(__name__)


def dead_letter(
    task_name: str,
    args: Any,
    kwargs: Any,
    error: BaseException,
    *,
    reason: str,
    task_id: str,
    registered: Collection[str],
) -> None:
    """Keep a failed task's message (payload, error, time) for an operator to list and
    replay. ``registered``: the task names the app knows (metric labels stay bounded)."""
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
    _dead_lettered(task_name, task_id, reason, type(error).__name__, text, stored, registered)


def dead_letter_rejection(rejection: Rejection, registered: Collection[str]) -> None:
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
        task_name,
        rejection.dead_letter_id,
        rejection.reason,
        None,
        rejection.error,
        stored,
        registered,
    )


def _dead_lettered(
    task_name: str,
    task_id: str,
    reason: str,
    error_type: str | None,
    error: str,
    stored: bool,
    registered: Collection[str],
) -> None:
    # Unregistered names (a misspelt task) share one label: label values stay bounded.
    hooks.dead_lettered(task_name if task_name in registered else "unregistered", reason)
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


__all__ = ["dead_letter", "dead_letter_rejection"]
