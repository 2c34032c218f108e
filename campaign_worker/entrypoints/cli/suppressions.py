"""``campaign-worker suppressions list|add|lift``: the suppression list."""

from __future__ import annotations

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

app = command_group("The suppression list: nobody on it is messaged by any campaign.")

UserOption = Annotated[str | None, typer.Option("--user", help="a user id")]
ChannelOption = Annotated[str | None, typer.Option(help="a channel (with --address)")]
AddressOption = Annotated[str | None, typer.Option(help="a channel address, e.g. an email")]


@app.command("list")
def list_entries(
    user: UserOption = None,
    channel: Annotated[str | None, typer.Option(help="only this channel")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List suppressions, oldest first."""
    with service_errors():
        entries = manager().list_suppressions(user_id=user, channel=channel, limit=limit)
    if as_json:
        for entry in entries:
            print_json(entry)
        return
    if not entries:
        console().print("no suppressions")
        return
    table = Table("id", "source", "reason", "campaign", "since")
    for entry in entries:
        table.add_row(
            str(entry["_id"]),
            str(entry.get("source") or "-"),
            str(entry.get("reason") or "-")[:60],
            str(entry.get("campaign_id") or "-"),
            when(entry.get("created_at")),
        )
    console().print(table)


@app.command()
def add(
    user: UserOption = None,
    channel: ChannelOption = None,
    address: AddressOption = None,
    reason: Annotated[str, typer.Option(help="why")] = "added by an operator",
) -> None:
    """Suppress a user (--user) or a channel address (--channel and --address)."""
    with service_errors():
        entry = manager().add_suppression(
            user_id=user, channel=channel, address=address, reason=reason
        )
    print_json(entry)


@app.command()
def lift(
    key: Annotated[str | None, typer.Argument(help="the entry id (from list)")] = None,
    user: UserOption = None,
    channel: ChannelOption = None,
    address: AddressOption = None,
) -> None:
    """Lift one suppression: by its id, by --user, or by --channel and --address."""
    with service_errors():
        entry = manager().lift_suppression(key=key, user_id=user, channel=channel, address=address)
    print_json(entry)
