"""In-process measurements through ``CampaignManager``'s public methods, each beside a raw
baseline on the same server in the same run.

- initialization (inline and referenced recipients) vs ``insert_many`` of the very
  documents it created, into a collection with the same indexes;
- advancing by processing batches at the default batch size vs ``bulk_write`` of the very
  compare-and-set updates it sent (captured from the wire), and vs a naive per-message loop
  (one ``find`` + one ``update`` per conversation) applying the same updates;
- the claim's share of a batch's DB time (server-reported command durations);
- client CPU per conversation step vs ``bson.encode`` of the stepped document.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from pymongo import IndexModel, UpdateOne

from bench.wire import Command, Doc, Recorder, Span
from campaign_worker.adapters.clock import ManualClock
from campaign_worker.bootstrap import build_manager, ensure_indexes
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.settings import Settings

CONVERSATIONS = "conversation_states"
READS = {"find", "getMore", "aggregate"}


def recipients(n: int, prefix: str) -> Iterator[Doc]:
    for i in range(n):
        yield {"user_id": f"{prefix}-{i:07d}", "attributes": {"first_name": f"Ann{i}"}}


@dataclass
class Timed:
    """Commands, wall seconds and client CPU seconds of one measured block."""

    span: Span
    seconds: float
    cpu: float
    outcome: Any = None
    spans: list[tuple[Span, Any]] = field(default_factory=list)


@dataclass
class ServiceBench:
    db: Any
    recorder: Recorder
    settings: Settings
    clock: ManualClock = field(default_factory=lambda: ManualClock(datetime.now(UTC)))
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.manager: CampaignManager = build_manager(self.db, self.settings, clock=self.clock)
        ensure_indexes(self.manager)

    # ------------------------------------------------------------------ helpers

    def timed(self, work: Callable[[], Any], keep_bodies: bool = False) -> Timed:
        with self.recorder.span(keep_bodies) as span:
            cpu, begun = time.process_time(), time.perf_counter()
            outcome = work()
            seconds, cpu = time.perf_counter() - begun, time.process_time() - cpu
        return Timed(span, seconds, cpu, outcome)

    def create(self, campaign_id: str, campaign_type: str, audience: Any) -> None:
        self.manager.create_campaign(
            {
                "_id": campaign_id,
                "name": campaign_id,
                "campaign_type": campaign_type,
                "template_id": "default",
                "recipients": audience,
            }
        )

    def documents(self, campaign_id: str) -> list[Doc]:
        return list(self.db[CONVERSATIONS].find({"campaign_id": campaign_id}).sort("_id", 1))

    def twin(self, name: str, docs: list[Doc] | None = None) -> Any:
        """A collection with the conversations' indexes (and ``docs``, if given)."""
        self.db.drop_collection(name)
        models = [
            IndexModel(
                list(spec["key"]),
                name=index_name,
                **{k: v for k, v in spec.items() if k not in {"key", "v", "ns"}},
            )
            for index_name, spec in self.db[CONVERSATIONS].index_information().items()
            if index_name != "_id_"
        ]
        self.db[name].create_indexes(models)
        if docs:
            for begin in range(0, len(docs), 1000):
                self.db[name].insert_many(docs[begin : begin + 1000], ordered=False)
        return self.db[name]

    # ------------------------------------------------------------------ initialization

    def init(self, kind: str, n: int) -> Timed:
        """initialize_campaign_conversations over n inline or referenced recipients."""
        campaign_id = f"bench-init-{kind}"
        if kind == "inline":
            audience: Any = list(recipients(n, kind))
        else:
            source = self.db["bench_recipients"]
            batch: list[Doc] = []
            for i, recipient in enumerate(recipients(n, kind)):
                batch.append({"_id": i, "list": "bench", **recipient})
                if len(batch) == 5000:
                    source.insert_many(batch, ordered=False)
                    batch = []
            if batch:
                source.insert_many(batch, ordered=False)
            audience = {"collection": "bench_recipients", "query": {"list": "bench"}}
        self.create(campaign_id, "sales", audience)
        run = self.timed(lambda: self.manager.initialize_campaign_conversations(campaign_id))
        assert run.outcome == n, (kind, run.outcome, n)
        self.results[f"init_{kind}"] = run
        return run

    def raw_insert_many(self, campaign_id: str) -> Timed:
        """insert_many of the documents initialization created, in its batch size."""
        docs = self.documents(campaign_id)
        target = self.twin("bench_raw_insert")
        size = self.settings.init_batch_size

        def insert() -> int:
            for begin in range(0, len(docs), size):
                target.insert_many(docs[begin : begin + size], ordered=False)
            return len(docs)

        run = self.timed(insert)
        self.results["raw_insert_many"] = run
        return run

    # ------------------------------------------------------------------ advancing

    def prepare_advance(self, m: int, campaign_id: str = "bench-advance") -> list[Doc]:
        """m onboarding conversations, welcome sent, 3 days later: each one is due to
        advance welcome -> setup (min_time_in_stage) and send setup's first message."""
        self.create(campaign_id, "onboarding", list(recipients(m, "adv")))
        self.manager.initialize_campaign_conversations(campaign_id)
        while self.manager.process_due_conversations(campaign_id).claimed:
            pass
        self.clock.advance(timedelta(days=3))
        return self.documents(campaign_id)

    def advance(self, m: int) -> Timed:
        """process_due_conversations until nothing is due; one span per call."""
        campaign_id = "bench-advance"
        before = self.prepare_advance(m, campaign_id)
        self.twin("bench_raw_bulk", before)
        self.twin("bench_naive", before)
        spans: list[tuple[Span, Any]] = []

        def drain() -> int:
            advanced = 0
            while True:
                with self.recorder.span(keep_bodies=True) as span:
                    result = self.manager.process_due_conversations(campaign_id)
                spans.append((span, result))
                advanced += result.advanced
                if result.claimed == 0:
                    return advanced

        cpu, begun = time.process_time(), time.perf_counter()
        advanced = drain()
        seconds, cpu = time.perf_counter() - begun, time.process_time() - cpu
        run = Timed(Span([c for s, _ in spans for c in s.commands]), seconds, cpu, advanced)
        run.spans = spans
        assert advanced == m, (advanced, m)
        self.results["advance"] = run
        return run

    def raw_bulk_write(self, statements: list[Doc]) -> Timed:
        target = self.db["bench_raw_bulk"]
        size = self.settings.process_batch_size

        def write() -> int:
            matched = 0
            for begin in range(0, len(statements), size):
                ops = [UpdateOne(s["q"], s["u"]) for s in statements[begin : begin + size]]
                matched += target.bulk_write(ops, ordered=False).matched_count
            return matched

        run = self.timed(write)
        assert run.outcome == len(statements), (run.outcome, len(statements))
        self.results["raw_bulk_write"] = run
        return run

    def naive(self, statements: list[Doc]) -> Timed:
        """The per-message way: read each conversation, then write it (same updates)."""
        target = self.db["bench_naive"]

        def one_by_one() -> int:
            matched = 0
            for s in statements:
                doc = target.find_one({"_id": s["q"]["_id"]})
                assert doc is not None
                matched += target.update_one(s["q"], s["u"]).matched_count
            return matched

        run = self.timed(one_by_one)
        assert run.outcome == len(statements), (run.outcome, len(statements))
        self.results["naive"] = run
        return run

    def bson_encode_seconds(self, campaign_id: str = "bench-advance") -> float:
        """Mean seconds of one bson.encode of a stepped conversation document."""
        docs = self.documents(campaign_id)
        rounds, begun = 0, time.process_time()
        while True:
            for doc in docs:
                bson.encode(doc)
            rounds += 1
            spent = time.process_time() - begun
            if spent > 0.3:
                return spent / (rounds * len(docs))


def compare_and_sets(commands: list[Command]) -> list[Doc]:
    """The conversation updates filtered on ``version``: the state writes of the batch."""
    statements = []
    for command in commands:
        if command.name == "update" and command.collection == CONVERSATIONS and command.body:
            for statement in command.body.get("updates", []):
                if "version" in statement.get("q", {}) and not statement.get("multi"):
                    statements.append(statement)
    return statements


def is_claim(command: Command) -> bool:
    """Reads of the conversations, or a multi-document update of them (a lease)."""
    if command.collection != CONVERSATIONS:
        return False
    if command.name in READS:
        return True
    updates = (command.body or {}).get("updates", [])
    return command.name == "update" and any(s.get("multi") for s in updates)


def claim_share(spans: list[tuple[Span, Any]], batch_size: int) -> dict[str, float]:
    """Over full batches: claim DB time / all DB time, and claim commands per batch."""
    full = [span for span, result in spans if result.claimed >= batch_size]
    if not full:
        full = [span for span, result in spans if result.claimed]
    claim = sum(c.micros for span in full for c in span.commands if is_claim(c))
    total = sum(span.micros() for span in full)
    commands = sum(1 for span in full for c in span.commands if is_claim(c))
    return {
        "share": claim / total if total else 0.0,
        "claim_round_trips_per_batch": commands / len(full) if full else 0.0,
        "round_trips_per_batch": sum(s.total for s in full) / len(full) if full else 0.0,
        "batches": float(len(full)),
    }
