"""The operator command ``campaign-worker``.

Subcommands register themselves in ``SUBCOMMANDS``: each is a function that adds its
parser to the argparse subparsers and sets ``handler`` (``(args) -> exit code``) with
``parser.set_defaults(handler=...)``. To add one (``demo``, ``health``, ...), write such a
function (here or in its own module) and append it to ``SUBCOMMANDS``.

    campaign-worker dead-letters list [--limit N] [--task NAME] [--all] [--json [--payload]]
    campaign-worker dead-letters replay ID [--kwargs JSON] [--task NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from pydantic_core import to_jsonable_python

from campaign_worker.domain.errors import CampaignWorkerError

Handler = Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------ dead letters


def _dead_letters_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from campaign_worker.entrypoints.celery_app import container

    out = out or sys.stdout
    docs = container().dead_letters.recent(
        limit=args.limit, task_name=args.task, include_replayed=args.all
    )
    if args.json:
        for doc in docs:
            shown = doc if args.payload else without_payload(doc)
            out.write(json.dumps(to_jsonable_python(shown), sort_keys=True) + "\n")
        return 0
    if not docs:
        out.write("no dead letters\n")
        return 0
    for doc in docs:
        replayed = f"  replayed as {doc['replayed_as']}" if doc.get("replayed_at") else ""
        out.write(
            f"{doc['_id']}  {doc['created_at']:%Y-%m-%dT%H:%M:%SZ}  {doc['task_name']}  "
            f"{doc.get('reason', '')}: {doc['error']}{replayed}\n"
        )
    return 0


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


def _dead_letters_replay(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from campaign_worker.entrypoints.celery_app import app, container
    from campaign_worker.entrypoints.requests import argument_reprs

    out = out or sys.stdout
    repository = container().dead_letters
    doc = repository.get(args.id)
    if doc is None:
        sys.stderr.write(f"dead letter not found: {args.id}\n")
        return 1
    task_name = args.task or doc["task_name"]
    refusal = _replay_refusal(doc, task_name, args.kwargs is not None)
    if refusal is not None:
        sys.stderr.write(refusal + "\n")
        return 1
    task_args, task_kwargs = payload_of(doc) or ([], {})
    if args.kwargs is not None:
        try:
            task_kwargs = json.loads(args.kwargs)
        except json.JSONDecodeError as exc:
            sys.stderr.write(f"--kwargs is not JSON: {exc}\n")
            return 2
        if not isinstance(task_kwargs, dict):
            sys.stderr.write("--kwargs must be a JSON object\n")
            return 2
    new_id = uuid.uuid4().hex
    now = container().manager.clock.now()
    # Claim the replay first, so two operators cannot both replay it.
    if not repository.mark_replayed(args.id, new_id, now):
        sys.stderr.write(f"dead letter {args.id} was replayed already as {doc['replayed_as']}\n")
        return 1
    try:
        argsrepr, kwargsrepr = argument_reprs(app.tasks[task_name].run, task_args, task_kwargs)
        app.send_task(
            task_name,
            args=task_args,
            kwargs=task_kwargs,
            task_id=new_id,
            argsrepr=argsrepr,  # what a task-sent event (Flower) shows: ids only
            kwargsrepr=kwargsrepr,
        )
    except Exception as exc:
        repository.unmark_replayed(args.id, new_id)
        sys.stderr.write(f"could not publish {task_name}: {exc}\n")
        return 2
    out.write(f"replayed {args.id} as task {new_id} ({task_name})\n")
    return 0


def add_dead_letters(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dead-letters", help="list and replay task messages rejected as invalid"
    )
    commands = parser.add_subparsers(dest="dead_letters_command", required=True)

    listing = commands.add_parser("list", help="newest first; not yet replayed unless --all")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--task", help="only this task name")
    listing.add_argument("--all", action="store_true", help="include replayed ones")
    listing.add_argument("--json", action="store_true", help="one JSON document per line")
    listing.add_argument(
        "--payload",
        action="store_true",
        help="with --json: include the arguments and raw message (they hold message bodies)",
    )
    listing.set_defaults(handler=_dead_letters_list)

    replay = commands.add_parser("replay", help="publish the message again (new task id)")
    replay.add_argument("id", help="dead letter id (the original task id)")
    replay.add_argument("--kwargs", help="replace the keyword arguments (a JSON object)")
    replay.add_argument(
        "--task", help="publish under this task name (an unknown_task letter's intended name)"
    )
    replay.set_defaults(handler=_dead_letters_replay)


# ------------------------------------------------------------------ main


def add_health(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "health", help="check broker, MongoDB and worker; exit code 1/2/4 bitmask of failures"
    )
    parser.add_argument("--worker", help="ping only this worker node (e.g. celery@host)")
    parser.add_argument("--skip-worker", action="store_true", help="check broker and MongoDB")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.set_defaults(handler=_health)


def _health(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from campaign_worker.entrypoints.health import run_health
    from campaign_worker.settings import get_settings

    app: Any = None
    if not args.skip_worker:
        from campaign_worker.entrypoints import celery_app

        app = celery_app.app
    report = run_health(
        get_settings(),
        app=app,
        worker=args.worker,
        check_workers=not args.skip_worker,
        timeout=args.timeout,
    )
    (out or sys.stdout).write(report.as_json() + "\n")
    return report.exit_code


def _add_demo(subparsers: Any) -> None:
    from campaign_worker.demo.cli import add_demo

    add_demo(subparsers)


SUBCOMMANDS: list[Callable[[Any], None]] = [add_dead_letters, add_health, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="campaign-worker", description="Operate the campaign worker."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CampaignWorkerError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
