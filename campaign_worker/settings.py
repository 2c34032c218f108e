"""Typed settings from the environment (pydantic-settings). See README for each one."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    mongodb_uri: str = Field(default="mongodb://localhost:27017", min_length=1)
    mongodb_db: str = Field(default="campaign_worker", pattern=r"^[A-Za-z0-9_-]{1,63}$")
    mongodb_max_pool_size: int = Field(default=20, ge=1, le=1000)
    mongodb_server_selection_timeout_ms: int = Field(default=5000, ge=100)
    mongodb_connect_timeout_ms: int = Field(default=5000, ge=100)
    mongodb_socket_timeout_ms: int = Field(default=30000, ge=100)

    campaign_templates_dir: Path | None = None
    init_batch_size: int = Field(default=1000, ge=1, le=100_000)
    init_batches_per_task: int = Field(default=50, ge=1)
    process_batch_size: int = Field(default=200, ge=1, le=10_000)
    lease_seconds: int = Field(default=120, ge=5, le=86_400)

    celery_broker_url: str = "redis://localhost:6379/0"
    celery_result_backend: str | None = None
    poll_interval_seconds: float = Field(default=10.0, gt=0)
    reconcile_interval_seconds: float = Field(default=300.0, gt=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console", "auto"] = "auto"
    log_redact_bodies: bool = True
    metrics_port: int = Field(default=9808, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"

    # Demo/test only: run the clock CLOCK_SPEED times faster than real time, counted from
    # CLOCK_EPOCH (which every process of one run must share).
    clock_speed: float = Field(default=1.0, gt=0)
    clock_epoch: datetime | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
