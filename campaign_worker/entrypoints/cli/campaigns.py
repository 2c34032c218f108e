"""``campaign-worker campaigns list|show|pause|resume|cancel`` through CampaignManager."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from campaign_worker.entrypoints.cli.campaign_create import create
from campaign_worker.entrypoints.cli.common import (
    JSON_HELP,
    command_group,
    console,
    manager,
    print_json,
    service_errors,
    when,
)

app = command_group("Create, list, inspect and steer campaigns.")
app.command()(create)

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
