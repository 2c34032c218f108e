"""Typed settings from the environment (pydantic-settings), the one source of settings:
the worker's own and Celery's (``celeryconfig.py`` reads them from here). See README for
each one. A bad value fails with the environment variable's name and the expected form."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from campaign_worker.domain.errors import ConfigurationError
from campaign_worker.domain.suppressions import FrequencyCap, parse_caps


class Settings(BaseSettings):
    # An empty variable counts as unset (compose files often pass VAR= through).
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", env_ignore_empty=True
    )

    mongodb_uri: str = Field(default="mongodb://localhost:27017", min_length=1)
    mongodb_db: str = Field(default="campaign_worker", pattern=r"^[A-Za-z0-9_-]{1,63}$")
    mongodb_max_pool_size: int = Field(default=20, ge=1, le=1000)
    mongodb_server_selection_timeout_ms: int = Field(default=5000, ge=100)
    mongodb_connect_timeout_ms: int = Field(default=5000, ge=100)
    mongodb_socket_timeout_ms: int = Field(default=30000, ge=100)

    campaign_templates_dir: Path | None = None
    init_batch_size: int = Field(default=2000, ge=1, le=100_000)
    init_batches_per_task: int = Field(default=50, ge=1)
    process_batch_size: int = Field(default=1000, ge=1, le=10_000)
    process_fanout: int = Field(default=8, ge=1, le=1024)
    lease_seconds: int = Field(default=120, ge=5, le=86_400)
    # Replies are recorded in batches: up to this many at once, at most this long after
    # the first one arrived (the added latency at low load).
    inbound_batch_size: int = Field(default=500, ge=1, le=10_000)
    inbound_batch_interval: float = Field(default=0.5, gt=0, le=60)

    celery_broker_url: str = Field(default="redis://localhost:6379/0", min_length=1)
    celery_result_backend: str | None = None
    celery_result_expires: int = Field(default=86_400, ge=1)
    celery_visibility_timeout: int = Field(default=3600, ge=1)
    celery_task_soft_time_limit: int = Field(default=240, ge=1)
    celery_task_time_limit: int = Field(default=300, ge=1)
    celery_prefetch_multiplier: int = Field(default=1, ge=1)
    celery_retry_backoff_max: int = Field(default=300, ge=1)
    celery_max_retries: int = Field(default=10, ge=0)
    celery_default_queue: str = Field(default="celery", pattern=r"^[A-Za-z0-9_.-]{1,200}$")
    celery_send_task_events: bool = False
    celery_max_tasks_per_child: int = Field(default=10_000, ge=1)
    poll_interval_seconds: float = Field(default=10.0, gt=0)
    reconcile_interval_seconds: float = Field(default=300.0, gt=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console", "auto"] = "auto"
    log_redact_bodies: bool = True
    metrics_port: int = Field(default=9808, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"

    # Cross-campaign frequency caps, CHANNEL=N/WINDOW, "*" for every channel without its
    # own (e.g. "*=3/1d,sms=1/12h"); empty: no cap.
    frequency_caps: str = ""
    # Where recipients' channel addresses are (CHANNEL=ATTRIBUTE), for the suppression list.
    suppression_address_attributes: str = "email=email,sms=phone"

    # Demo/test only: run the clock CLOCK_SPEED times faster than real time, counted from
    # CLOCK_EPOCH (which every process of one run must share).
    clock_speed: float = Field(default=1.0, gt=0)
    clock_epoch: datetime | None = None

    @field_validator("frequency_caps")
    @classmethod
    def _caps(cls, value: str) -> str:
        parse_caps(value)  # raises naming the bad entry
        return value

    @property
    def caps(self) -> dict[str, FrequencyCap]:
        return parse_caps(self.frequency_caps)

    @property
    def address_attributes(self) -> dict[str, str]:
        pairs = (item.partition("=") for item in self.suppression_address_attributes.split(","))
        return {k.strip(): v.strip() for k, _, v in pairs if k.strip() and v.strip()}

    @model_validator(mode="after")
    def _limits_below_visibility(self) -> Settings:
        # A task still running when the visibility timeout passes is delivered again.
        soft, hard = self.celery_task_soft_time_limit, self.celery_task_time_limit
        if not soft < hard < self.celery_visibility_timeout:
            raise ValueError(
                "need CELERY_TASK_SOFT_TIME_LIMIT < CELERY_TASK_TIME_LIMIT < "
                f"CELERY_VISIBILITY_TIMEOUT, got {soft} / {hard} / "
                f"{self.celery_visibility_timeout}"
            )
        return self


def describe_settings_error(exc: ValidationError) -> str:
    """Name each failing environment variable and what it expects, never its value
    (``POLL_INTERVAL_SECONDS: Input should be a valid number``)."""
    problems = [
        f"{'.'.join(str(part) for part in error['loc']).upper() or 'SETTINGS'}: {error['msg']}"
        for error in exc.errors()
    ]
    return "invalid settings: " + "; ".join(problems)


def load_settings() -> Settings:
    """Settings from the environment; ``ConfigurationError`` naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(describe_settings_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
