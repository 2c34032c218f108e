"""Reply understanding figures: quality on the held-out set, latency, start-up.

- quality: ``bench/data/replies_heldout.tsv`` (written apart from the training corpus and
  never seen while the classifier was built) through the same service call as
  ``campaign-worker intents eval``; beside it the keyword classifier the worker used
  before (built-in intents, the four languages, the packaged template's opt-out words)
  on the same replies, and the figures of the two development sets
  (``bench/data/replies_dev_external.tsv``, the first evaluation set, looked at while
  tuning; ``campaign_worker/data/intents/dev.tsv``);
- latency: each reply classified alone (extraction, rules, language, model, decision),
  timed one at a time in this process after a warm-up, over several passes, pinned to
  one core: the CPU time of each call (what the reply costs; the machine is shared, so
  wall time also counts other processes' turns) and, beside it, the wall time;
- start-up: a fresh process importing the worker's Celery app and loading the
  understanding (model and language detector) and classifying one reply.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVAL_SET = ROOT / "bench" / "data" / "replies_heldout.tsv"
DEV_EXTERNAL = ROOT / "bench" / "data" / "replies_dev_external.tsv"
DEV_SET = ROOT / "campaign_worker" / "data" / "intents" / "dev.tsv"
_HEADLINE = ("accuracy", "opt_out_recall", "false_opt_out_rate", "needs_review_rate")

_STARTUP = """
import json, time
begun = time.perf_counter()
import campaign_worker.entrypoints.celery_app  # noqa: F401  (what a worker imports)
from campaign_worker.bootstrap import build_understanding
from campaign_worker.settings import Settings
imported = time.perf_counter()
understanding = build_understanding(Settings())
understanding.warm_up()
understanding.understand("Yes please")
done = time.perf_counter()
print(json.dumps({"import_s": imported - begun, "load_s": done - imported}))
"""


@dataclass
class IntentsRun:
    path: Path
    replies: int
    figures: dict[str, Any]
    baseline: dict[str, Any]
    latencies_ms: list[float] = field(default_factory=list)  # CPU time per call
    wall_ms: list[float] = field(default_factory=list)
    startup: dict[str, float] = field(default_factory=dict)
    dev: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> headline figures

    def percentile(self, share: float, wall: bool = False) -> float:
        ordered = sorted(self.wall_ms if wall else self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def eval_path() -> tuple[Path, bool]:
    """The held-out set, or a development set when it is missing (True: held out)."""
    if EVAL_SET.exists():
        return EVAL_SET, True
    return (DEV_EXTERNAL, False) if DEV_EXTERNAL.exists() else (DEV_SET, False)


def _read(path: Path) -> list[Any]:
    from campaign_worker.domain.labelled_replies import parse_lines

    with path.open(encoding="utf-8") as handle:
        return parse_lines(handle)


def dev_figures(engine: Any, headline: Path) -> dict[str, dict[str, Any]]:
    """The headline figures of the development sets (not the headline file itself)."""
    from campaign_worker.service.understanding import evaluate

    found = {}
    for path in (DEV_EXTERNAL, DEV_SET):
        if path.exists() and path != headline:
            figures = evaluate(engine, _read(path))
            found[str(path.relative_to(ROOT))] = {
                **{key: figures[key] for key in _HEADLINE},
                "replies": figures["replies"],
                "worst_language": worst_language(figures),
                "quoted_or_signed": figures["quoted_or_signed"]["accuracy"],
            }
    return found


def startup() -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _STARTUP],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def keyword_baseline(replies: list[Any]) -> dict[str, Any]:
    """The figures of the keyword classifier the worker used before on the same replies."""
    from campaign_worker.adapters.template_files import TemplateFiles
    from campaign_worker.domain.intent_metrics import Scored, report
    from campaign_worker.domain.intents import LANGUAGES, compile_classifier

    packaged = TemplateFiles().get_template("default")
    keywords = compile_classifier(LANGUAGES, {}, packaged.opt_out_keywords)
    return report(
        [Scored(r.intent, keywords.classify(r.text), r.language, r.tags) for r in replies]
    )


def measure(passes: int = 3) -> IntentsRun:
    from campaign_worker.adapters.understanding import NgramReplyUnderstanding
    from campaign_worker.service.understanding import classify_all, scored_report

    path, _ = eval_path()
    replies = _read(path)
    engine = NgramReplyUnderstanding()
    engine.warm_up()
    figures = scored_report(list(classify_all(engine, replies)))
    latencies: list[float] = []
    wall: list[float] = []
    cpu, clock = time.thread_time_ns, time.perf_counter_ns
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        for _ in range(passes):
            for reply in replies:
                begun, begun_cpu = clock(), cpu()
                engine.understand(reply.text)
                latencies.append((cpu() - begun_cpu) / 1e6)
                wall.append((clock() - begun) / 1e6)
    finally:
        os.sched_setaffinity(0, affinity)
    return IntentsRun(
        path=path,
        replies=len(replies),
        figures=figures,
        baseline=keyword_baseline(replies),
        latencies_ms=latencies,
        wall_ms=wall,
        startup=startup(),
        dev=dev_figures(engine, path),
    )


def worst_language(figures: dict[str, Any]) -> tuple[str, float | None]:
    rows = figures["by_language"]
    if not rows:
        return "-", None
    name = min(rows, key=lambda lang: rows[lang]["accuracy"])
    return name, rows[name]["accuracy"]


def summary(run: IntentsRun) -> dict[str, Any]:
    """JSON detail: the figures without per-reply lists, the latency distribution."""
    return {
        "file": str(run.path.relative_to(ROOT)),
        "replies": run.replies,
        "figures": run.figures,
        "keyword_baseline": {
            k: run.baseline[k]
            for k in ("accuracy", "opt_out_recall", "false_opt_out_rate", "by_language")
        },
        "latency_ms": {
            "p50": round(statistics.median(run.latencies_ms), 4),
            "p90": round(run.percentile(0.90), 4),
            "p99": round(run.percentile(0.99), 4),
            "max": round(max(run.latencies_ms), 4),
            "samples": len(run.latencies_ms),
            "wall_p50": round(statistics.median(run.wall_ms), 4),
            "wall_p99": round(run.percentile(0.99, wall=True), 4),
        },
        "startup_s": {k: round(v, 3) for k, v in run.startup.items()},
        "development_sets": run.dev,
    }


__all__ = ["EVAL_SET", "IntentsRun", "eval_path", "measure", "summary", "worst_language"]
