"""``campaign-worker dead-letters list|replay``: task messages rejected as invalid.

campaign-worker dead-letters list [--limit N] [--task NAME] [--all] [--json [--payload]]
campaign-worker dead-letters replay ID [--kwargs JSON] [--task NAME]
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Annotated, Any

import typer

from campaign_worker.entrypoints.cli.common import EXIT_USAGE, command_group, fail, print_json
from campaign_worker.entrypoints.container import container

app = command_group("List and replay task messages rejected as invalid.")

# Message bodies (reply texts, recipients) stay out of listings unless asked for.
PAYLOAD_FIELDS = ("payload", "payload_json", "envelope", "envelope_json")


def without_payload(doc: dict[str, Any]) -> dict[str, Any]:
    """The listing of a dead letter: its payload and raw envelope left out (``--payload``)."""
    shown = {key: value for key, value in doc.items() if key not in PAYLOAD_FIELDS}
    shown["payload_hidden"] = any(key in doc for key in PAYLOAD_FIELDS)
    return shown


def payload_of(doc: dict[str, Any]) -> tuple[list[Any], dict[str, Any]] | None:
    """The stored arguments, or None for a message whose arguments could not be read."""
    if "payload" not in doc and "payload_json" in doc:
        doc = {**doc, "payload": json.loads(doc["payload_json"])}
    if "payload" not in doc:
        return None
    payload = doc["payload"] or {}
    return list(payload.get("args") or []), dict(payload.get("kwargs") or {})


@app.command("list")
def list_dead_letters(
    limit: Annotated[int, typer.Option(min=1, help="at most this many")] = 50,
    task: Annotated[str | None, typer.Option(help="only this task name")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include replayed ones")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document per line")] = False,
    payload: Annotated[
        bool,
        typer.Option(
            "--payload",
            help="with --json: include the arguments and raw message (they hold message bodies)",
        ),
    ] = False,
) -> None:
    """Newest first; not yet replayed unless --all."""
    docs = container().dead_letters.recent(limit=limit, task_name=task, include_replayed=all_)
    if as_json:
        for doc in docs:
            print_json(doc if payload else without_payload(doc))
        return
    if not docs:
        sys.stdout.write("no dead letters\n")
    for doc in docs:
        replayed = f"  replayed as {doc['replayed_as']}" if doc.get("replayed_at") else ""
        sys.stdout.write(
            f"{doc['_id']}  {doc['created_at']:%Y-%m-%dT%H:%M:%SZ}  {doc['task_name']}  "
            f"{doc.get('reason', '')}: {doc['error']}{replayed}\n"
        )


def _replay_refusal(doc: dict[str, Any], task_name: str, new_kwargs: bool) -> str | None:
    """Why this dead letter cannot be published as asked, if it cannot."""
    from campaign_worker.entrypoints.tasks import PUBLIC_TASKS

    if task_name not in {task.name for task in PUBLIC_TASKS}:
        return (
            f"dead letter {doc['_id']}: task {task_name!r} is not registered; "
            "replay it under the intended name with --task NAME"
        )
    if payload_of(doc) is None and not new_kwargs:
        return (
            f"dead letter {doc['_id']} ({doc.get('reason')}) has no readable arguments; "
            "see its envelope ('dead-letters list --json --payload'); replay with --kwargs"
        )
    return None


def _parse_kwargs(text: str) -> dict[str, Any]:
    """``--kwargs``: a JSON object, else exit 2."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"--kwargs is not JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise fail("--kwargs must be a JSON object", EXIT_USAGE)
    return value


@app.command()
def replay(
    id: Annotated[str, typer.Argument(help="dead letter id (the original task id)")],
    kwargs: Annotated[
        str | None, typer.Option(help="replace the keyword arguments (a JSON object)")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="publish under this task name (an unknown_task letter's intended name)"),
    ] = None,
) -> None:
    """Publish the message again (new task id)."""
    repository = container().dead_letters
    doc = repository.get(id)
    if doc is None:
        raise fail(f"dead letter not found: {id}")
    task_name = task or doc["task_name"]
    refusal = _replay_refusal(doc, task_name, kwargs is not None)
    if refusal is not None:
        raise fail(refusal)
    task_args, task_kwargs = payload_of(doc) or ([], {})
    if kwargs is not None:
        task_kwargs = _parse_kwargs(kwargs)
    new_id = uuid.uuid4().hex
    # Claim the replay first, so two operators cannot both replay it.
    if not repository.mark_replayed(id, new_id, container().manager.clock.now()):
        raise fail(f"dead letter {id} was replayed already as {doc['replayed_as']}")
    _publish(id, new_id, task_name, task_args, task_kwargs)
    sys.stdout.write(f"replayed {id} as task {new_id} ({task_name})\n")


def _publish(
    letter_id: str, new_id: str, task_name: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Send the task; on failure release the claim so it can be replayed later (exit 2)."""
    # Sending needs the tasks (their signatures, the app's routes): loaded only here.
    from campaign_worker.entrypoints import tasks
    from campaign_worker.entrypoints.requests import argument_reprs

    try:
        task = next(task for task in tasks.PUBLIC_TASKS if task.name == task_name)
        argsrepr, kwargsrepr = argument_reprs(task.run, args, kwargs)
        task.app.send_task(
            task_name,
            args=args,
            kwargs=kwargs,
            task_id=new_id,
            argsrepr=argsrepr,  # what a task-sent event (Flower) shows: ids only
            kwargsrepr=kwargsrepr,
        )
    except Exception as exc:
        container().dead_letters.unmark_replayed(letter_id, new_id)
        raise fail(f"could not publish {task_name}: {exc}", EXIT_USAGE) from None


__all__ = ["app", "payload_of", "without_payload"]
