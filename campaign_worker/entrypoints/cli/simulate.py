"""``campaign-worker simulate TEMPLATE``: a dry run on an embedded in-memory store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from campaign_worker.domain.templates import Template
from campaign_worker.entrypoints.cli.common import (
    EXIT_USAGE,
    JSON_HELP,
    console,
    fail,
    note,
    print_json,
    service_errors,
)
from campaign_worker.entrypoints.cli.conversations import messages_table, with_statuses
from campaign_worker.entrypoints.cli.metrics import funnel, render


def load_template(name: str) -> Template:
    """A template file (path), else a template id (packaged or CAMPAIGN_TEMPLATES_DIR)."""
    from campaign_worker.adapters.template_files import TemplateFiles, parse_template
    from campaign_worker.settings import get_settings

    path = Path(name)
    with service_errors():
        if path.is_file():
            return parse_template(path.read_text("utf-8"), str(path))
        return TemplateFiles(get_settings().campaign_templates_dir).get_template(name)


def simulate(
    template: Annotated[str, typer.Argument(help="a template file, or a known template id")],
    campaign_type: Annotated[
        str | None, typer.Option(help="campaign type to run (default: the template's first)")
    ] = None,
    recipients: Annotated[int, typer.Option(min=1, max=100_000, help="simulated audience")] = 100,
    reply_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="chance a recipient answers a stage")
    ] = 0.5,
    speed: Annotated[
        float, typer.Option(min=0.0, help="simulated seconds per real second; 0: no waiting")
    ] = 0.0,
    tick_hours: Annotated[float, typer.Option(min=0.1, help="clock step, simulated hours")] = 4.0,
    max_days: Annotated[int, typer.Option(min=1, help="stop after this many days")] = 60,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Dry-run a template: embedded in-memory store, compressed clock, simulated audience.

    Prints the funnel and the messages one sample recipient would receive. Nothing is
    sent to a broker or a real channel.
    """
    from campaign_worker.demo.simulation import SimulationOptions
    from campaign_worker.demo.simulation import simulate as run

    loaded = load_template(template)
    chosen = campaign_type or next(iter(loaded.campaign_types))
    if chosen not in loaded.campaign_types:
        known = sorted(loaded.campaign_types)
        raise fail(f"template {loaded.template_id!r} has no campaign type {chosen!r}; "
                   f"known: {known}", EXIT_USAGE)  # fmt: skip
    options = SimulationOptions(chosen, recipients, reply_rate, speed,
                                timedelta(hours=tick_hours), max_days)  # fmt: skip
    with service_errors():
        metrics, sample = run(loaded, options, note)
    with_statuses(sample)
    if as_json:
        print_json({"funnel": funnel(metrics), "sample": sample})
        return
    out = console()
    out.print(render(funnel(metrics)))
    out.print(f"\nmessages of sample recipient {sample['user_id']} ({sample['status']}):")
    out.print(messages_table(sample))
