"""The small parts of a template's schema: durations, names, the shared model base, and a
template's own intents (``IntentSpec``)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from campaign_worker.domain.examples import MIN_EXAMPLES

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_duration(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().lower()
        if text and _DURATION_PART.sub("", text) == "":
            seconds = sum(
                float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(text)
            )
            return timedelta(seconds=seconds)
    return value  # let pydantic handle ints, floats and ISO 8601


parse_duration = _parse_duration  # "30m", "1d12h" -> timedelta; anything else unchanged
Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]
StageName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
IntentName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
# Events other services report (``record_event``): a metrics field name (no dots, no "$").
EventName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
ExitOutcome = Literal["completed", "failed", "opted_out"]
# webhook, smtp, outbox, default (DELIVERY_DEFAULT_CHANNEL), or a name for an external deliverer.
ChannelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# A/B split variant ids: a metrics field name (no dots, no "$").
VariantId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class TemplateModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntentSpec(TemplateModel):
    """A template's own intent, or additions to a built-in one."""

    keywords: list[Annotated[str, Field(pattern=r"\w")]] = Field(default_factory=list)
    phrases: list[Annotated[str, Field(pattern=r"\w")]] = Field(default_factory=list)
    exact: list[Annotated[str, Field(pattern=r"\w")]] = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list)
    # Example replies: the reply understanding takes a reply like one of them for this
    # intent (domain/examples.py); at least MIN_EXAMPLES when given. None when absent, so
    # a template without examples keeps its content hash (domain/versions.py).
    examples: list[Annotated[str, Field(pattern=r"\w", max_length=1000)]] | None = None
    replace_defaults: bool = False

    @field_validator("examples")
    @classmethod
    def _enough_examples(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) < MIN_EXAMPLES:
            raise ValueError(
                f"{len(value)} example(s) are too few to generalize from; "
                f"give at least {MIN_EXAMPLES}"
            )
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
        return value
