"""``campaign-worker campaigns enroll CAMPAIGN --recipients FILE``: people added to a
running campaign from a CSV or JSONL file, streamed in batches (``enroll_recipients``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from campaign_worker.entrypoints.cli.common import (
    EXIT_USAGE,
    JSON_HELP,
    console,
    fail,
    manager,
    print_json,
    service_errors,
)
from campaign_worker.entrypoints.cli.recipient_files import FORMATS, read_rows
from campaign_worker.service.enrollment import MAX_ENROLL

COUNTS = ("enrolled", "already", "suppressed", "invalid")
SHOWN = 20  # invalid rows reported with their line


class _Enrollment:
    """Sends batches and adds up their results; invalid rows reported by line."""

    def __init__(self, campaign_id: str, key: str | None) -> None:
        self.campaign_id, self.key = campaign_id, key
        self.totals = dict.fromkeys(COUNTS, 0)
        self.shown = 0

    def invalid(self, line: int, reason: str) -> None:
        self.totals["invalid"] += 1
        if self.shown < SHOWN:
            sys.stderr.write(f"line {line}: skipped: {reason}\n")
            self.shown += 1

    def send(self, rows: list[dict[str, Any]], lines: list[int]) -> None:
        if not rows:
            return
        result = manager().enroll_recipients(self.campaign_id, rows, self.key)
        for name in COUNTS:
            self.totals[name] += getattr(result, name)
        for sample in result.invalid_samples:
            self.totals["invalid"] -= 1  # counted again, with its line
            self.invalid(lines[int(sample["index"])], str(sample["error"]))


def enroll(
    campaign_id: Annotated[str, typer.Argument(help="the campaign id")],
    recipients: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="people to enroll: .csv (user_id, timezone, attribute columns) or .jsonl",
        ),
    ],
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_ENROLL, help="people per enrollment call")
    ] = 1000,
    idempotency_key: Annotated[
        str | None, typer.Option(help="the same key again enrolls nobody twice")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Enroll the people in FILE into a scheduled, running or paused campaign.

    Each person enters once (again only as its re_entry allows); suppressed people are
    skipped and counted; malformed rows are reported by line. Exit 0 when done, 1 if the
    campaign is unknown or takes no enrollment, 2 for an unreadable file."""
    if recipients.suffix.lower() not in FORMATS:
        raise fail(f"{recipients}: expected one of {sorted(FORMATS)}", EXIT_USAGE)
    enrollment = _Enrollment(campaign_id, idempotency_key)
    with service_errors(), recipients.open(encoding="utf-8-sig", newline="") as handle:
        batch: list[dict[str, Any]] = []
        lines: list[int] = []
        try:
            for line, row in read_rows(recipients, handle, lambda _: None):
                if isinstance(row, str):
                    enrollment.invalid(line, row)
                    continue
                batch.append(row)
                lines.append(line)
                if len(batch) >= batch_size:
                    enrollment.send(batch, lines)
                    batch, lines = [], []
        except UnicodeDecodeError as exc:
            raise fail(f"{recipients}: not UTF-8 text: {exc}", EXIT_USAGE) from None
        enrollment.send(batch, lines)
    totals = enrollment.totals
    if as_json:
        print_json({"campaign_id": campaign_id, **totals})
        return
    console().print(
        f"campaign {campaign_id}: enrolled {totals['enrolled']}, already enrolled "
        f"{totals['already']}, suppressed {totals['suppressed']}, invalid {totals['invalid']}"
    )
