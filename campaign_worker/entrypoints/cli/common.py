"""Shared pieces of the operator CLI: exit codes, error mapping and output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from pydantic_core import to_jsonable_python
from rich.console import Console

if TYPE_CHECKING:
    from campaign_worker.service.campaign_manager import CampaignManager

from campaign_worker.domain.errors import CampaignWorkerError, InvalidInputError, NotFoundError
from campaign_worker.entrypoints.container import container

EXIT_OK = 0
EXIT_FAILURE = 1  # not found, or the action failed
EXIT_USAGE = 2  # bad arguments or invalid input

JSON_HELP = "print JSON for scripts instead of a table"


def help_if_bare(ctx: typer.Context) -> None:
    """A group called without a command prints its help and exits 0."""
    if ctx.invoked_subcommand is None:
        sys.stdout.write(ctx.get_help() + "\n")
        raise typer.Exit(EXIT_OK)


def command_group(help_text: str) -> typer.Typer:
    """A command group (``campaign-worker GROUP COMMAND``); bare, it prints its help."""
    group = typer.Typer(help=help_text, invoke_without_command=True)
    group.callback()(help_if_bare)
    return group


def console() -> Console:
    """A console on the current stdout (tests swap it)."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    """Write ``error: message`` to stderr."""
    sys.stderr.write(f"error: {message}\n")


def note(message: str) -> None:
    """Progress for the operator, on stderr (stdout stays the command's output)."""
    sys.stderr.write(message + "\n")


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    """Report ``message`` on stderr; returns the exit to raise."""
    error(message)
    return typer.Exit(code)


def exit_code_for(exc: CampaignWorkerError) -> int:
    """1 for something not found or a failed action, 2 for input that can never work."""
    if isinstance(exc, NotFoundError):
        return EXIT_FAILURE
    if isinstance(exc, InvalidInputError):
        return EXIT_USAGE
    return EXIT_FAILURE


@contextmanager
def service_errors() -> Iterator[None]:
    """Turn the service's errors into a message on stderr and their exit code."""
    try:
        yield
    except CampaignWorkerError as exc:
        raise fail(str(exc), exit_code_for(exc)) from None


def manager() -> CampaignManager:
    """The service facade, on the database the settings (environment) name: built from
    ``bootstrap`` (``entrypoints/container.py``), never through Celery."""
    with service_errors():
        return container().manager


def when(value: Any) -> str:
    """A datetime for a table cell (``-`` when unset)."""
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def print_json(value: Any) -> None:
    """One JSON document on stdout (datetimes as ISO strings)."""
    sys.stdout.write(json.dumps(to_jsonable_python(value), sort_keys=True) + "\n")
