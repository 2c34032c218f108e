"""Shared by the deployment-file tests: paths, the real tools (docker-compose, promtool) and
the PromQL helpers that check expressions against the agreed metric names."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "campaign-worker-dashboard.json"

APP = "campaign_worker.entrypoints.celery_app"
SCRAPE_JOB = "campaign-worker"

# The metric contract shared with campaign_worker/adapters/metrics.py: name -> (type, labels).
AGREED_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "campaign_worker_conversations_initialized": ("counter", ("campaign_type",)),
    "campaign_worker_stage_transitions": (
        "counter",
        ("campaign_type", "from_stage", "to_stage"),
    ),
    "campaign_worker_conversations_finished": ("counter", ("campaign_type", "outcome")),
    "campaign_worker_messages_sent": ("counter", ("channel",)),
    "campaign_worker_messages_received": ("counter", ("channel",)),
    "campaign_worker_task_duration_seconds": ("histogram", ("task",)),
    "campaign_worker_task_failures": ("counter", ("task", "reason")),
    "campaign_worker_batch_size": ("histogram", ("operation",)),
    "campaign_worker_mongo_operation_duration_seconds": ("histogram", ("command",)),
    "campaign_worker_dead_letters": ("counter", ("task", "reason")),
    "campaign_worker_poller_lag_seconds": ("gauge", ()),
    "campaign_worker_metrics_drift": ("counter", ("field",)),
}
# Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = frozenset({"job", "instance"})


def series_names(name: str, kind: str) -> set[str]:
    """The series names a metric of this type exposes (as prometheus-client names them)."""
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return {name}


# series name -> labels it may carry (besides job/instance)
ALLOWED_SERIES: dict[str, frozenset[str]] = {
    series: frozenset(labels) | ({"le"} if series.endswith("_bucket") else set())
    for name, (kind, labels) in AGREED_METRICS.items()
    for series in series_names(name, kind)
}
ALLOWED_SERIES["up"] = frozenset()
# Collected from the broker at scrape time (adapters/metrics.py: QueueDepthCollector).
ALLOWED_SERIES["campaign_worker_queue_depth"] = frozenset({"queue"})


# --------------------------------------------------------------------------- tools


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (Debian package `{package}`; .ci/run installs it)")
    return path


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


# --------------------------------------------------------------------------- PromQL helpers

_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)")

# Grafana's variables, replaced by what they stand for so the expression is plain PromQL.
GRAFANA_VARIABLES = {
    "${campaign_type:regex}": ".*",
    "$campaign_type": ".*",
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "6h",
}


def plain_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def referenced_series(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords or labels)."""
    text = _GROUPING.sub(" ", _MATCHERS.sub(" ", strip_strings(plain_promql(expr))))
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group(1)
        if word.lower() in _KEYWORDS or re.match(r"\s*\(", text[match.end() :]):
            continue  # a keyword or a function call
        names.add(word)
    return names


def referenced_labels(expr: str) -> set[str]:
    """Label names used in matchers and in by/without/on/ignoring clauses."""
    text = strip_strings(plain_promql(expr))
    labels: set[str] = set()
    for group in _GROUPING.finditer(text):
        labels.update(part.strip() for part in group.group(2).split(",") if part.strip())
    for block in _MATCHERS.finditer(text):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", block.group(1)))
    return labels


def check_expr_against_contract(expr: str) -> list[str]:
    """Problems with an expression: unknown metrics, labels no referenced metric has."""
    problems = []
    series = referenced_series(expr)
    if not series:
        problems.append(f"references no metric: {expr}")
    unknown = series - ALLOWED_SERIES.keys()
    if unknown:
        problems.append(f"unknown metric(s) {sorted(unknown)} in: {expr}")
    known_labels = TARGET_LABELS.union(*(ALLOWED_SERIES.get(s, frozenset()) for s in series))
    stray = referenced_labels(expr) - known_labels
    if stray:
        problems.append(f"label(s) {sorted(stray)} not on {sorted(series)} in: {expr}")
    return problems


# --------------------------------------------------------------------------- docker-compose


SECRETS = {"FLOWER_BASIC_AUTH": "ops:flower-test-secret", "GRAFANA_ADMIN_PASSWORD": "graf-secret"}


def compose_config(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = require_tool("docker-compose", "docker-compose")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ROOT), **extra}
    return run([binary, "-f", str(COMPOSE_FILE), "config"], cwd=ROOT, env=env)


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, published port, target port) of each port: docker-compose 1.29 prints
    "ip:published:target/tcp" strings when an ip is given, else mappings."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ip = str(port.get("host_ip", "0.0.0.0"))
            ports.append((ip, int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        ports.append((ip, int(parts[-2]), int(parts[-1])))
    return ports


def load_celeryconfig(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The repo's celeryconfig.py, as a container without CELERY_* overrides would load it."""
    for name in list(os.environ):
        if name.startswith("CELERY_"):
            monkeypatch.delenv(name)
    spec = importlib.util.spec_from_file_location(
        "_celeryconfig_under_test", ROOT / "celeryconfig.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def queues_of(command: list[str]) -> set[str]:
    assert "-Q" in command, f"no -Q in {command}"
    return set(command[command.index("-Q") + 1].split(","))


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)
