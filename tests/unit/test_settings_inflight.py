"""METRICS_INFLIGHT_TIMEOUT_SECONDS: when a metrics registration counts as a dead writer's."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from campaign_worker.bootstrap import build_manager
from campaign_worker.settings import Settings


def test_default_is_fifteen_minutes_and_reaches_the_manager(mock_db: Any) -> None:
    settings = Settings(mongodb_db="x")
    assert settings.metrics_inflight_timeout_seconds == 900
    short = settings.model_copy(update={"metrics_inflight_timeout_seconds": 45})
    assert build_manager(mock_db, short).inflight_timeout.total_seconds() == 45


def test_must_exceed_the_task_time_limit() -> None:
    # A live writer would be taken for dead and its increment counted twice.
    with pytest.raises(ValidationError, match="METRICS_INFLIGHT_TIMEOUT_SECONDS"):
        Settings(mongodb_db="x", celery_task_time_limit=300, metrics_inflight_timeout_seconds=300)
    ok = Settings(
        mongodb_db="x",
        celery_task_soft_time_limit=10,
        celery_task_time_limit=15,
        celery_visibility_timeout=20,
        metrics_inflight_timeout_seconds=16,
    )
    assert ok.metrics_inflight_timeout_seconds == 16


def test_init_step_seconds_defaults_to_half_the_soft_limit_and_stays_below_it() -> None:
    def settings(step: float | None = None) -> Settings:
        return Settings(
            mongodb_db="x",
            celery_task_soft_time_limit=10,
            celery_task_time_limit=15,
            celery_visibility_timeout=20,
            metrics_inflight_timeout_seconds=16,
            init_step_seconds=step,
        )

    assert settings().init_step_budget == 5
    assert settings(0.25).init_step_budget == 0.25
    # A step as long as its soft limit would be stopped before it saved its progress.
    with pytest.raises(ValidationError, match="INIT_STEP_SECONDS"):
        settings(10)
    with pytest.raises(ValidationError):
        settings(0)
