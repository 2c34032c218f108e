"""``campaign-worker templates validate|list|diff|versions``: check templates before
deploying them, compare two of them, list the versions stored for one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from campaign_worker.domain.templates import Template
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

app = command_group("Check, list and compare templates; their versions stored in MongoDB.")


def summary(template: Template) -> dict[str, Any]:
    """A template's id and, per campaign type, its stage names in order."""
    return {
        "template_id": template.template_id,
        "campaign_types": {
            name: type_template.stage_names
            for name, type_template in template.campaign_types.items()
        },
    }


def _table(summaries: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("template", "campaign type", "stages"):
        table.add_column(column)
    for item in summaries:
        for campaign_type, stages in item["campaign_types"].items():
            table.add_row(item["template_id"], campaign_type, " → ".join(stages))
    return table


@app.command()
def validate(
    path: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="a template file (.yaml, .yml, .json)"),
    ],
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Load PATH as the worker would; exit 1 with the error (file, stage, field) if invalid."""
    from campaign_worker.adapters.template_files import parse_template

    with service_errors():
        template = parse_template(path.read_text("utf-8"), str(path))
    if as_json:
        print_json({"valid": True, "path": str(path), **summary(template)})
        return
    console().print(f"ok: {path} is valid")
    console().print(_table([summary(template)], title=template.template_id))


@app.command("list")
def list_templates(
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """The packaged templates and those in CAMPAIGN_TEMPLATES_DIR: id, types, stages."""
    from campaign_worker.adapters.template_files import TemplateFiles
    from campaign_worker.settings import get_settings

    with service_errors():
        templates = TemplateFiles(get_settings().campaign_templates_dir)
    summaries = [summary(templates.get_template(id_)) for id_ in templates.template_ids()]
    if as_json:
        for item in summaries:
            print_json(item)
        return
    console().print(_table(summaries, title="templates"))


_STORED = re.compile(r"^(?P<template_id>[A-Za-z0-9_.-]{1,128})@(?P<version>[0-9]+)$")
SIDE_HELP = "a template file, or TEMPLATE_ID@VERSION: a version stored in MongoDB"


def load_side(side: str) -> Template:
    """A file if ``side`` names one, else ``template_id@version`` from the database."""
    from campaign_worker.adapters.template_files import parse_template

    path = Path(side)
    if path.is_file():
        with service_errors():
            return parse_template(path.read_text("utf-8"), str(path))
    matched = _STORED.match(side)
    if matched is None:
        raise fail(f"{side!r}: no such file, and not TEMPLATE_ID@VERSION", EXIT_USAGE)
    with service_errors():
        versions = manager().versions
        if versions is None:
            raise fail("template versions are not configured")
        return versions.get(matched["template_id"], int(matched["version"]))[1]


@app.command()
def diff(
    a: Annotated[str, typer.Argument(help=SIDE_HELP)],
    b: Annotated[str, typer.Argument(help=SIDE_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """What changed from template A to B (each a file or TEMPLATE_ID@VERSION).

    Stages added and removed, and per stage kept, messages changed, added or removed and
    settings changed. Exit 0 either way (``identical`` in --json tells); 2 if a side is
    neither a file nor a stored version."""
    from campaign_worker.domain.template_diff import diff_templates

    found = diff_templates(load_side(a), load_side(b))
    if as_json:
        print_json({"a": a, "b": b, **found})
        return
    out = console()
    if found["identical"]:
        out.print(f"{a} and {b}: identical content")
        return
    for line in found["settings"]:
        out.print(f"template: {line}")
    for name, changes in found["campaign_types"].items():
        if changes.get("added") or changes.get("removed"):
            out.print(f"campaign type {name}: {'added' if changes.get('added') else 'removed'}")
            continue
        for key in ("stages_removed", "stages_added"):
            if key in changes:
                out.print(f"{name}: {key.replace('_', ' ')}: {', '.join(changes[key])}")
        if "order" in changes:
            before, after = changes["order"]["before"], changes["order"]["after"]
            out.print(f"{name}: stage order {' → '.join(before)} became {' → '.join(after)}")
        for stage, lines in changes.get("stages_changed", {}).items():
            for line in lines:
                out.print(f"{name}: stage {stage}: {line}")


@app.command()
def versions(
    template_id: Annotated[str, typer.Argument(help="the template id")],
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """The versions of a template stored in MongoDB, oldest first.

    A campaign pins one when it is created; a worker stores its files' contents as it
    starts. Before either, a template has no stored version."""
    with service_errors():
        found = manager().template_versions(template_id)
    if as_json:
        for item in found:
            print_json(item)
        return
    if not found:
        console().print(f"no stored versions of {template_id}")
        return
    table = Table(title=f"versions of {template_id}")
    for column in ("version", "content hash", "registered", "source"):
        table.add_column(column)
    for item in found:
        table.add_row(
            str(item["version"]),
            item["content_hash"][:16],
            when(item["created_at"]),
            item.get("source", ""),
        )
    console().print(table)
