"""``campaign-worker replies review|resolve|export-labels``: the review queue.

A reply the worker was not sure enough about holds its conversation until a person says
what it is. ``review`` lists them oldest first with the author's own words (the extracted
text: an operator must read it to decide; logs never carry it); ``resolve`` applies an
intent exactly as if the reply had been classified so; ``export-labels`` writes the
resolutions as a labelled TSV for ``intents train``.
"""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from campaign_worker.entrypoints.cli.common import (
    JSON_HELP,
    command_group,
    console,
    manager,
    print_json,
    service_errors,
    when,
)

app = command_group("Replies held for review: list them, resolve them, export the labels.")

TEXT_SHOWN = 200  # characters of a reply's text in the table (--json has it whole)


@app.command()
def review(
    campaign: Annotated[str | None, typer.Option(help="only this campaign")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List replies held for review, the one held longest first."""
    with service_errors():
        rows = manager().list_reviews(campaign, limit)
    if as_json:
        for row in rows:
            print_json(row)
        return
    if not rows:
        console().print("no replies held for review")
        return
    table = Table("message", "held since", "campaign", "user", "stage", "suggested", "why", "text")
    for row in rows:
        text = " ".join(str(row["text"]).split())
        table.add_row(
            str(row["message_id"]),
            when(row["held_at"]),
            str(row["campaign_id"]),
            str(row["user_id"]),
            str(row["stage"] or "-"),
            f"{row['suggested']} ({row['confidence'] or 0:.2f})",
            str(row["reason"] or "-"),
            text if len(text) <= TEXT_SHOWN else text[: TEXT_SHOWN - 1] + "…",
        )
    console().print(table)


@app.command()
def resolve(
    message_id: Annotated[str, typer.Argument(help="the held reply's message id (from review)")],
    intent: Annotated[str, typer.Argument(help="what it is: opt_out, positive, other, ...")],
    by: Annotated[
        str | None, typer.Option("--by", help="who resolves it (default: this OS user)")
    ] = None,
) -> None:
    """Apply INTENT to a held reply as if it had been classified so (idempotent)."""
    with service_errors():
        result = manager().resolve_reply(message_id, intent, by or _operator())
    if result["already_resolved"]:
        sys.stderr.write(f"{message_id} was already resolved as {result['intent']}: no change\n")
    print_json(result)


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@app.command("export-labels")
def export_labels(
    since: Annotated[
        datetime | None, typer.Option(help="only resolutions from then on (ISO 8601, UTC)")
    ] = None,
) -> None:
    """Write resolved reviews as labelled TSV (intent, text, language, tags) to stdout."""
    start = since if since is None or since.tzinfo else since.replace(tzinfo=UTC)
    with service_errors():
        for line in manager().export_labels(start):
            sys.stdout.write(line + "\n")
