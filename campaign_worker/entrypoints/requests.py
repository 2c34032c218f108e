"""The worker-side task request (``CampaignTask.Request``), with redacted argument reprs.

Celery shows a task's arguments through ``argsrepr``/``kwargsrepr``: in its "received" and
failure log lines, in ``inspect active/reserved`` and in the task events Flower displays.
A sending client computes them from the full arguments (reply texts, recipients), so the
worker recomputes them here with every value but ids redacted, and scrubs the arguments
out of the exception text of its task-failed/retried events.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from celery.worker.request import Request

from campaign_worker.adapters.logs import redact_arguments, scrub, secrets_of
from campaign_worker.settings import get_settings

_SCRUBBED_EVENT_FIELDS = ("exception", "traceback")


def parameter_names(run: Callable[..., Any]) -> list[str]:
    """Names of ``run``'s positional parameters (public tasks keep the function's)."""
    try:
        parameters = inspect.signature(run).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def argument_reprs(run: Callable[..., Any], args: Any, kwargs: Any) -> tuple[str, str]:
    """``(argsrepr, kwargsrepr)`` with positional arguments named by ``run``'s signature,
    so ``record_inbound_message("c", "u", "m", "text")`` hides the text too."""
    names = parameter_names(run)
    positional = list(args) if isinstance(args, list | tuple) else []
    shown = [
        redact_arguments(value, names[index] if index < len(names) else "")
        for index, value in enumerate(positional)
    ]
    return repr(shown), repr(redact_arguments(kwargs if isinstance(kwargs, dict) else {}))


class RedactedRequest(Request):
    """Celery's Request whose argument reprs hold ids only (``LOG_REDACT_BODIES``)."""

    # Set by Celery's Request.__init__ (not in the stubs).
    _task: Any
    _args: Any
    _kwargs: Any
    _request_dict: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redact = get_settings().log_redact_bodies
        if self._redact:
            self._argsrepr, self._kwargsrepr = argument_reprs(
                self._task.run, self._args, self._kwargs
            )
            # The pool's tracer logs failures with the reprs of the request dict.
            self._request_dict["argsrepr"] = self._argsrepr
            self._request_dict["kwargsrepr"] = self._kwargsrepr

    def info(self, safe: bool = False) -> Any:
        """``inspect active/reserved``: the reprs, never the raw arguments."""
        return super().info(safe=self._redact or safe)

    def send_event(self, type: str, **fields: Any) -> None:
        texts = [name for name in _SCRUBBED_EVENT_FIELDS if isinstance(fields.get(name), str)]
        if self._redact and texts:  # failed/retried events only: the others carry no text
            secrets = secrets_of(self._args, self._kwargs)
            for name in texts:
                fields[name] = scrub(fields[name], secrets)
        super().send_event(type, **fields)


__all__ = ["RedactedRequest", "argument_reprs", "parameter_names"]
