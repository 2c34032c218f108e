"""The operator command ``campaign-worker`` (Typer + Rich).

Each command group lives in its own module with a ``typer.Typer`` (``app``) that is added
here; single commands are plain functions registered with ``app.command``. Commands are
thin: parse, call the service, map its errors to exit codes (see ``common``):
0 ok, 1 not found or failed, 2 usage or invalid input; ``health`` keeps its 1/2/4 bitmask.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from campaign_worker.domain.errors import CampaignWorkerError
from campaign_worker.entrypoints.cli import (
    campaigns,
    check,
    conversations,
    dead_letters,
    intents,
    metrics,
    ops,
    replies,
    simulate,
    suppressions,
    templates,
)
from campaign_worker.entrypoints.cli.common import error, exit_code_for, help_if_bare

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

app = typer.Typer(
    name="campaign-worker",
    help="Operate the campaign worker: create, inspect, steer and simulate campaigns.",
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(campaigns.app, name="campaigns")
app.add_typer(conversations.app, name="conversations")
app.command()(metrics.metrics)
app.command()(check.check)
app.command()(simulate.simulate)
app.add_typer(templates.app, name="templates")
app.add_typer(dead_letters.app, name="dead-letters")
app.add_typer(suppressions.app, name="suppressions")
app.add_typer(intents.app, name="intents")
app.add_typer(replies.app, name="replies")
app.command()(ops.health)
app.command()(ops.demo)


def package_version() -> str:
    """The installed distribution's version."""
    try:
        return version("campaign-worker")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"campaign-worker {package_version()}\n")
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version and exit", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Operate the campaign worker: create, inspect, steer and simulate campaigns."""
    help_if_bare(ctx)


def configure_cli_logging() -> None:
    """Logs to stderr (stdout is the commands' output), WARNING unless ``LOG_LEVEL``."""
    from campaign_worker.adapters.logs import configure_logging, register_credentials
    from campaign_worker.settings import get_settings

    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    if level not in LOG_LEVELS:
        level = "WARNING"
    configure_logging(level, os.environ.get("LOG_FORMAT", "auto"), stream=sys.stderr)
    # Invalid settings are reported by the command that needs them, not here.
    with contextlib.suppress(CampaignWorkerError):
        register_credentials(*get_settings().credentials())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it).

    Without ``argv`` this is the process entry point, and configures logging too.
    """
    if argv is None:
        configure_cli_logging()
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        command.main(args=args, prog_name="campaign-worker", standalone_mode=True)
    except SystemExit as exc:  # standalone mode: usage errors (2), typer.Exit codes
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except CampaignWorkerError as exc:
        error(str(exc))
        return exit_code_for(exc)
    return 0


__all__ = ["app", "main"]
