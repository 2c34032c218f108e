"""``campaign-worker campaigns create FILE [--recipients PATH]``."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from campaign_worker.entrypoints.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    JSON_HELP,
    console,
    fail,
    manager,
    print_json,
    service_errors,
)
from campaign_worker.entrypoints.cli.recipient_files import FORMATS, read_rows
from campaign_worker.entrypoints.container import container
from campaign_worker.service.recipient_import import ImportResult, import_recipients


def load_campaign(path: Path) -> dict[str, Any]:
    """The campaign request in ``path`` (YAML, or JSON for ``.json``); exit 2 if unreadable."""
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"{path}: not UTF-8 text: {exc}", EXIT_USAGE) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise fail(f"{path}: not parseable: {exc}", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise fail(f"{path}: the top level must be a mapping", EXIT_USAGE)
    return data


def import_id_for(idempotency_key: str | None) -> str:
    """A fresh import id, or one derived from the key: a re-run imports nothing twice."""
    if idempotency_key is None:
        return uuid.uuid4().hex
    return uuid.uuid5(uuid.NAMESPACE_URL, f"campaign-worker-import:{idempotency_key}").hex


def _import(path: Path, collection: str, import_id: str, batch_size: int) -> ImportResult:
    """Stream ``path`` into ``collection`` with a progress bar on stderr."""
    from campaign_worker.adapters.mongo_recipients import MongoRecipientStore

    store = MongoRecipientStore(container().db, collection)
    progress = Progress(
        TextColumn("importing {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]} rows"),
        console=Console(stderr=True),
        transient=True,
    )
    # utf-8-sig: a spreadsheet's byte order mark does not end up in the first column's name.
    with service_errors(), progress, path.open(encoding="utf-8-sig", newline="") as handle:
        task = progress.add_task(path.name, total=path.stat().st_size, rows=0)
        store.initialize()
        rows = read_rows(path, handle, lambda size: progress.advance(task, size))
        try:
            return import_recipients(
                rows,
                store,
                import_id,
                batch_size,
                on_batch=lambda done: progress.update(task, rows=done.imported + done.skipped),
            )
        except UnicodeDecodeError as exc:
            # Rows before it may be imported: the same --idempotency-key re-imports none twice.
            raise fail(f"{path}: not UTF-8 text: {exc}", EXIT_USAGE) from None


def _report_skipped(result: ImportResult) -> None:
    for line, reason in result.errors:
        sys.stderr.write(f"line {line}: skipped: {reason}\n")
    if result.skipped > len(result.errors):
        sys.stderr.write(f"... and {result.skipped - len(result.errors)} more skipped rows\n")


def create(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="campaign YAML/JSON")],
    recipients: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="audience file: .csv (user_id, timezone, "
            "attribute columns) or .jsonl; imported in batches into --collection",
        ),
    ] = None,
    collection: Annotated[str, typer.Option(help="collection the audience goes to")] = (
        "recipients"
    ),
    batch_size: Annotated[int, typer.Option(min=1, help="rows per write")] = 1000,
    idempotency_key: Annotated[
        str | None, typer.Option(help="the same key again creates (and imports) nothing new")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Create a campaign from FILE; with --recipients, import its audience first.

    Malformed audience rows are reported with their line number and skipped. Exit 0 when
    created, 2 for an invalid campaign or file, 1 when no audience row was valid.
    """
    data = load_campaign(file)
    result = None
    if recipients is not None:
        result = _import_audience(data, recipients, collection, batch_size, idempotency_key)
    with service_errors():
        campaign_id = manager().create_campaign(data, idempotency_key)
    _print_created(campaign_id, result, as_json)


def _import_audience(
    data: dict[str, Any], path: Path, collection: str, batch_size: int, key: str | None
) -> ImportResult:
    """Point ``data`` at a new import of ``path``, check the campaign, then import."""
    if path.suffix.lower() not in FORMATS:
        raise fail(f"{path}: expected one of {sorted(FORMATS)}", EXIT_USAGE)
    import_id = import_id_for(key)
    data["recipients"] = {"collection": collection, "query": {"import_id": import_id}}
    with service_errors():
        manager().validate_campaign(data)  # before importing a million rows
    result = _import(path, collection, import_id, batch_size)
    _report_skipped(result)
    if result.imported == 0:
        raise fail(f"{path}: no valid row to import", EXIT_FAILURE)
    return result


def _print_created(campaign_id: str, result: ImportResult | None, as_json: bool) -> None:
    counts = {} if result is None else {"imported": result.imported, "skipped": result.skipped}
    if as_json:
        print_json({"campaign_id": campaign_id, **counts})
        return
    if result is not None:
        campaign_id += f" ({result.imported} recipients imported, {result.skipped} skipped)"
    console().print(f"created campaign {campaign_id}")
