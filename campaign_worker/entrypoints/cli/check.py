"""``campaign-worker check CAMPAIGN``: the invariant checker (``service/invariants.py``).

Exit 0 when every invariant holds, 1 when one fails or the campaign is unknown, 2 for bad
input."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from campaign_worker.domain.invariants import InvariantReport
from campaign_worker.entrypoints.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    JSON_HELP,
    console,
    manager,
    print_json,
    service_errors,
)


def render(report: InvariantReport) -> Group:
    """The figures, then each violation with its sample ids."""
    figures = Table(title=f"campaign {report.campaign_id}: invariants")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    for name, value in report.figures.items():
        figures.add_row(name, str(value))
    if report.ok:
        return Group(figures, Text("ok: every invariant holds"))
    failed = Table(title="violations")
    for column in ("invariant", "detail", "sample"):
        failed.add_column(column)
    for violation in report.violations:
        failed.add_row(violation.invariant, violation.detail, "\n".join(violation.sample))
    return Group(figures, failed, Text(f"FAILED: {len(report.violations)} invariants"))


def check(
    campaign: Annotated[str, typer.Argument(help="the campaign id")],
    running: Annotated[
        bool,
        typer.Option(
            "--running",
            help="the system is still running: skip leases, overdue work and 'should be "
            "over', tolerate messages and metrics in flight",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Check a campaign's invariants (nothing lost, sent or recorded twice, no drift).

    One conversation per recipient, metrics equal to a recount, consistent stage
    timelines, every recorded message once in its history and in the outbox, no reply
    recorded twice, no lease past its expiry, a campaign over when it should be.

    Exit 0 when every invariant holds, 1 when one fails or the campaign is unknown.
    """
    with service_errors():
        report = manager().check_invariants(campaign, quiet=not running)
    if as_json:
        print_json(report.as_dict())
    else:
        console().print(render(report))
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILURE)
