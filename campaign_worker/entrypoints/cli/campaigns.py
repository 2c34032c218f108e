"""``campaign-worker campaigns create|enroll|list|show|pause|resume|cancel|migrate`` through
CampaignManager."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from campaign_worker.entrypoints.cli.campaign_create import create
from campaign_worker.entrypoints.cli.campaign_enroll import enroll
from campaign_worker.entrypoints.cli.common import (
    EXIT_USAGE,
    JSON_HELP,
    command_group,
    console,
    fail,
    manager,
    print_json,
    service_errors,
    when,
)

app = command_group("Create, list, inspect and steer campaigns.")
app.command()(create)
app.command()(enroll)

CampaignId = Annotated[str, typer.Argument(help="the campaign id")]
AsJson = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
LISTED = ("_id", "name", "campaign_type", "template_id", "status", "total_recipients")


@app.command("list")
def list_campaigns(
    status: Annotated[str | None, typer.Option(help="only campaigns in this status")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 50,
    as_json: AsJson = False,
) -> None:
    """Campaigns, newest first."""
    with service_errors():
        found = manager().list_campaigns(status=status, limit=limit)
    if as_json:
        for doc in found:
            print_json(doc)
        return
    if not found:
        console().print("no campaigns")
        return
    table = Table(title="campaigns")
    for column in (*LISTED, "created_at"):
        table.add_column(column.lstrip("_"))
    for doc in found:
        table.add_row(*(str(doc.get(key, "")) for key in LISTED), when(doc.get("created_at")))
    console().print(table)


@app.command()
def show(campaign_id: CampaignId, as_json: AsJson = False) -> None:
    """One campaign's fields (without inline recipients); exit 1 if unknown."""
    with service_errors():
        doc = manager().get_campaign(campaign_id)
    _print_campaign(doc, as_json)


def _print_campaign(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(doc)
        return
    table = Table(title=f"campaign {doc['_id']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in doc.items():
        if value not in (None, [], {}):
            table.add_row(key, str(value))
    console().print(table)


def _steer(campaign_id: str, verb: str, as_json: bool) -> None:
    """Call the manager's ``<verb>_campaign``; print the new status."""
    with service_errors():
        doc = getattr(manager(), f"{verb}_campaign")(campaign_id)
    if as_json:
        print_json(doc)
        return
    console().print(f"campaign {campaign_id}: {doc['status']}")


@app.command()
def pause(campaign_id: CampaignId, as_json: AsJson = False) -> None:
    """Pause: nothing more is sent until it is resumed."""
    _steer(campaign_id, "pause", as_json)


@app.command()
def resume(campaign_id: CampaignId, as_json: AsJson = False) -> None:
    """Resume a paused campaign."""
    _steer(campaign_id, "resume", as_json)


@app.command()
def cancel(campaign_id: CampaignId, as_json: AsJson = False) -> None:
    """Cancel: nothing more is sent; the poller settles its active conversations."""
    _steer(campaign_id, "cancel", as_json)


def _print_migration(campaign_id: str, result: dict[str, Any]) -> None:
    """A migration's result as a table: conversations moved, ended, left unresolved."""
    out = console()
    verb = "would move" if result["dry_run"] else "moved"
    out.print(
        f"campaign {campaign_id}: template version {result['from_version']} → "
        f"{result['to_version']} ({'dry run' if result['dry_run'] else 'applied'})"
    )
    table = Table(title="conversations")
    for column in ("from", "to", "count"):
        table.add_column(column)
    for key, count in [*result["moved"].items(), *result["ended"].items()]:
        old, new = key.split(" -> ", 1)
        table.add_row(old, new, str(count))
    for key, count in result["unresolved"].items():
        table.add_row(key.split(":", 1)[0], f"unresolved ({key.split(': ', 1)[1]})", str(count))
    out.print(table)
    out.print(f"{verb}: {result['migrated']}, already there: {result['already']}")


@app.command()
def migrate(
    campaign_id: CampaignId,
    to: Annotated[
        str,
        typer.Option(
            "--to", help="the template version to move to: a number, or 'current' (the file now)"
        ),
    ],
    stage_map: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="OLD=NEW (keeps its place), OLD=NEW:enter (from its start) or OLD=exit:OUTCOME;"
            " repeat for each stage",
        ),
    ] = None,
    default: Annotated[
        str | None,
        typer.Option(help="where conversations in removed stages the map does not name go"),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="write the migration (without it: a dry run)")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only report what would happen (the default)")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Move a campaign's in-flight conversations to another template version.

    Without --apply it reports how many move from which stage to which and which would
    end, and why. Exit 2 if a stage is left unresolved (map it, or give --default), dry
    run or not."""
    from campaign_worker.domain.migrations import map_items

    if apply and dry_run:
        raise fail("--apply and --dry-run exclude each other", EXIT_USAGE)
    with service_errors():
        pairs = map_items(stage_map or [])
        result = (
            manager().migrate_campaign(campaign_id, to, pairs, default, dry_run=not apply).as_dict()
        )
    if as_json:
        print_json(result)
        return
    _print_migration(campaign_id, result)
    if result["unresolved"]:
        raise fail("unresolved stages: map them with --map or give --default", EXIT_USAGE)
    if not result["dry_run"] and not result["finished"]:
        raise fail("not finished: run the same command again to finish it")
