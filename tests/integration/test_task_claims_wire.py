"""Task-id claims (``task_claims``): one copy of a delayed message runs; a copy of a task
done is skipped, one whose runner is alive is put off, one whose runner died runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from campaign_worker.adapters.mongo_task_claims import MongoTaskClaims

LEASE = timedelta(seconds=60)


def _now() -> datetime:
    """Real time, taken per test: the TTL index (expires_at) drops claims dated in the past."""
    return datetime.now(UTC).replace(microsecond=0)


def test_first_copy_claims_and_a_copy_of_a_running_task_waits_for_its_lease(any_db: Any) -> None:
    now = _now()
    claims = MongoTaskClaims(any_db)
    claims.initialize()
    assert claims.claim("t-1", "a", now, now + LEASE).state == "claimed"
    second = claims.claim("t-1", "b", now + timedelta(seconds=5), now + LEASE)
    assert second.state == "running"
    assert second.lease_until == now + LEASE
    assert claims.get("t-1")["runs"] == 1  # type: ignore[index]


def test_copy_of_a_done_task_is_skipped_even_after_the_lease(any_db: Any) -> None:
    now = _now()
    claims = MongoTaskClaims(any_db)
    claims.claim("t-2", "a", now, now + LEASE)
    assert claims.finish("t-2", "a", now + timedelta(seconds=1), now + timedelta(days=1))
    later = now + 2 * LEASE
    assert claims.claim("t-2", "b", later, later + LEASE).state == "done"
    doc = claims.get("t-2")
    assert doc is not None and doc["lease_until"] is None and doc["runs"] == 1


def test_a_copy_whose_runner_died_runs_and_only_the_new_owner_settles(any_db: Any) -> None:
    now = _now()
    claims = MongoTaskClaims(any_db)
    claims.claim("t-3", "dead", now, now + LEASE)
    later = now + LEASE + timedelta(seconds=1)
    assert claims.claim("t-3", "b", later, later + LEASE).state == "claimed"
    assert not claims.finish("t-3", "dead", later, later + LEASE)  # lost its claim
    assert claims.finish("t-3", "b", later, later + LEASE)
    assert claims.get("t-3")["runs"] == 2  # type: ignore[index]


def test_a_released_claim_lets_the_retry_run(any_db: Any) -> None:
    now = _now()
    claims = MongoTaskClaims(any_db)
    claims.claim("t-4", "a", now, now + LEASE)
    assert not claims.release("t-4", "other")
    assert claims.release("t-4", "a")
    assert claims.claim("t-4", "b", now, now + LEASE).state == "claimed"
