"""``campaign-worker templates validate|list``: check templates before deploying them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from campaign_worker.domain.templates import Template
from campaign_worker.entrypoints.cli.common import (
    JSON_HELP,
    command_group,
    console,
    print_json,
    service_errors,
)

app = command_group("Check and list campaign templates.")


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
    from campaign_worker.adapters.config_manager import parse_template

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
    from campaign_worker.adapters.config_manager import ConfigManager
    from campaign_worker.settings import get_settings

    with service_errors():
        templates = ConfigManager(get_settings().campaign_templates_dir)
    summaries = [summary(templates.get_template(id_)) for id_ in templates.template_ids()]
    if as_json:
        for item in summaries:
            print_json(item)
        return
    console().print(_table(summaries, title="templates"))
