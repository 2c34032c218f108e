"""Typed settings from the environment (pydantic-settings), the one source of settings:
the worker's own and Celery's (``celeryconfig.py`` reads them from here). See README for
each one. A bad value fails with the environment variable's name and the expected form."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
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
    # A retrained reply intent model (``campaign-worker intents train --out DIR``); unset:
    # the model shipped in the package.
    intent_model_dir: Path | None = None
    init_batch_size: int = Field(default=2000, ge=1, le=100_000)
    init_batches_per_task: int = Field(default=50, ge=1)
    # How long one initialization step inserts before it checkpoints and hands over to a
    # new task (default: half the soft time limit, so the batch under way and the
    # checkpoint fit in the rest).
    init_step_seconds: float | None = Field(default=None, gt=0)
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
    # A metrics registration older than this belongs to a dead writer (kill -9 between its
    # conversation writes and its increment): the reconcile then corrects what it wrote.
    # Must exceed the task time limit plus the longest queue wait of a dispatched task.
    metrics_inflight_timeout_seconds: int = Field(default=900, ge=1)

    # Delivery (docs/architecture.md "Delivery"). Secrets are SecretStr: never printed.
    delivery_default_channel: str = Field(default="outbox", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    delivery_interval_seconds: float = Field(default=5.0, gt=0)
    delivery_batch_size: int = Field(default=1000, ge=1, le=1000)
    delivery_lease_seconds: int = Field(default=60, ge=5, le=3600)
    delivery_max_attempts: int = Field(default=8, ge=1, le=100)
    delivery_backoff_base_seconds: float = Field(default=2.0, gt=0)
    delivery_backoff_max_seconds: float = Field(default=600.0, gt=0)
    # "webhook=20/second;smtp=100/minute" (the limits library's notation), per channel,
    # shared by every worker through RATE_LIMIT_REDIS_URL (default: a Redis broker's URL).
    delivery_rate_limits: str = ""
    rate_limit_redis_url: str | None = None
    rate_limit_key_prefix: str = Field(
        default="campaign_worker", pattern=r"^[A-Za-z0-9_:.-]{1,64}$"
    )
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    webhook_read_timeout_seconds: float = Field(default=10.0, gt=0)
    # Requests in flight at once per dispatcher process (a pool of kept-alive connections).
    webhook_max_in_flight: int = Field(default=32, ge=1, le=512)
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_from: str = "campaigns@localhost"
    smtp_subject: str = "A message for you"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    smtp_address_attribute: str = "email"
    smtp_max_in_flight: int = Field(default=4, ge=1, le=64)

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
    def init_step_budget(self) -> float:
        """Seconds one initialization step runs before it checkpoints and hands over."""
        if self.init_step_seconds is not None:
            return self.init_step_seconds
        return self.celery_task_soft_time_limit / 2

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
        if self.init_step_seconds is not None and self.init_step_seconds >= soft:
            # The step would be stopped by its time limit before it saved its progress.
            raise ValueError(
                "need INIT_STEP_SECONDS < CELERY_TASK_SOFT_TIME_LIMIT, got "
                f"{self.init_step_seconds} / {soft}"
            )
        if self.metrics_inflight_timeout_seconds <= hard:
            # A live writer would be taken for dead, and its increment counted twice.
            raise ValueError(
                "need METRICS_INFLIGHT_TIMEOUT_SECONDS > CELERY_TASK_TIME_LIMIT, got "
                f"{self.metrics_inflight_timeout_seconds} / {hard}"
            )
        return self

    @field_validator("delivery_rate_limits")
    @classmethod
    def _rate_limits_parse(cls, value: str) -> str:
        parse_rate_limits(value)
        return value

    @property
    def rate_limits(self) -> dict[str, str]:
        return parse_rate_limits(self.delivery_rate_limits)

    def credentials(self) -> list[str | None]:
        """Every value that holds a credential: the URIs (their passwords) and the secrets,
        for the log pipeline to scrub (``adapters.logs.register_credentials``)."""
        return [
            self.mongodb_uri,
            self.celery_broker_url,
            self.celery_result_backend,
            self.rate_limit_redis_url,
            self.webhook_url,
            self.webhook_secret.get_secret_value() if self.webhook_secret else None,
            self.smtp_password.get_secret_value() if self.smtp_password else None,
        ]

    @property
    def limiter_redis_url(self) -> str | None:
        """Where the shared rate limits live: RATE_LIMIT_REDIS_URL, else a Redis broker."""
        if self.rate_limit_redis_url:
            return self.rate_limit_redis_url
        broker = self.celery_broker_url
        return broker if broker.startswith(("redis://", "rediss://")) else None

    @model_validator(mode="after")
    def _delivery_consistent(self) -> Settings:
        if self.webhook_url and self.webhook_secret is None:
            raise ValueError("WEBHOOK_URL needs WEBHOOK_SECRET (the signing key)")
        # A send must end before its lease does, or another dispatcher may send it too.
        if self.longest_send_seconds * 2 >= self.delivery_lease_seconds:
            raise ValueError(
                "DELIVERY_LEASE_SECONDS must exceed twice the longest send (webhook connect + "
                f"read timeouts, twice SMTP_TIMEOUT_SECONDS): {self.longest_send_seconds:g} s"
            )
        return self

    @property
    def longest_send_seconds(self) -> float:
        """The longest one send of a configured channel may take (its timeouts)."""
        sends = [0.0]
        if self.webhook_url:
            sends.append(self.webhook_connect_timeout_seconds + self.webhook_read_timeout_seconds)
        if self.smtp_host:
            sends.append(self.smtp_timeout_seconds * 2)  # connect, then each reply
        return max(sends)


def parse_rate_limits(text: str) -> dict[str, str]:
    """``"webhook=20/second;smtp=100/minute"`` -> {channel: limit}; ValueError if malformed."""
    from limits import parse  # the notation the limiter uses, checked at start-up

    found: dict[str, str] = {}
    for part in filter(None, (piece.strip() for piece in text.split(";"))):
        channel, _, limit = part.partition("=")
        channel, limit = channel.strip(), limit.strip()
        if not channel or not limit:
            raise ValueError("expected channel=limit pairs such as webhook=20/second;smtp=5/second")
        parse(limit)  # ValueError on a bad limit
        found[channel] = limit
    return found


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
