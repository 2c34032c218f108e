"""Memory of initialization: does it stay flat as the audience grows?

Initializes campaigns whose recipients live in a referenced collection (the shape for large
audiences) at several sizes and reports the peak of Python allocations (tracemalloc) in
this process during ``initialize_campaign_conversations``. Streaming in batches means the
peak depends on the batch size, not on the audience. Runs against ``MONGODB_URI`` when set,
otherwise against a secantusdb server it starts (see round_trips.py).

    .venv/bin/python bench/init_memory.py --sizes 5000 20000 40000
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pymongo  # noqa: E402

from bench.init_rss import fill  # noqa: E402
from bench.round_trips import START, server_uri  # noqa: E402
from campaign_worker.adapters.clock import ManualClock  # noqa: E402
from campaign_worker.adapters.logs import configure_logging  # noqa: E402
from campaign_worker.bootstrap import build_manager, ensure_indexes  # noqa: E402
from campaign_worker.settings import Settings  # noqa: E402


def measure(db: Any, size: int, batch: int) -> tuple[float, float]:
    """(peak MiB, seconds) of initializing ``size`` referenced recipients."""
    collection = f"recipients_{size}"
    fill(db, collection, size)
    manager = build_manager(
        db, Settings(mongodb_db=db.name, init_batch_size=batch), clock=ManualClock(START)
    )
    ensure_indexes(manager)
    campaign_id = f"mem-{size}"
    manager.create_campaign(
        {
            "_id": campaign_id,
            "name": "memory",
            "campaign_type": "sales",
            "template_id": "default",
            "recipients": {"collection": collection, "query": {}},
        }
    )
    tracemalloc.start()
    began = time.perf_counter()
    created = manager.initialize_campaign_conversations(campaign_id)
    seconds = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert created == size, (created, size)
    return peak / 2**20, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 40000])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--uri", default=None, help="default: MONGODB_URI or a secantusdb")
    args = parser.parse_args()
    configure_logging("WARNING", "console")
    import os

    with server_uri(args.uri or os.environ.get("MONGODB_URI")) as (uri, where):
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, tz_aware=True, tzinfo=UTC
        )
        name = f"cw_bench_mem_{uuid.uuid4().hex[:8]}"
        try:
            print(f"server: {where}; batch size {args.batch}")
            print(f"{'recipients':>10}  {'peak MiB':>9}  {'seconds':>8}")
            for size in args.sizes:
                peak, seconds = measure(client[name], size, args.batch)
                print(f"{size:>10}  {peak:>9.1f}  {seconds:>8.1f}", flush=True)
        finally:
            client.drop_database(name)
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
