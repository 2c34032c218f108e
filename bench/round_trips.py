"""MongoDB round trips and wall time of the hot paths (``make bench``).

Counts the commands each step sends on the wire (one command = one request/reply = one
round trip) with a pymongo CommandListener, and times the step. Runs against
``MONGODB_URI`` when set (in a throwaway database, dropped afterwards), otherwise against
a secantusdb server it starts on a free port and stops at the end.

Steps:
  init_inline       initialize_campaign_conversations, N inline recipients
  init_referenced   the same, recipients streamed from a referenced collection
  process_due       process_due_conversations over M due conversations (first message)
  advance_replies   M inbound replies, each advancing its conversation (one by one)
  advance_batch     M conversations advanced by processing batches (time-based rule)
  advance_explicit  advance_conversation_stage on M conversations (one by one)

Prints a table and writes JSON to bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pymongo  # noqa: E402

from campaign_worker.adapters.clock import ManualClock  # noqa: E402
from campaign_worker.adapters.logs import configure_logging, redact_uri  # noqa: E402
from campaign_worker.bootstrap import build_manager, ensure_indexes  # noqa: E402
from campaign_worker.domain.documents import conversation_id_for  # noqa: E402
from campaign_worker.service.campaign_manager import CampaignManager  # noqa: E402
from campaign_worker.settings import Settings  # noqa: E402
from tooling.mongo_monitoring import CommandCounter  # noqa: E402

Doc = dict[str, Any]
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
RESULTS = ROOT / "bench" / "results"


@dataclass
class Step:
    name: str
    items: int
    round_trips: int
    seconds: float
    by_command: dict[str, int]
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_item(self) -> float:
        return self.round_trips / self.items if self.items else 0.0


@contextmanager
def server_uri(uri: str | None) -> Iterator[tuple[str, str]]:
    """(uri, description) of the server to measure; starts secantusdb if no URI."""
    if uri:
        yield uri, "MONGODB_URI"
        return
    from tests.conftest import SecantusServer  # the test harness's launcher

    base = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    server = SecantusServer(base / "data")
    server.start()
    try:
        yield server.uri, "secantusdb (started by the bench, local storage)"
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def recipients(n: int, prefix: str) -> list[Doc]:
    return [
        {"user_id": f"{prefix}-{i:06d}", "attributes": {"first_name": f"Ann{i}"}} for i in range(n)
    ]


class Bench:
    def __init__(self, db: Any, counter: CommandCounter, args: argparse.Namespace) -> None:
        self.db = db
        self.counter = counter
        self.args = args
        self.clock = ManualClock(START)
        settings = Settings(
            mongodb_db=db.name,
            init_batch_size=args.init_batch_size,
            process_batch_size=args.batch_size,
        )
        self.manager: CampaignManager = build_manager(db, settings, clock=self.clock)
        ensure_indexes(self.manager)
        self.steps: list[Step] = []

    def measure(
        self, name: str, items: int, work: Callable[[], Any], note: str = ""
    ) -> tuple[Step, Any]:
        with self.counter.measure() as span:
            begun = time.perf_counter()
            outcome = work()
            seconds = time.perf_counter() - begun
        counts = span.counts
        step = Step(name, items, counts.total, seconds, dict(counts.by_name), note)
        self.steps.append(step)
        print(
            f"  {name:<17} {items:>6} items  {counts.total:>6} round trips  {seconds:8.2f} s",
            flush=True,
        )
        return step, outcome

    def campaign(self, campaign_id: str, campaign_type: str, recipients_field: Any) -> None:
        self.manager.create_campaign(
            {
                "_id": campaign_id,
                "name": campaign_id,
                "campaign_type": campaign_type,
                "template_id": "default",
                "recipients": recipients_field,
            }
        )

    def drain(self, campaign_id: str) -> dict[str, int]:
        totals = {"batches": 0, "claimed": 0, "written": 0, "sent": 0, "advanced": 0}
        while True:
            result = self.manager.process_due_conversations(campaign_id)
            totals["batches"] += 1
            if result.claimed == 0:
                return totals
            for key in ("claimed", "written", "sent", "advanced"):
                totals[key] += getattr(result, key)

    # ------------------------------------------------------------------ steps

    def init_inline(self) -> None:
        n = self.args.recipients
        self.campaign("bench-inline", "sales", recipients(n, "inline"))
        _, created = self.measure(
            "init_inline",
            n,
            lambda: self.manager.initialize_campaign_conversations("bench-inline"),
            note=f"init batch {self.args.init_batch_size}",
        )
        assert created == n, (created, n)

    def init_referenced(self) -> None:
        n = self.args.recipients
        collection = self.db["bench_recipients"]
        docs = [{"_id": i, "list": "bench", **r} for i, r in enumerate(recipients(n, "ref"))]
        for start in range(0, n, 5000):
            collection.insert_many(docs[start : start + 5000], ordered=False)
        self.campaign(
            "bench-referenced",
            "sales",
            {"collection": "bench_recipients", "query": {"list": "bench"}},
        )
        _, created = self.measure(
            "init_referenced",
            n,
            lambda: self.manager.initialize_campaign_conversations("bench-referenced"),
            note=f"init batch {self.args.init_batch_size}, cursor batch the same",
        )
        assert created == n, (created, n)

    def process_due(self) -> None:
        m = self.args.advance
        self.campaign("bench-sales", "sales", recipients(m, "sales"))
        self.manager.initialize_campaign_conversations("bench-sales")
        step, totals = self.measure(
            "process_due",
            m,
            lambda: self.drain("bench-sales"),
            note=f"batch {self.args.batch_size}; sends each one its first message",
        )
        step.extra = totals
        assert totals["written"] == m and totals["sent"] == m, totals

    def advance_replies(self) -> None:
        m = self.args.advance
        self.clock.advance(timedelta(hours=1))

        def reply_all() -> int:
            advanced = 0
            for i in range(m):
                result = self.manager.record_inbound_message(
                    "bench-sales", f"sales-{i:06d}", f"in-{i}", "YES"
                )
                advanced += result["current_stage"] == "consideration"
            return advanced

        _, advanced = self.measure(
            "advance_replies",
            m,
            reply_all,
            note="one reply per conversation: awareness -> consideration + its first message",
        )
        assert advanced == m, advanced

    def advance_batch(self) -> None:
        m = self.args.advance
        self.campaign("bench-onboarding", "onboarding", recipients(m, "onb"))
        self.manager.initialize_campaign_conversations("bench-onboarding")
        self.drain("bench-onboarding")  # welcome messages out
        # min_time_in_stage 3d: every conversation advances welcome -> setup.
        self.clock.advance(timedelta(days=3))
        step, totals = self.measure(
            "advance_batch",
            m,
            lambda: self.drain("bench-onboarding"),
            note=f"batch {self.args.batch_size}; welcome -> setup + its first message",
        )
        step.extra = totals
        assert totals["advanced"] == m, totals

    def advance_explicit(self) -> None:
        m = self.args.advance

        def advance_all() -> int:
            moved = 0
            for i in range(m):
                cid = conversation_id_for("bench-sales", f"sales-{i:06d}")
                state = self.manager.advance_conversation_stage(cid, "decision")
                moved += state["current_stage"] == "decision"
            return moved

        _, moved = self.measure(
            "advance_explicit",
            m,
            advance_all,
            note="advance_conversation_stage consideration -> decision, one by one",
        )
        assert moved == m, moved


def table(steps: list[Step]) -> str:
    header = f"{'step':<17} {'items':>6} {'round trips':>11} {'per item':>9} {'seconds':>8}"
    lines = [header, "-" * len(header)]
    for s in steps:
        lines.append(
            f"{s.name:<17} {s.items:>6} {s.round_trips:>11} {s.per_item:>9.3f} {s.seconds:>8.2f}"
        )
    lines.append("")
    for s in steps:
        commands = ", ".join(f"{k}={v}" for k, v in sorted(s.by_command.items()))
        extra = f" {s.extra}" if s.extra else ""
        lines.append(f"{s.name}: {commands}  ({s.note}){extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--uri", default=os.environ.get("MONGODB_URI"), help="default: $MONGODB_URI"
    )
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--advance", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=200, help="processing batch")
    parser.add_argument("--init-batch-size", type=int, default=1_000)
    parser.add_argument(
        "--steps",
        default="init_inline,init_referenced,process_due,advance_replies,advance_batch,"
        "advance_explicit",
        help="comma-separated subset of the steps",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.steps.split(",") if name.strip()]
    order = [
        "init_inline",
        "init_referenced",
        "process_due",
        "advance_replies",
        "advance_batch",
        "advance_explicit",
    ]
    unknown = set(wanted) - set(order)
    if unknown:
        parser.error(f"unknown steps: {sorted(unknown)}")
    needs = {"advance_replies": "process_due", "advance_explicit": "advance_replies"}
    for step, before in needs.items():
        if step in wanted and before not in wanted:
            parser.error(f"{step} needs {before}")

    configure_logging(level="WARNING")
    counter = CommandCounter()
    with server_uri(args.uri) as (uri, server_kind):
        client: pymongo.MongoClient[Doc] = pymongo.MongoClient(
            uri, tz_aware=True, tzinfo=UTC, event_listeners=[counter]
        )
        db_name = f"cw_bench_{uuid.uuid4().hex[:10]}"
        try:
            version = str(client.server_info().get("version", "?"))
            print(f"server: {server_kind}, version {version}; database {db_name}", flush=True)
            bench = Bench(client[db_name], counter, args)
            begun = time.perf_counter()
            for name in order:
                if name in wanted:
                    getattr(bench, name)()
            total = time.perf_counter() - begun
        finally:
            client.drop_database(db_name)
            client.close()

    print()
    print(table(bench.steps))
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "server": {"kind": server_kind, "version": version, "uri": redact_uri(uri)},
        "host": {
            "python": platform.python_version(),
            "pymongo": pymongo.version,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "parameters": {
            "recipients": args.recipients,
            "advance": args.advance,
            "batch_size": args.batch_size,
            "init_batch_size": args.init_batch_size,
        },
        "total_seconds": round(total, 3),
        "steps": [
            {**asdict(s), "per_item": round(s.per_item, 4), "seconds": round(s.seconds, 3)}
            for s in bench.steps
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"round_trips-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
