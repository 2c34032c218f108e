"""``campaign-worker conversations show``: one conversation's timeline and messages."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.errors import ConversationNotFoundError
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

app = command_group("Read one conversation.")


def message_status(message: dict[str, Any], unpublished: list[str]) -> str:
    """received (inbound), withheld (a holdout's: never sent), pending (written, not yet
    handed to the channel) or sent."""
    if message["direction"] == "inbound":
        return "received"
    if (message.get("metadata") or {}).get("withheld") is True:
        return "withheld"
    return "pending" if message["message_id"] in unpublished else "sent"


def with_statuses(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with a ``status`` on each message of its history."""
    for message in doc["message_history"]:
        message["status"] = message_status(message, doc.get("unpublished") or [])
    return doc


def _conversation_id(conversation_id: str | None, campaign: str | None, user: str | None) -> str:
    """The id given, or the one of (campaign, user); exit 2 unless exactly one way is used."""
    if conversation_id and not (campaign or user):
        return conversation_id
    if campaign and user and not conversation_id:
        return conversation_id_for(campaign, user)
    raise fail("give a conversation ID, or both --campaign and --user", EXIT_USAGE)


@app.command()
def show(
    conversation_id: Annotated[str | None, typer.Argument(help="the conversation id")] = None,
    campaign: Annotated[str | None, typer.Option(help="with --user: the campaign id")] = None,
    user: Annotated[str | None, typer.Option(help="with --campaign: the user id")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Stage timeline and message history with statuses.

    This prints message BODIES (what was sent and what the recipient answered): an
    explicit operator read. Exit 1 if the conversation is unknown.
    """
    wanted = _conversation_id(conversation_id, campaign, user)
    with service_errors():
        try:
            doc = manager().get_conversation(wanted)
        except ConversationNotFoundError:
            if campaign is None:
                raise
            raise fail(
                f"no conversation for user {user!r} in campaign {campaign!r} "
                "(not initialized yet, or not in its audience)"
            ) from None
    with_statuses(doc)
    if as_json:
        print_json(doc)
        return
    out = console()
    out.print(
        f"conversation {doc['_id']}: campaign {doc['campaign_id']}, user {doc['user_id']}, "
        f"status {doc['status']}, stage {doc['current_stage']}"
        + (", in the holdout (sent nothing)" if doc.get("holdout") else "")
    )
    out.print(_timeline(doc))
    out.print(messages_table(doc))


def _timeline(doc: dict[str, Any]) -> Table:
    table = Table(title="stages")
    for column in ("stage", "entered", "exited", "completed"):
        table.add_column(column)
    for entry in doc["stages"]:
        table.add_row(
            entry["name"],
            when(entry["entered_at"]),
            when(entry.get("exited_at")),
            "yes" if entry.get("completed") else "no",
        )
    return table


def _stage(metadata: dict[str, Any]) -> str:
    """The message's stage, and its A/B variant in parentheses."""
    stage = str(metadata.get("stage", ""))
    return f"{stage} ({metadata['variant']})" if metadata.get("variant") else stage


def messages_table(doc: dict[str, Any]) -> Table:
    table = Table(title="messages")
    for column in ("time", "direction", "stage", "status", "content"):
        table.add_column(column)
    for message in doc["message_history"]:
        table.add_row(
            when(message["timestamp"]),
            message["direction"],
            _stage(message.get("metadata") or {}),
            message["status"],
            message["content"],
        )
    return table
