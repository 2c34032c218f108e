"""``make bench``: every figure of issue 10 beside its target and a baseline from the same run.

Sections (each a few small functions, through public entry points only):

- ``service``: CampaignManager calls in this process (bench/service_bench.py) with raw
  ``insert_many`` / ``bulk_write`` and a naive per-message loop on the same server; and
  always-on campaigns' enrollment and events (bench/always_on_bench.py);
- ``celery``: real ``celery worker`` processes on a real Redis broker (bench/celery_bench.py),
  with Celery's own no-op task cost on the same broker, and 1, 2, 4 worker processes;
- ``dispatch``: the webhook dispatcher at 0, 50, 200 ms provider latency beside an ideal
  httpx client on the same local receiver, and its round trips (bench/dispatch_bench.py);
- ``memory``: peak RSS of a process initializing a streamed audience (bench/init_rss.py);
- ``intents``: reply understanding on the held-out set bench/data/replies_heldout.tsv (the
  development sets' figures beside), its latency per reply and start-up
  (bench/intents_bench.py), beside the keyword classifier.

MongoDB: ``MONGODB_URI`` if set (throwaway databases ``cw_bench_*``, dropped at the end),
else a secantusdb started on a free port. Broker: ``BENCH_BROKER_URL`` (a Redis URL) if set,
else a private redis-server on a free port. Prints a Markdown table and writes JSON to
bench/results/ (gitignored).

    make bench                                 # default sizes (a few minutes)
    .venv/bin/python -m bench.run --full       # + 1,000,000 recipients for peak RSS
    .venv/bin/python -m bench.run --smoke      # tiny sizes (CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from bench import init_rss, intents_bench  # noqa: E402
from bench.always_on_bench import always_on_section  # noqa: E402
from bench.celery_bench import CeleryBench, Run  # noqa: E402
from bench.dispatch_bench import dispatch_section  # noqa: E402
from bench.figures import TARGETS, Figure, compare, fmt, table  # noqa: E402
from bench.service_bench import ServiceBench, Timed, claim_share, compare_and_sets  # noqa: E402
from bench.wire import Recorder, Server, mongo_server, redis_broker  # noqa: E402
from campaign_worker.adapters.logs import configure_logging, redact_uri  # noqa: E402
from campaign_worker.settings import Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SIZE_NAMES = ("recipients", "advance", "replies", "noop", "scale", "rss", "dispatch")
SIZES = {
    # recipients, advance, replies, noop tasks, conversations per scaling run, RSS sizes,
    # messages dispatched per latency
    "default": (10_000, 1_000, 1_000, 1_000, 1_000, [10_000, 50_000], 2_000),
    "full": (10_000, 1_000, 1_000, 1_000, 1_000, [10_000, 1_000_000], 2_000),
    "smoke": (1_200, 250, 30, 60, 250, [500, 1_500], 100),
}


def rate(items: int, seconds: float) -> float:
    return items / seconds if seconds else 0.0


def per_1000(count: int, items: int) -> float:
    return round(count * 1000 / items, 1)


# ----------------------------------------------------------------------------- service


def service_section(bench: ServiceBench, n: int, m: int) -> tuple[list[Figure], dict[str, Any]]:
    """Initialization and advancing in this process, with their raw baselines."""
    figures: list[Figure] = []
    inits: dict[str, Timed] = {}
    for kind in ("inline", "referenced"):
        print(f"  init {kind}: {n:,} recipients", flush=True)
        inits[kind] = bench.init(kind, n)
    print("  raw insert_many of the same documents", flush=True)
    raw_insert = bench.raw_insert_many("bench-init-inline")
    for kind, run in inits.items():
        figures.append(
            Figure(
                f"init_round_trips_per_1000_{kind}",
                per_1000(run.span.total, n),
                f"raw insert_many: {fmt(per_1000(raw_insert.span.total, n))}; "
                "one insert per recipient: 1,000",
                f"N = {n:,}, init batch {bench.settings.init_batch_size:,}",
                {"round_trips": run.span.total, "items": n, "by_command": run.span.by_name()},
            )
        )
    init_rate, raw_rate = rate(n, inits["inline"].seconds), rate(n, raw_insert.seconds)
    figures.append(
        Figure(
            "init_rate_over_raw_insert_many",
            round(init_rate / raw_rate, 2),
            f"raw insert_many {raw_rate:,.0f}/s; init {init_rate:,.0f}/s (inline), "
            f"{rate(n, inits['referenced'].seconds):,.0f}/s (referenced)",
            "same documents, same indexes, same batch size",
        )
    )

    print(f"  advance: {m:,} conversations by processing batches", flush=True)
    advance = bench.advance(m)
    statements = compare_and_sets(advance.span.commands)
    print(f"  raw bulk_write and naive loop: {len(statements):,} updates", flush=True)
    raw_bulk, naive = bench.raw_bulk_write(statements), bench.naive(statements)
    encode = bench.bson_encode_seconds()
    batch = bench.settings.process_batch_size
    adv_rate = rate(m, advance.seconds)
    bulk_rate, naive_rate = rate(len(statements), raw_bulk.seconds), rate(m, naive.seconds)
    share = claim_share(advance.spans, batch)
    step_cpu = advance.cpu / m
    figures += [
        Figure(
            "advance_round_trips_per_1000_service",
            per_1000(advance.span.total, m),
            f"naive: {fmt(per_1000(naive.span.total, m))}; raw bulk_write: "
            f"{fmt(per_1000(raw_bulk.span.total, m))}",
            f"process_due_conversations, batch {batch} (default)",
            {
                "round_trips": advance.span.total,
                "items": m,
                "by_command": advance.span.by_name(),
                "batches": len(advance.spans),
            },
        ),
        Figure(
            "claim_share_of_batch_db_time",
            round(share["share"], 2),
            f"claim round trips per batch: {share['claim_round_trips_per_batch']:.1f} "
            f"of {share['round_trips_per_batch']:.1f}",
            "server-reported command durations, full batches",
            share,
        ),
        Figure(
            "advance_rate_over_raw_bulk_write",
            round(adv_rate / bulk_rate, 2),
            f"raw bulk_write {bulk_rate:,.0f}/s; advance {adv_rate:,.0f}/s",
            "the compare-and-sets it sent, replayed on a copy",
        ),
        Figure(
            "advance_rate_over_naive",
            round(adv_rate / naive_rate, 2),
            f"naive {naive_rate:,.0f}/s ({per_1000(naive.span.total, m):,.0f} round trips "
            "per 1,000)",
            "naive applies the same updates, no evaluation",
        ),
        Figure(
            "cpu_per_step_over_bson_encode",
            round(step_cpu / encode, 1),
            f"bson.encode {encode * 1e6:,.0f} us; step {step_cpu * 1e6:,.0f} us CPU",
            "client CPU of process_due_conversations per conversation",
        ),
    ]
    raw = {"raw_bulk_rate": bulk_rate, "naive_round_trips_per_1000": per_1000(naive.span.total, m)}
    return figures, raw


# ----------------------------------------------------------------------------- celery


def bound(run: Run, cores: int) -> str:
    """Name what held a run back: the stand-in server, the machine's cores, or neither."""
    if run.server_cpu is not None and run.server_cpu / run.seconds >= 0.8:
        return "the stand-in server"
    total = run.worker_cpu + (run.server_cpu or 0.0)
    if total / run.seconds >= 0.8 * cores:
        return f"the machine's {cores} cores"
    return "neither saturated (latency)"


def celery_section(
    bench: CeleryBench, sizes: tuple[Any, ...], workers: list[int], raw: dict[str, Any]
) -> tuple[list[Figure], dict[str, Any]]:
    _, m, replies_n, noop_n, scale_m, *_ = sizes
    print(f"  no-op baseline: {noop_n:,} tasks, 1 worker process", flush=True)
    noop = bench.noop(noop_n)
    runs: dict[int, Run] = {}
    for concurrency in workers:
        items = m if concurrency == 1 else scale_m
        print(f"  advance through Celery: {items:,} conversations, -c {concurrency}", flush=True)
        runs[concurrency] = bench.advance(f"advance_c{concurrency}", items, concurrency)
    print(f"  replies through Celery: {replies_n:,}", flush=True)
    replies = bench.replies("replies", replies_n)
    one = runs[1]
    cores = os.cpu_count() or 1
    noop_cpu, work_cpu = noop.per_1000(noop.worker_cpu), one.per_1000(one.worker_cpu)
    rates = {c: rate(r.items, r.seconds) for c, r in runs.items()}
    busy = {
        c: "n/a" if r.server_cpu is None else f"{r.server_cpu / r.seconds:.0%}"
        for c, r in runs.items()
    }
    bounds = {c: bound(r, cores) for c, r in runs.items()}
    figures = [
        Figure(
            "advance_round_trips_per_1000_celery",
            per_1000(one.round_trips, one.items),
            f"naive: {fmt(raw['naive_round_trips_per_1000'])}",
            "poll + processing tasks, 1 worker process",
            {"round_trips": one.round_trips, "items": one.items, "by_command": one.mongo_commands},
        ),
        Figure(
            "reply_round_trips_per_1000_celery",
            per_1000(replies.round_trips, replies.items),
            f"naive: {fmt(raw['naive_round_trips_per_1000'])}",
            f"{replies.items:,} campaign_worker.record_inbound_message tasks",
            {
                "round_trips": replies.round_trips,
                "items": replies.items,
                "by_command": replies.mongo_commands,
            },
        ),
        Figure(
            "broker_messages_per_1000_advanced",
            per_1000(one.messages, one.items),
            "one task per conversation: 1,000",
            f"published: bench {one.published_by_bench}, worker {one.published_by_worker}",
            {"messages": one.messages, "items": one.items},
        ),
        Figure(
            "worker_cpu_per_1000_over_noop",
            round(work_cpu / noop_cpu, 2),
            f"no-op tasks: {noop_cpu:.2f} s CPU per 1,000; advance: {work_cpu:.2f} s "
            "per 1,000 conversations",
            "worker main + pool processes, /proc",
        ),
        Figure(
            "conversations_per_s_by_workers",
            " / ".join(f"{rates[c]:,.0f}" for c in workers),
            f"raw bulk_write {raw['raw_bulk_rate']:,.0f}/s; server busy "
            + " / ".join(busy[c] for c in workers),
            f"-c {' / '.join(map(str, workers))}; 2 / 1 = "
            f"{rates.get(2, 0) / rates[1]:.2f}; bound: " + " / ".join(bounds[c] for c in workers),
            {str(c): r.as_dict() for c, r in runs.items()},
        ),
    ]
    details = {"noop": noop.as_dict(), "replies": replies.as_dict()}
    return figures, details


# ----------------------------------------------------------------------------- memory


def memory_section(uri: str, db_name: str, sizes: list[int]) -> Figure:
    results = []
    for size in sizes:
        print(f"  peak RSS: initializing {size:,} streamed recipients", flush=True)
        results.append(init_rss.measure(uri, db_name, size))
        print(f"    {json.dumps(results[-1])}", flush=True)
    first, last = results[0], results[-1]
    return Figure(
        "init_peak_rss_mib",
        last["peak_rss_mib"],
        f"{first['recipients']:,} recipients: {first['peak_rss_mib']} MiB",
        f"at {last['recipients']:,} recipients ({last['seconds']} s); a fresh process "
        f"({last['rss_before_mib']} MiB before initializing), recipients collection",
        {"runs": results},
    )


# ----------------------------------------------------------------------------- intents


def intents_section() -> list[Figure]:
    """Quality on the held-out set, latency per reply, start-up; keyword classifier beside."""
    path, held_out = intents_bench.eval_path()
    print(f"  reply understanding on {path.relative_to(ROOT)}", flush=True)
    run = intents_bench.measure()
    detail = intents_bench.summary(run)
    figures, before = run.figures, run.baseline
    source = f"{run.replies:,} replies of {path.name}" + (
        " (held out)" if held_out else " (a development set: no held-out file)"
    )
    dev = "; ".join(
        f"dev {name.rsplit('/', 1)[-1]}: {fmt(found['accuracy'])}"
        for name, found in run.dev.items()
    )
    language, worst = intents_bench.worst_language(figures)
    before_language, before_worst = intents_bench.worst_language(before)
    languages = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in figures["by_language"].items())
    latency = detail["latency_ms"]
    startup = detail["startup_s"]
    review = f"needs_review {figures['needs_review_rate']:.3f}"
    return [
        Figure(
            "intents_accuracy",
            figures["accuracy"],
            f"keyword classifier: {fmt(before['accuracy'])}",
            f"{source}; {review}" + (f"; {dev}" if dev else ""),
            detail,
        ),
        Figure(
            "intents_opt_out_recall",
            figures["opt_out_recall"],
            f"keyword classifier: {fmt(before['opt_out_recall'])}",
            f"opt-out safety (opt-out or held): {fmt(figures['opt_out_safety'])}",
        ),
        Figure(
            "intents_false_opt_out_rate",
            figures["false_opt_out_rate"],
            f"keyword classifier: {before['false_opt_out_rate']:.3f}",
            f"{figures['false_opt_outs']} false opt-outs",
        ),
        Figure(
            "intents_worst_language_accuracy",
            worst if worst is not None else "n/a",
            f"keyword classifier: {before_language} {fmt(before_worst or 0.0)}",
            f"worst: {language}; {languages}",
        ),
        Figure(
            "intents_quoted_signed_accuracy",
            figures["quoted_or_signed"]["accuracy"] or "n/a",
            f"keyword classifier: {fmt(before['quoted_or_signed']['accuracy'] or 0.0)}",
            f"{figures['quoted_or_signed']['replies']} replies tagged quoted/signature",
        ),
        Figure(
            "intents_latency_p99_ms",
            latency["p99"],
            f"p50 {latency['p50']:.3f} ms, p90 {latency['p90']:.3f} ms",
            f"CPU time of {latency['samples']:,} classifications (extraction, rules, language, "
            f"model), pinned to one core; wall p50 {latency['wall_p50']:.3f} ms, "
            f"p99 {latency['wall_p99']:.3f} ms",
        ),
        Figure(
            "intents_startup_s",
            round(startup["import_s"] + startup["load_s"], 2),
            f"import of the worker {startup['import_s']:.2f} s",
            f"model + language detector load and a first reply {startup['load_s']:.2f} s",
        ),
    ]


# ----------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "pymongo": pymongo.version,
        "platform": platform.platform(),
        "cpu": model,
        "cpus": os.cpu_count(),
    }


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{'+dirty' if dirty else ''}" if head else "unknown"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="peak RSS at 1,000,000 recipients")
    size.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--uri", default=os.environ.get("MONGODB_URI"))
    parser.add_argument("--broker", default=os.environ.get("BENCH_BROKER_URL"))
    parser.add_argument("--sections", default="intents,service,dispatch,celery,memory")
    parser.add_argument("--workers", default="1,2,4", help="worker processes per scaling run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="print the docs/benchmarks.md table of a results file instead of running",
    )
    parser.add_argument(
        "--before", type=Path, metavar="JSON", help="with --render: a before column"
    )
    return parser.parse_args(argv)


def run_sections(args: argparse.Namespace, mongo: Server, broker: Server) -> dict[str, Any]:
    sizes = SIZES["smoke" if args.smoke else "full" if args.full else "default"]
    sections = set(args.sections.split(","))
    workers = [int(w) for w in args.workers.split(",")]
    recorder = Recorder()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo.uri, tz_aware=True, tzinfo=UTC, event_listeners=[recorder]
    )
    prefix = f"cw_bench_{uuid.uuid4().hex[:8]}"
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    raw: dict[str, Any] = {"raw_bulk_rate": 0.0, "naive_round_trips_per_1000": 0.0}
    try:
        if "intents" in sections:
            print("intents (reply understanding in this process):", flush=True)
            figures += intents_section()
        if "service" in sections:
            print("service (CampaignManager in this process):", flush=True)
            bench = ServiceBench(client[prefix], recorder, Settings(mongodb_db=prefix))
            found, raw = service_section(bench, sizes[0], sizes[1])
            figures += found
            print("  always-on: enrollment and events", flush=True)
            db, settings = client[f"{prefix}_always"], Settings(mongodb_db=f"{prefix}_always")
            figures += always_on_section(db, recorder, settings, sizes[2])
        if "dispatch" in sections:
            print("dispatch (the webhook dispatcher in this process):", flush=True)
            figures += dispatch_section(client, recorder, prefix, sizes[6])
        if "celery" in sections:
            print(f"celery (real workers, broker {redact_uri(broker.uri)}):", flush=True)
            celery = CeleryBench(broker, mongo, client, prefix)
            try:
                found, details["celery"] = celery_section(celery, sizes, workers, raw)
                figures += found
            finally:
                celery.close()
        if "memory" in sections:
            print("memory:", flush=True)
            figures.append(memory_section(mongo.uri, f"{prefix}_rss", sizes[5]))
    finally:
        # A server the bench started goes with its storage; dropping a million documents
        # on secantusdb would take minutes.
        for name in client.list_database_names() if mongo.pid is None else []:
            if name.startswith(prefix):
                client.drop_database(name)
        version = str(client.server_info().get("version", "?"))
        client.close()
    return {
        "figures": figures,
        "details": details,
        "sizes": dict(zip(SIZE_NAMES, sizes, strict=True)),
        "server_version": version,
    }


def order(figure: Figure) -> int:
    return list(TARGETS).index(figure.key)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.render:
        before = json.loads(args.before.read_text()) if args.before else None
        print(compare(json.loads(args.render.read_text()), before))
        return 0
    configure_logging("WARNING", "console")
    begun = time.perf_counter()
    with mongo_server(args.uri) as mongo, redis_broker(args.broker) as broker:
        print(f"MongoDB: {mongo.kind} {redact_uri(mongo.uri)}", flush=True)
        outcome = run_sections(args, mongo, broker)
    figures: list[Figure] = outcome["figures"]
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "server": {"kind": mongo.kind, "version": outcome["server_version"]},
        "broker": broker.kind,
        "sizes": outcome["sizes"],
        "seconds": round(time.perf_counter() - begun, 1),
        "figures": {f.key: f.as_dict() for f in sorted(figures, key=order)},
        "details": outcome["details"],
    }
    print()
    print(table(figures))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    missing = [key for key in TARGETS if key not in report["figures"]]
    print(f"\nwrote {path} ({report['seconds']} s)")
    if missing:
        print(f"not run: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
