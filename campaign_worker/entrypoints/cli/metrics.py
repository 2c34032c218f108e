"""``campaign-worker metrics CAMPAIGN``: the funnel read from the campaign's metrics."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from campaign_worker.entrypoints.cli.common import (
    JSON_HELP,
    console,
    manager,
    print_json,
    service_errors,
)
from campaign_worker.service.lift import goal_lifts

OUTCOMES = ("completed", "failed", "opted_out", "cancelled", "active")


def funnel(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per stage entered, completed, conversion and average duration; rate; outcomes."""
    stages = {
        name: {
            "entered": values["entered"],
            "completed": values["completed"],
            "conversion": values["completed"] / values["entered"] if values["entered"] else 0.0,
            "avg_duration_seconds": values["avg_duration_seconds"],
        }
        for name, values in metrics["stage_metrics"].items()
    }
    return {
        "campaign_id": metrics["campaign_id"],
        "total_recipients": metrics["total_recipients"],
        "stages": stages,
        "messages": dict(metrics["message_metrics"]),
        "outcomes": {name: metrics.get(f"{name}_conversations", 0) for name in OUTCOMES},
        # The branched funnel: every transition that happened (exits as "exit:<outcome>").
        "transitions": [
            {"from": source, "to": target, "count": count}
            for source, targets in (metrics.get("funnel") or {}).items()
            for target, count in sorted(targets.items(), key=lambda item: -item[1])
        ],
        **_splits(metrics),
        **_goals(metrics),
        "updated_at": metrics["updated_at"],
    }


def _goals(metrics: dict[str, Any]) -> dict[str, Any]:
    """Each goal's conversions, with the lift of treatment over holdout and of each
    variant over its stage's first (95% interval, p-value: ``service/lift.py``)."""
    goals = metrics.get("goals")
    if not goals:
        return {}
    return {
        "goals": {
            event: {**report, "lift": [found.as_dict() for found in goal_lifts(report)]}
            for event, report in goals.items()
        }
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _goal_lines(report: dict[str, Any]) -> list[Text]:
    lines = []
    for event, goal in (report.get("goals") or {}).items():
        mean = goal["mean_seconds_to_convert"]
        lines.append(
            Text(
                f"goal {event}: {goal['converted']} of {goal['conversations']} converted "
                f"({goal['conversion_rate']:.1%})"
                + ("" if mean is None else f", mean time to convert {_hours(mean)}")
            )
        )
        for found in goal["lift"]:
            interval = found["ci95"]
            shown = "" if interval is None else f" (95% CI {_percent(interval[0])} to "
            shown += "" if interval is None else f"{_percent(interval[1])})"
            p_value = "-" if found["p_value"] is None else f"{found['p_value']:.3g}"
            lines.append(
                Text(
                    f"  {found['group']} {found['converted']}/{found['conversations']} over "
                    f"{found['baseline']} {found['baseline_converted']}/"
                    f"{found['baseline_conversations']}: lift {_percent(found['lift'])}{shown}, "
                    f"p {p_value}: {found['verdict']}"
                )
            )
    return lines


def _rate(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _splits(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per variant of each split stage, and the holdout beside everyone else (only what
    the campaign has)."""
    report: dict[str, Any] = {}
    if metrics.get("variants"):
        report["variants"] = [
            {
                "stage": stage,
                "variant": variant,
                **{name: values[name] for name in ("conversations", "sent", "replies")},
                "reply_rate": _rate(values["replies"], values["conversations"]),
                "advanced": values["advanced"],
                "advance_rate": _rate(values["advanced"], values["conversations"]),
                "intents": values["intents"],
            }
            for stage, variants in metrics["variants"].items()
            for variant, values in variants.items()
        ]
    held = metrics.get("holdout")
    if held is not None:
        rest = metrics["total_recipients"] - held["conversations"]
        rest_completed = metrics.get("completed_conversations", 0) - held["completed"]
        report["holdout"] = {
            **held,
            "completion_rate": _rate(held["completed"], held["conversations"]),
            "others": {
                "conversations": rest,
                "completed": rest_completed,
                "completion_rate": _rate(rest_completed, rest),
            },
        }
    return report


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def render(report: dict[str, Any]) -> Group:
    """The funnel as a Rich table with the message and outcome lines under it."""
    table = Table(
        title=f"campaign {report['campaign_id']}: {report['total_recipients']} recipients"
    )
    for column in ("stage", "entered", "completed", "conversion", "avg duration"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, stage in report["stages"].items():
        conversion = f"{stage['conversion']:.0%}" if stage["entered"] else "-"
        table.add_row(
            name,
            str(stage["entered"]),
            str(stage["completed"]),
            conversion,
            _hours(stage["avg_duration_seconds"]),
        )
    messages = report["messages"]
    outcomes = ", ".join(f"{name} {count}" for name, count in report["outcomes"].items())
    moves = Table(title="transitions")
    for column in ("from", "to", "conversations"):
        moves.add_column(column, justify="right" if column == "conversations" else "left")
    for move in report.get("transitions", []):
        moves.add_row(move["from"], move["to"], str(move["count"]))
    return Group(
        table,
        *([moves] if report.get("transitions") else []),
        *_split_lines(report),
        *_goal_lines(report),
        Text(
            f"messages sent {messages['total_sent']}, received {messages['total_received']}, "
            f"response rate {messages['response_rate']:.2f}"
        ),
        Text(f"outcomes: {outcomes}"),
        Text(f"updated {report['updated_at']:%Y-%m-%d %H:%M:%S}"),
    )


def _split_lines(report: dict[str, Any]) -> list[Table | Text]:
    """The A/B variants table and the holdout line, when the campaign has them."""
    lines: list[Table | Text] = []
    if report.get("variants"):
        table = Table(title="variants")
        columns = ("stage", "variant", "conversations", "sent", "replies", "reply rate")
        for column in (*columns, "advanced", "advance rate", "intents"):
            left = column in ("stage", "variant", "intents")
            table.add_column(column, justify="left" if left else "right")
        for row in report["variants"]:
            intents = sorted(row["intents"].items(), key=lambda item: (-item[1], item[0]))
            table.add_row(
                row["stage"],
                row["variant"],
                str(row["conversations"]),
                str(row["sent"]),
                str(row["replies"]),
                f"{row['reply_rate']:.0%}" if row["conversations"] else "-",
                str(row["advanced"]),
                f"{row['advance_rate']:.0%}" if row["conversations"] else "-",
                ", ".join(f"{name} {count}" for name, count in intents[:4]),
            )
        lines.append(table)
    held = report.get("holdout")
    if held is not None:
        others = held["others"]
        lines.append(
            Text(
                f"holdout: {held['conversations']} conversations, completed "
                f"{held['completed']} ({held['completion_rate']:.0%}), failed {held['failed']}, "
                f"opted_out {held['opted_out']}, active {held['active']}, replies "
                f"{held['replies']}; everyone else: completed {others['completed']} of "
                f"{others['conversations']} ({others['completion_rate']:.0%})"
            )
        )
    return lines


def _show(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(report)
    else:
        console().print(render(report))


def _report(campaign_id: str) -> dict[str, Any]:
    with service_errors():
        return funnel(manager().get_campaign_metrics(campaign_id))


def metrics(
    campaign: Annotated[str, typer.Argument(help="the campaign id")],
    watch: Annotated[
        float | None,
        typer.Option(min=0.1, help="refresh every this many seconds until Ctrl-C"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """A campaign's funnel, response rate and outcomes.

    Per stage: entered, completed, conversion (completed / entered) and average duration;
    messages sent and received; conversations completed, failed, opted out, cancelled and
    active. With A/B splits: per variant conversations, sent, replies, advanced, intents;
    with a holdout: its outcomes beside everyone else's. With a goal: conversions overall,
    per stage, per variant and for the holdout, and the lift of treatment over holdout and
    of each variant over the first, with a 95% confidence interval and a p-value (or, when
    the sample is too small to tell, that). Exit 1 if the campaign is unknown.
    """
    report = _report(campaign)
    if watch is None:
        _show(report, as_json)
        return
    try:
        _watch(campaign, report, watch, as_json)
    except KeyboardInterrupt:
        return


def _watch(campaign: str, report: dict[str, Any], every: float, as_json: bool) -> None:
    """Refresh in place on a terminal; otherwise print each snapshot (JSON: one a line)."""
    out = console()
    if as_json or not out.is_terminal:
        while True:
            _show(report, as_json)
            out.file.flush()
            time.sleep(every)
            report = _report(campaign)
    with Live(render(report), console=out, auto_refresh=False) as live:
        while True:
            time.sleep(every)
            live.update(render(_report(campaign)), refresh=True)
