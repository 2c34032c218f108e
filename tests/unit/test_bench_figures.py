"""The bench's bookkeeping, without servers: which commands are a claim or a
compare-and-set, the claim's share, the bound named, and the docs table."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bench.celery_bench import Run
from bench.figures import TARGETS, Figure, compare, fmt, table
from bench.run import bound
from bench.service_bench import claim_share, compare_and_sets, is_claim
from bench.wire import Command, Span


def update(collection: str, *statements: dict[str, Any]) -> Command:
    return Command("update", collection, {"update": collection, "updates": list(statements)})


def test_compare_and_sets_are_single_updates_filtered_on_version() -> None:
    cas = {"q": {"_id": "a", "version": 3}, "u": {"$set": {"x": 1}}}
    lease = {"q": {"status": "active"}, "u": {"$set": {"lease": 1}}, "multi": True}
    clear = {"q": {"_id": "a", "publish_token": "t"}, "u": {"$pullAll": {"unpublished": []}}}
    commands = [
        update("conversation_states", cas, clear),
        update("conversation_states", lease),
        update("campaigns", {"q": {"_id": "c", "version": 1}, "u": {}}),
        Command("find", "conversation_states", {"find": "conversation_states"}),
    ]
    assert compare_and_sets(commands) == [cas]


def test_a_claim_is_a_read_or_a_multi_update_of_the_conversations() -> None:
    assert is_claim(Command("find", "conversation_states", None))
    assert is_claim(Command("getMore", "conversation_states", None))
    assert is_claim(update("conversation_states", {"q": {}, "u": {}, "multi": True}))
    assert not is_claim(update("conversation_states", {"q": {"_id": 1, "version": 1}, "u": {}}))
    assert not is_claim(Command("find", "campaigns", None))
    assert not is_claim(Command("insert", "outbox", None))


def test_claim_share_counts_full_batches_only() -> None:
    def batch(claim: int, other: int) -> Span:
        return Span(
            [
                Command("find", "conversation_states", None, claim),
                Command("insert", "outbox", None, other),
            ]
        )

    spans = [
        (batch(30, 70), SimpleNamespace(claimed=200)),
        (batch(10, 30), SimpleNamespace(claimed=200)),
        (batch(99, 1), SimpleNamespace(claimed=50)),  # partial: left out
    ]
    share = claim_share(spans, 200)
    assert share["share"] == 40 / 140
    assert share["claim_round_trips_per_batch"] == 1.0
    assert share["round_trips_per_batch"] == 2.0
    assert share["batches"] == 2


def run(seconds: float, worker_cpu: float, server_cpu: float | None) -> Run:
    return Run("r", 1000, seconds, {}, {}, 1, worker_cpu, server_cpu, 1)


def test_the_bound_named() -> None:
    assert bound(run(10, 1, 9), cores=2) == "the stand-in server"
    assert bound(run(10, 17, None), cores=2) == "the machine's 2 cores"
    assert bound(run(10, 2, 3), cores=2) == "neither saturated (latency)"


def test_table_and_compare_show_every_figure_with_target() -> None:
    figures = [Figure("broker_messages_per_1000_advanced", 7.0, "one per conversation")]
    rendered = table(figures)
    for label, target in TARGETS.values():
        assert label in rendered and target in rendered
    assert "| **7.00** | <= 2 | one per conversation |" in rendered
    report = {
        "date": "d",
        "commit": "abc",
        "machine": {"cpus": 2, "cpu": "x", "platform": "p", "python": "3", "pymongo": "4"},
        "server": {"kind": "k", "version": "8"},
        "broker": "b",
        "sizes": {"rss": [10_000, 1_000_000]},
        "seconds": 1.0,
        "figures": {f.key: f.as_dict() for f in figures},
    }
    both = compare(report, report)
    assert "rss 10,000 / 1,000,000" in both
    assert "| broker messages per 1,000 advanced | <= 2 | 7.00 | **7.00** |" in both
    assert "(not run)" in both
    assert fmt(7000.0) == "7,000" and fmt(0.294) == "0.29" and fmt("a / b") == "a / b"
    assert fmt(0.0084) == "0.0084" and fmt(0.0) == "0.00"
