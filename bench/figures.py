"""The figures of issue 10's table (and issue 21's reply understanding): each measured
value beside its target and the baseline measured in the same run, printed as a table and
written as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Every figure `make bench` reports, in table order, with its target (issue 10).
TARGETS: dict[str, tuple[str, str]] = {
    "init_round_trips_per_1000_inline": (
        "MongoDB round trips per 1,000 recipients initialized (inline)",
        "<= 2",
    ),
    "init_round_trips_per_1000_referenced": (
        "MongoDB round trips per 1,000 recipients initialized (referenced collection)",
        "<= 2",
    ),
    "advance_round_trips_per_1000_service": (
        "round trips per 1,000 conversations advanced, defaults (service call)",
        "<= 10",
    ),
    "advance_round_trips_per_1000_celery": (
        "round trips per 1,000 conversations advanced, defaults (through Celery)",
        "<= 10",
    ),
    "reply_round_trips_per_1000_celery": (
        "round trips per 1,000 inbound replies (public task, real worker)",
        "<= 50",
    ),
    "enroll_round_trips_per_1000": (
        "round trips per 1,000 people enrolled into a running campaign (service call)",
        "<= 5",
    ),
    "event_round_trips_per_1000": (
        "round trips per 1,000 events applied (service call, batches of 500)",
        "<= 20",
    ),
    "broker_messages_per_1000_advanced": ("broker messages per 1,000 advanced", "<= 2"),
    "claim_share_of_batch_db_time": (
        "claim share of a batch's DB time (claim round trips per batch beside)",
        "one read",
    ),
    "init_rate_over_raw_insert_many": (
        "init rate / raw insert_many of the same documents, same server",
        ">= 0.9",
    ),
    "advance_rate_over_raw_bulk_write": (
        "advance rate / raw bulk_write of the same updates",
        ">= 0.7",
    ),
    "advance_rate_over_naive": (
        "advance rate / naive per-message (find + update per conversation)",
        "> 1",
    ),
    "cpu_per_step_over_bson_encode": (
        "CPU per conversation step / bson.encode of its document",
        "<= 3",
    ),
    "worker_cpu_per_1000_over_noop": (
        "worker CPU per 1,000 conversations / Celery's per 1,000 no-op tasks",
        "<= 0.1",
    ),
    "init_peak_rss_mib": ("peak RSS initializing a streamed audience (MiB)", "flat"),
    "conversations_per_s_by_workers": (
        "conversations/s with 1, 2, 4 worker processes",
        "measured, bound named",
    ),
    # The webhook dispatcher (issue 23): one process, rate limit not binding, a local
    # receiver answering after the latency; the ideal client has the same max_in_flight.
    "dispatch_over_ideal_0ms": (
        "dispatcher msgs/s / ideal httpx client, 0 ms provider latency",
        "report (bound: the stand-in)",
    ),
    "dispatch_over_ideal_50ms": (
        "dispatcher msgs/s / ideal httpx client, 50 ms provider latency",
        ">= 0.6",
    ),
    "dispatch_over_ideal_200ms": (
        "dispatcher msgs/s / ideal httpx client, 200 ms provider latency",
        ">= 0.8",
    ),
    "dispatch_round_trips_per_1000": (
        "MongoDB round trips per 1,000 messages sent (dispatcher)",
        "<= 20",
    ),
    # Reply understanding (issue 21), on bench/data/replies_heldout.tsv; a reply held for
    # review counts as wrong and as no opt-out.
    "intents_accuracy": ("reply intents: accuracy on the held-out set", ">= 0.92"),
    "intents_opt_out_recall": ("reply intents: opt-out recall", ">= 0.99"),
    "intents_false_opt_out_rate": (
        "reply intents: false opt-outs / replies that were not opt-outs",
        "<= 0.005",
    ),
    "intents_worst_language_accuracy": (
        "reply intents: accuracy of the worst language (en/de/fr/es)",
        ">= 0.90",
    ),
    "intents_quoted_signed_accuracy": (
        "reply intents: accuracy on quoted or signed email replies",
        ">= 0.95",
    ),
    "intents_latency_p99_ms": (
        "reply classification p99 per reply, one core, CPU time (ms)",
        "<= 1",
    ),
    "intents_startup_s": (
        "worker start with reply understanding: import + load (s)",
        "< 5",
    ),
}


@dataclass
class Figure:
    key: str
    value: float | int | str
    baseline: str
    note: str = ""
    detail: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return TARGETS[self.key][0]

    @property
    def target(self) -> str:
        return TARGETS[self.key][1]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label, "target": self.target}


def fmt(value: float | int | str) -> str:
    if isinstance(value, str):
        return value
    if 0 < abs(value) < 0.05 and not isinstance(value, int):
        return f"{value:.4f}"  # rates such as false opt-outs (0.0084) would read 0.01
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 100):
        return f"{int(value):,}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:.2f}"


def table(figures: list[Figure]) -> str:
    """A Markdown table: figure | measured | target | baseline (same run) | note."""
    by_key = {f.key: f for f in figures}
    lines = [
        "| figure | measured | target | baseline, same run | note |",
        "|---|---:|---:|---|---|",
    ]
    for key, (label, target) in TARGETS.items():
        figure = by_key.get(key)
        if figure is None:
            lines.append(f"| {label} | (not run) | {target} | | |")
            continue
        lines.append(
            f"| {label} | **{fmt(figure.value)}** | {target} | {figure.baseline} | {figure.note} |"
        )
    return "\n".join(lines)


def size_text(value: Any) -> str:
    if isinstance(value, list):
        return " / ".join(f"{v:,}" for v in value)
    return f"{value:,}"


def describe(report: dict[str, Any]) -> str:
    """One line: when, which commit, on what, against which server and broker, sizes."""
    machine = report["machine"]
    sizes = ", ".join(f"{k} {size_text(v)}" for k, v in report["sizes"].items())
    return (
        f"{report['date']}, commit `{report['commit']}`, {machine['cpus']} CPUs "
        f"({machine['cpu'] or machine['platform']}), Python {machine['python']}, pymongo "
        f"{machine['pymongo']}; MongoDB: {report['server']['kind']} (reports "
        f"{report['server']['version']}); broker: {report['broker']}; sizes: {sizes}; "
        f"{report['seconds']:.0f} s"
    )


def compare(after: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """The docs table from bench JSON: each figure's target, its value before (another
    report, if given) and now, and now's same-run baseline."""
    lines = []
    if before is not None:
        lines += [f"- before: {describe(before)}", f"- after: {describe(after)}", ""]
        lines += [
            "| figure | target | before | after | baseline (after's run) | note (after) |",
            "|---|---:|---:|---:|---|---|",
        ]
    else:
        lines += [f"- {describe(after)}", ""]
        lines += [
            "| figure | target | measured | baseline, same run | note |",
            "|---|---:|---:|---|---|",
        ]
    for key, (label, target) in TARGETS.items():
        now = after["figures"].get(key)
        value = f"**{fmt(now['value'])}**" if now else "(not run)"
        row = [label, target]
        if before is not None:
            old = before["figures"].get(key)
            row.append(fmt(old["value"]) if old else "(not run)")
        row += [value, now["baseline"] if now else "", now["note"] if now else ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
