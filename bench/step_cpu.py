"""CPU per conversation step, as a ratio to ``bson.encode`` of the same document.

A processing step is what a batch does per conversation between its read and its write:
validate the document read (``ConversationState.model_validate``), ``run`` the
progression, build the compare-and-set update (``state_update``). The documents are made
by a real campaign on mongomock-ng and decoded the way the worker's client decodes them
(tz-aware UTC), so nothing here touches a server; process time, best of ``--repeat``.

    .venv/bin/python bench/step_cpu.py [--steps 2000] [--repeat 3] [--profile SCENARIO]

Scenarios: ``first_send`` (a fresh conversation gets its first message),
``wait_history`` (8 messages in its history, nothing due yet: it only waits),
``fail_history`` (the same, a month later: it fails after too many follow-ups).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bson  # noqa: E402
import mongomock_ng  # noqa: E402
from bson.codec_options import CodecOptions  # noqa: E402

from campaign_worker.adapters.clock import ManualClock  # noqa: E402
from campaign_worker.adapters.logs import configure_logging  # noqa: E402
from campaign_worker.adapters.mongo_updates import state_update  # noqa: E402
from campaign_worker.bootstrap import build_manager  # noqa: E402
from campaign_worker.domain.documents import ConversationState  # noqa: E402
from campaign_worker.domain.progression import run  # noqa: E402
from campaign_worker.settings import Settings  # noqa: E402

Doc = dict[str, Any]
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
# Dates as the worker's client returns them (tz-aware UTC).
AS_READ: CodecOptions[Doc] = CodecOptions(tz_aware=True, tzinfo=UTC)
N = 50


def scenarios() -> tuple[dict[str, tuple[list[Doc], datetime]], Any, Any]:
    """Documents (as the worker reads them) and the time of each scenario."""
    db: Any = mongomock_ng.MongoClient(tz_aware=True).db
    clock = ManualClock(START)
    manager = build_manager(db, Settings(), clock=clock)
    recipients = [{"user_id": f"u-{i:04d}", "attributes": {"first_name": "Ann"}} for i in range(N)]
    manager.create_campaign(
        {
            "_id": "cpu",
            "name": "cpu",
            "campaign_type": "sales",
            "template_id": "default",
            "recipients": recipients,
        }
    )
    manager.initialize_campaign_conversations("cpu")

    def snapshot() -> list[Doc]:
        return [
            bson.decode(bson.encode(doc), codec_options=AS_READ)
            for doc in db.conversation_states.find()
        ]

    found = {"first_send": (snapshot(), clock.now())}
    manager.process_due_conversations("cpu")
    for round_ in range(3):
        clock.advance(timedelta(hours=2))
        for i in range(N):
            manager.record_inbound_message("cpu", f"u-{i:04d}", f"in-{round_}-{i}", "the price?")
        clock.advance(timedelta(days=3))
        manager.process_due_conversations("cpu")
    clock.advance(timedelta(days=3))
    found["wait_history"] = (snapshot(), clock.now())
    found["fail_history"] = (snapshot(), clock.now() + timedelta(days=30))
    campaign = manager.campaign("cpu")
    template, type_template = manager.type_template(campaign)
    return found, template, type_template


def best(work: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        begun = time.process_time()
        work()
        times.append(time.process_time() - begun)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", help="print a cProfile of this scenario's steps")
    args = parser.parse_args(argv)
    configure_logging(level="WARNING")
    found, template, type_template = scenarios()
    print(f"{'scenario':<14} {'encode us':>9} {'step us':>8} {'ratio':>6}")
    for name, (docs, now) in found.items():

        def encode(docs: list[Doc] = docs) -> None:
            for i in range(args.steps):
                bson.encode(docs[i % N])

        def step(docs: list[Doc] = docs, now: datetime = now) -> None:
            for i in range(args.steps):
                state = ConversationState.model_validate(docs[i % N])
                new, _ = run(state, template, type_template, now)
                state_update(state, new, "token", now)

        encoded = best(encode, args.repeat) / args.steps * 1e6
        stepped = best(step, args.repeat) / args.steps * 1e6
        print(f"{name:<14} {encoded:>9.1f} {stepped:>8.1f} {stepped / encoded:>6.2f}")
        if args.profile == name:
            profile = cProfile.Profile()
            profile.runcall(step)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
