"""Peak RSS of a process that initializes a campaign whose audience is streamed from a
recipients collection (``bench/run.py`` measures it; also runnable alone).

The parent inserts N recipients, then runs ``python -m bench.init_rss child ...`` in a
fresh process that only builds a CampaignManager, calls
``initialize_campaign_conversations`` and reports its peak resident set size (``VmHWM``,
its own high-water mark) and its RSS before initializing. Streaming in batches means the
peak depends on the batch size, not on N: compare a small N with a large one.

    .venv/bin/python -m bench.init_rss --sizes 10000 1000000   # MONGODB_URI or a secantusdb
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pymongo  # noqa: E402

from bench.wire import mongo_server  # noqa: E402


def fill(db: Any, collection: str, size: int) -> None:
    """``size`` recipients in ``collection``, inserted 5,000 at a time."""
    for begin in range(0, size, 5000):
        db[collection].insert_many(
            [
                {
                    "_id": f"r{i:08d}",
                    "user_id": f"user-{i:08d}",
                    "attributes": {"first_name": "Ann", "plan": "pro"},
                    "timezone": "UTC",
                }
                for i in range(begin, min(begin + 5000, size))
            ],
            ordered=False,
        )


def measure(uri: str, db_name: str, size: int) -> dict[str, Any]:
    """Peak RSS (MiB) and seconds of a child process initializing ``size`` recipients."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri)
    try:
        fill(client[db_name], f"recipients_{size}", size)
    finally:
        client.close()
    argv = [sys.executable, "-m", "bench.init_rss", "child", uri, db_name, str(size)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"init_rss child failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB. VmHWM is this process image's own peak:
    unlike ru_maxrss it does not inherit the RSS of the parent that spawned it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)  # kB
    raise LookupError(field)


def child(uri: str, db_name: str, size: int) -> None:
    from campaign_worker.adapters.clock import ManualClock
    from campaign_worker.adapters.logs import configure_logging
    from campaign_worker.bootstrap import build_manager, ensure_indexes
    from campaign_worker.settings import Settings

    configure_logging("WARNING", "console")
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        uri, tz_aware=True, tzinfo=UTC
    )
    db = client[db_name]
    manager = build_manager(db, Settings(mongodb_db=db_name), clock=ManualClock(datetime.now(UTC)))
    ensure_indexes(manager)
    campaign_id = f"rss-{size}"
    manager.create_campaign(
        {
            "_id": campaign_id,
            "name": "memory",
            "campaign_type": "sales",
            "template_id": "default",
            "recipients": {"collection": f"recipients_{size}", "query": {}},
        }
    )
    before = status_mib("VmRSS")
    begun = time.perf_counter()
    created = manager.initialize_campaign_conversations(campaign_id)
    seconds = time.perf_counter() - begun
    result = {
        "recipients": size,
        "created": created,
        "seconds": round(seconds, 2),
        "rss_before_mib": before,
        "peak_rss_mib": status_mib("VmHWM"),
    }
    print(json.dumps(result))
    client.close()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--uri", default=os.environ.get("MONGODB_URI"))
    args = parser.parse_args()
    with mongo_server(args.uri) as server:
        db_name = f"cw_bench_rss_{uuid.uuid4().hex[:8]}"
        try:
            for size in args.sizes:
                print(json.dumps(measure(server.uri, db_name, size)), flush=True)
        finally:
            if server.pid is None:  # a server the bench started goes with its storage
                client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.uri)
                client.drop_database(db_name)
                client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
