"""One run per delayed task message: the task-id claim taken before a copy runs.

Why: Redis hands an unacknowledged message out again every visibility timeout, and a
worker holds a message with an ETA (``eta``/``countdown``, a retry's backoff) unacked until
it is due; sent further ahead than ``CELERY_VISIBILITY_TIMEOUT``, it arrives as several
copies, all due at once. Each copy of a message that carries an ETA claims its task id
(``adapters/mongo_task_claims.py``) before running:

- ``run``: the claim is ours; ``settle`` marks it done after a final outcome (result,
  dead letter) or releases it when the run ended in a retry (same task id, due later);
- ``skip``: the task is done: the copy is acknowledged without running;
- ``defer``: another runner holds the claim: the copy is published again (same task id)
  to be due when that lease ends (at most ``DEFER_MAX_SECONDS`` on), then acknowledged.
  Not acknowledged as a duplicate on the spot: a Redis copy shares its delivery tag with
  the running one, so its ack would also drop the running copy's unacked entry, and a
  crash of that runner would lose the task. The deferred copy then finds the task done,
  or the lease expired (its runner died) and runs it.

Messages without an ETA are not claimed (a redelivery after a crash must run, and every
task is idempotent anyway): the claim costs two round trips only where copies are certain.
If the claim store is unreachable the copy runs (at least once, as without claims).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import structlog

if TYPE_CHECKING:
    from campaign_worker.bootstrap import Container

log = structlog.get_logger(__name__)

#: Added to the hard time limit for a claim's lease: a runner that is alive finishes (or
#: is killed by its time limit) within it.
LEASE_MARGIN_SECONDS = 30
#: Done marks are kept at least this long, and two visibility timeouts if that is longer:
#: copies restored by Redis come within one visibility timeout of the run.
KEEP_DONE = timedelta(days=1)
#: A copy put off while another runs looks again after at most this long.
DEFER_MAX_SECONDS = 10.0

Action = Literal["run", "skip", "defer"]


@dataclass(frozen=True)
class Held:
    task_id: str
    owner: str


@dataclass(frozen=True)
class ClaimDecision:
    """What to do with one copy: run it (settle ``held`` afterwards), skip it, or defer
    it by ``defer_seconds``."""

    action: Action
    held: Held | None = None
    defer_seconds: float = 0.0


RUN = ClaimDecision("run")


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def decide(c: Container, task_name: str, task_id: str | None, delayed: bool) -> ClaimDecision:
    """Claim ``task_id`` for this copy if it carries an ETA; else just run it."""
    if not delayed or not task_id:
        return RUN
    now = datetime.now(UTC)
    lease = timedelta(seconds=c.settings.celery_task_time_limit + LEASE_MARGIN_SECONDS)
    owner = owner_name()
    try:
        claim = c.task_claims.claim(task_id, owner, now, now + lease)
    except Exception as exc:  # the store may be down: at least once, as without claims
        log.warning("task_claim_unavailable", task_name=task_name, task_id=task_id, error=str(exc))
        return RUN
    if claim.state == "claimed":
        return ClaimDecision("run", Held(task_id, owner))
    if claim.state == "done":
        log.info("task_copy_skipped", task_name=task_name, task_id=task_id, reason="done")
        return ClaimDecision("skip")
    until = claim.lease_until or now + lease
    # Look again when the lease ends, or sooner: the run usually ends long before it.
    seconds = min(max(1.0, (until - now).total_seconds() + 1.0), DEFER_MAX_SECONDS)
    log.info("task_copy_deferred", task_name=task_name, task_id=task_id, seconds=round(seconds))
    return ClaimDecision("defer", defer_seconds=seconds)


def settle(c: Container, held: Held | None, *, final: bool) -> None:
    """After the run: done (``final``) or released (a retry follows under the same id).
    A failure here only lets a later copy run again (idempotent), so it is logged."""
    if held is None:
        return
    now = datetime.now(UTC)
    keep = max(KEEP_DONE, timedelta(seconds=2 * c.settings.celery_visibility_timeout))
    try:
        if final:
            c.task_claims.finish(held.task_id, held.owner, now, now + keep)
        else:
            c.task_claims.release(held.task_id, held.owner)
    except Exception as exc:
        log.warning("task_claim_not_settled", task_id=held.task_id, error=str(exc))


__all__ = ["RUN", "ClaimDecision", "Held", "decide", "owner_name", "settle"]
