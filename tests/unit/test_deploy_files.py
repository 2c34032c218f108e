"""Deployment files: docker-compose.yml, Dockerfile, Prometheus config and alert rules, Grafana.

No Docker engine is needed: the compose file is validated and normalised by the Debian
``docker-compose`` client (``config``), the Prometheus files by ``promtool`` (including its rule
unit tests in deploy/prometheus/tests/), and the dashboard's PromQL is parsed by promtool and
checked against the agreed metric names and the metrics campaign_worker actually defines.
Tests that need a missing tool skip and say which Debian package provides it (.ci/run
installs them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pymongo import uri_parser

from campaign_worker.settings import Settings

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


class TestPromqlHelpers:
    """The checker itself must catch what it is there to catch."""

    def test_finds_metrics_not_functions_keywords_or_labels(self) -> None:
        expr = (
            "histogram_quantile(0.95, sum by (le, task) "
            '(rate(campaign_worker_task_duration_seconds_bucket{task=~"a|b"}[$__rate_interval])))'
            " / on (task) group_left sum without (reason) "
            "(campaign_worker_task_failures_total offset 5m) > 0 and on () vector(1)"
        )
        assert referenced_series(expr) == {
            "campaign_worker_task_duration_seconds_bucket",
            "campaign_worker_task_failures_total",
        }
        assert referenced_labels(expr) == {"le", "task", "reason"}

    def test_rejects_unknown_metric_and_stray_label(self) -> None:
        assert check_expr_against_contract("rate(campaign_worker_messages_sent_total[5m])") == []
        problems = check_expr_against_contract("rate(campaign_worker_message_sent_total[5m])")
        assert problems and "unknown metric" in problems[0]
        problems = check_expr_against_contract(
            "sum by (outcome) (rate(campaign_worker_messages_sent_total[5m]))"
        )
        assert problems and "outcome" in problems[0]
        assert check_expr_against_contract("vector(1)") == ["references no metric: vector(1)"]


# --------------------------------------------------------------------------- docker-compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config`: validated, interpolated and normalised by the real client."""
    require_tool("docker-compose", "docker-compose")
    # A clean environment, so host variables (e.g. REDIS_HOST_PORT) cannot change the result.
    # The two secrets it takes from the environment are given (see test_secrets_...).
    result = compose_config(SECRETS)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


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


def test_compose_declares_the_full_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"mongodb", "redis", "worker", "beat", "flower", "prometheus", "grafana"} <= set(
        services
    )
    # The monitoring pair is optional (a compose profile); the core stack is not.
    for name in ("mongodb", "redis", "worker", "beat", "flower"):
        assert "profiles" not in services[name], name
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        test = check["test"]
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name


def test_mongodb_is_a_one_node_replica_set_the_workers_connect_to(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    mongod = command_of(services["mongodb"])
    assert mongod[0] == "mongod" and "--bind_ip_all" in mongod
    replica_set = mongod[mongod.index("--replSet") + 1]

    # The healthcheck initiates the set when rs.status() fails, with this node as its one
    # member under its compose service name, and is only healthy once it is primary.
    check = healthcheck_text(services["mongodb"])
    assert "rs.status()" in check and "catch" in check
    initiate = re.search(r"rs\.initiate\(\{_id:\s*'([^']+)',\s*members:\s*\[(.*?)\]\}\)", check)
    assert initiate, check
    assert initiate.group(1) == replica_set
    members = re.findall(r"host:\s*'([^']+)'", initiate.group(2))
    assert members == ["mongodb:27017"]
    assert "isWritablePrimary" in check and "quit(1)" in check

    for name in ("worker", "beat"):
        uri = services[name]["environment"]["MONGODB_URI"]
        parsed = uri_parser.parse_uri(uri)
        assert parsed["nodelist"] == [("mongodb", 27017)], name
        assert parsed["options"]["replicaSet"] == replica_set, name
        assert parsed["options"].get("retryWrites", True) is True, name


def test_worker_and_beat_run_the_agreed_celery_commands(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    worker = command_of(services["worker"])
    assert worker[:4] == ["celery", "-A", APP, "worker"]
    assert {"polling", "initialization", "processing", "inbound"} <= queues_of(worker)
    # ...and every queue celeryconfig routes to, the default one included: a queue nobody
    # consumes would silently swallow create_campaign and the other unrouted tasks.
    celeryconfig = load_celeryconfig(monkeypatch)
    declared = {queue.name for queue in celeryconfig.task_queues}
    routed = {route["queue"] for route in celeryconfig.task_routes.values()}
    assert declared | routed | {celeryconfig.task_default_queue} <= queues_of(worker)

    beat = command_of(services["beat"])
    assert beat[:4] == ["celery", "-A", APP, "beat"]
    schedule = next(a.split("=", 1)[1] for a in beat if a.startswith("--schedule="))
    mounts = [
        v["target"] if isinstance(v, dict) else v.split(":")[1] for v in services["beat"]["volumes"]
    ]
    assert str(Path(schedule).parent) in mounts, "beat's schedule file must be on a volume"


def duration_seconds(text: str) -> float:
    """A compose duration (``330s``, ``5m30s``, ``1h``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(number) * scale[unit] for number, unit in parts)


def test_worker_stop_grace_period_outlasts_the_task_time_limit(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL must not land before a running task hits its own hard time limit."""
    assert duration_seconds("5m30s") == 330
    grace = duration_seconds(str(compose["services"]["worker"]["stop_grace_period"]))
    assert grace > load_celeryconfig(monkeypatch).task_time_limit


def test_worker_and_beat_healthchecks_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker"]["healthcheck"]["test"] == [
        "CMD-SHELL",
        # `$$` is compose's escape: the container's shell expands its own $HOSTNAME.
        "campaign-worker health --worker worker@$${HOSTNAME}",
    ]
    assert "--hostname=worker@%h" in services["worker"]["command"]
    assert services["beat"]["healthcheck"]["test"] == [
        "CMD",
        "campaign-worker",
        "health",
        "--skip-worker",
    ]
    for name in ("worker", "beat"):
        service = services[name]
        assert service["depends_on"] == {
            "mongodb": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name
        assert service["build"]["context"] == str(ROOT), name
    # `campaign-worker` is the console script the package installs in the image.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(
        r'^campaign-worker\s*=\s*"campaign_worker\.entrypoints\.cli:main"', pyproject, re.M
    )


def test_worker_environment_is_valid_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "beat"):
        env = services[name]["environment"]
        assert env["MONGODB_URI"] == "mongodb://mongodb:27017/?replicaSet=rs0"
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert env["METRICS_PORT"] == "9808"
        assert env["LOG_FORMAT"] == "json"
        assert env["MONGODB_DB"]
        # Every value passes the same validation the worker applies at start.
        settings = Settings(**{key.lower(): value for key, value in env.items()})
        assert settings.metrics_port == 9808 and settings.log_format == "json"
        assert settings.mongodb_db == env["MONGODB_DB"]
    assert {"9808"} <= {str(p) for p in services["worker"]["expose"]}


def test_urls_point_at_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    broker = services["worker"]["environment"]["CELERY_BROKER_URL"]
    assert broker.split("://")[1].split(":")[0] in services
    assert services["beat"]["environment"]["CELERY_BROKER_URL"] == broker
    # Flower watches the same broker the worker consumes from.
    assert f"--broker={broker}" in command_of(services["flower"])


def test_flower_dashboard_on_port_5555(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    command = command_of(flower)
    assert "flower" in command and "--port=5555" in command
    assert ("127.0.0.1", 5555, 5555) in published(flower)
    assert "5555/healthcheck" in healthcheck_text(flower)


def test_every_published_port_is_on_localhost_only(compose: dict[str, Any]) -> None:
    ports = {name: published(service) for name, service in compose["services"].items()}
    assert {"flower", "prometheus", "grafana"} <= {name for name, p in ports.items() if p}
    for name, mapped in ports.items():
        for ip, _, _ in mapped:
            assert ip == "127.0.0.1", f"{name} publishes a port on {ip}"


def test_flower_asks_for_credentials_from_the_environment(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    assert not any("basic" in arg for arg in command_of(flower))  # not on a command line


def test_grafana_admin_password_from_the_environment(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS["GRAFANA_ADMIN_PASSWORD"]


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_secrets_have_no_default_in_the_file(missing: str) -> None:
    given = {name: value for name, value in SECRETS.items() if name != missing}
    result = compose_config(given)
    assert result.returncode != 0
    assert missing in result.stderr
    text = COMPOSE_FILE.read_text()
    assert re.search(rf"\$\{{{missing}:\?", text), f"{missing} must be required (:?)"
    assert "admin}" not in text and "-admin" not in text


def test_prometheus_has_no_lifecycle_api(compose: dict[str, Any]) -> None:
    command = command_of(compose["services"]["prometheus"])
    assert not any("enable-lifecycle" in arg for arg in command)
    assert not any("enable-admin-api" in arg for arg in command)


def test_prometheus_and_grafana_mount_the_deploy_files(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def mounts(name: str) -> dict[str, str]:
        result = {}
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            result[target] = source
        return result

    prometheus = mounts("prometheus")
    assert prometheus["/etc/prometheus"] == str(PROMETHEUS_DIR)
    assert "--config.file=/etc/prometheus/prometheus.yml" in command_of(services["prometheus"])
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == str(GRAFANA_DIR / "provisioning")
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "campaign-worker.yml").read_text()
    )
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert grafana[f"{dashboards_dir}/{DASHBOARD.name}"] == str(DASHBOARD)
    datasource = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_every_worker_on_its_metrics_port(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs[SCRAPE_JOB]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    worker = compose["services"]["worker"]
    assert str(sd["port"]) == worker["environment"]["METRICS_PORT"]
    assert str(sd["port"]) in {str(p) for p in worker["expose"]}


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in lines]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_dockerfile_runtime_stage() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    ops = [op for op, _ in stage]
    # The package is installed with pip (from the wheels `pip wheel .` built in stage one).
    assert any(op == "RUN" and "pip install" in a and "campaign-worker" in a for op, a in stage)
    assert any(
        op == "RUN" and re.search(r"pip wheel .*\s\.$", a) for op, a in dockerfile_instructions()
    )
    assert ("COPY", "celeryconfig.py /app/celeryconfig.py") in stage
    env = " ".join(a for op, a in stage if op == "ENV")
    assert "PYTHONPATH=/app" in env
    # A non-root user, set before the command runs.
    user = [a for op, a in stage if op == "USER"]
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert ops.index("USER") < ops.index("CMD")


def test_dockerfile_default_command_is_the_worker(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cmd = json.loads(next(a for op, a in final_stage() if op == "CMD"))
    assert cmd[:4] == ["celery", "-A", APP, "worker"]
    assert queues_of(cmd) == queues_of(command_of(compose["services"]["worker"]))
    healthcheck = next(a for op, a in final_stage() if op == "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["campaign-worker", "health"]')


def docker_py_python() -> str:
    """The interpreter of the Debian docker-compose client, which ships docker-py."""
    binary = require_tool("docker-compose", "docker-compose")
    shebang = Path(binary).read_text(errors="replace").splitlines()[0]
    python = shebang[2:].strip().split()[0] if shebang.startswith("#!") else sys.executable
    if run([python, "-c", "import docker.utils.build"]).returncode != 0:
        pytest.skip(f"docker-py not importable by {python}")
    return python


def build_context(root: Path) -> set[str]:
    """The files Docker would send for ``root``, by docker-py's implementation of the rules."""
    script = (
        "import json, sys; from docker.utils.build import exclude_paths; "
        "patterns = [l.strip() for l in open(sys.argv[1]) "
        "if l.strip() and not l.lstrip().startswith('#')]; "
        "print(json.dumps(sorted(exclude_paths('.', patterns))))"
    )
    result = run([docker_py_python(), "-c", script, str(ROOT / ".dockerignore")], cwd=root)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_build_context_holds_what_the_image_needs() -> None:
    context = build_context(ROOT)
    assert {"pyproject.toml", "celeryconfig.py", "constraints.txt", "Dockerfile"} <= context
    assert "README.md" in context or not (ROOT / "README.md").exists()
    package = {
        str(path.relative_to(ROOT))
        for pattern in ("*.py", "*.yaml", "py.typed")
        for path in (ROOT / "campaign_worker").rglob(pattern)
        if "__pycache__" not in path.parts
    }
    assert package and package <= context
    assert all(path.split("/")[0] not in {".venv", ".git", "tests"} for path in context)


def test_build_context_leaves_out_venv_caches_and_test_data(tmp_path: Path) -> None:
    """.dockerignore applied to a tree holding everything a working copy accumulates."""
    wanted = [
        "Dockerfile",
        "pyproject.toml",
        "README.md",
        "celeryconfig.py",
        "campaign_worker/__init__.py",
        "campaign_worker/templates/default.yaml",
    ]
    unwanted = [
        ".venv/bin/python",
        ".git/HEAD",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v/x",
        "__pycache__/celeryconfig.cpython-311.pyc",
        "campaign_worker/__pycache__/settings.cpython-311.pyc",
        "campaign_worker/adapters/__pycache__/mongo.cpython-311.pyc",
        "campaign_worker.egg-info/PKG-INFO",
        "tests/unit/fixtures/templates/bad.yaml",
        "tests/conftest.py",
        "bench/results/run.json",
        "docs/deployment.md",
        "deploy/prometheus/alerts.yml",
        "celerybeat-schedule",
        "worker.log",
        ".tmp/secantus/data",
        "var/data",
        "build/lib/x.py",
        "dist/campaign_worker-0.1.0.whl",
    ]
    for name in wanted + unwanted:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    context = {path for path in build_context(tmp_path) if (tmp_path / path).is_file()}
    assert context == set(wanted)


# --------------------------------------------------------------------------- Prometheus


def test_promtool_accepts_the_config_and_its_rule_files() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = run([promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = run([promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_the_alert_rules() -> None:
    """deploy/prometheus/tests/alerts_test.yml: input series and the alerts they must raise."""
    promtool = require_tool("promtool", "prometheus")
    tests = PROMETHEUS_DIR / "tests" / "alerts_test.yml"
    result = run([promtool, "test", "rules", str(tests)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # Every alert is exercised by at least one test, firing and not firing.
    alert_tests = [
        case
        for test in yaml.safe_load(tests.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for alert in alert_rules():
        cases = [case for case in alert_tests if case["alertname"] == alert["alert"]]
        assert any(case["exp_alerts"] for case in cases), f"{alert['alert']} never fires"
        assert any(not case["exp_alerts"] for case in cases), f"{alert['alert']} always fires"


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def test_alerts_cover_the_required_conditions() -> None:
    by_name = {rule["alert"]: rule for rule in alert_rules()}
    expected = {
        "CampaignWorkerDown": f'up{{job="{SCRAPE_JOB}"}} == 0',
        "CampaignWorkerPollerLagHigh": "campaign_worker_poller_lag_seconds",
        "CampaignWorkerTaskFailureRateHigh": "campaign_worker_task_failures_total",
        "CampaignWorkerDeadLettersGrowing": "increase(campaign_worker_dead_letters_total[15m])",
        "CampaignWorkerMetricsDriftFound": "increase(campaign_worker_metrics_drift_total[1h])",
        "CampaignWorkerQueueBacklog": "campaign_worker_queue_depth",
    }
    for name, fragment in expected.items():
        assert fragment in by_name[name]["expr"], name
    assert (
        "campaign_worker_task_duration_seconds_count"
        in (by_name["CampaignWorkerTaskFailureRateHigh"]["expr"])
    )
    for rule in by_name.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alert_exprs_use_only_agreed_metrics() -> None:
    problems = [p for rule in alert_rules() for p in check_expr_against_contract(rule["expr"])]
    assert problems == []
    for rule in alert_rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job == SCRAPE_JOB, rule["alert"]


# --------------------------------------------------------------------------- Grafana


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs() -> list[str]:
    board = dashboard()
    exprs = [
        target["expr"]
        for panel in all_panels(board["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        values = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text)
        if values:  # label_values(metric, label) -> the series it reads the label from
            exprs.append(f"count by ({values.group(2)}) ({values.group(1)})")
    return exprs


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] == "campaign-worker" and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_exprs_use_only_agreed_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    problems = [p for expr in exprs for p in check_expr_against_contract(expr)]
    assert problems == []


def test_dashboard_has_the_required_panels() -> None:
    exprs = [plain_promql(e) for e in dashboard_exprs()]

    def uses(series: str) -> bool:
        return any(series in referenced_series(expr) for expr in exprs)

    for series in (
        "campaign_worker_stage_transitions_total",
        "campaign_worker_conversations_finished_total",
        "campaign_worker_messages_sent_total",
        "campaign_worker_messages_received_total",
        "campaign_worker_task_failures_total",
        "campaign_worker_dead_letters_total",
        "campaign_worker_poller_lag_seconds",
    ):
        assert uses(series), series
    for histogram in ("task_duration_seconds", "mongo_operation_duration_seconds"):
        for quantile in ("0.5", "0.95"):
            assert any(
                f"histogram_quantile({quantile}," in expr
                and f"campaign_worker_{histogram}_bucket" in expr
                and re.search(r"by \([^)]*\ble\b", expr)
                for expr in exprs
            ), (histogram, quantile)


def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as recording rules)."""
    promtool = require_tool("promtool", "prometheus")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": plain_promql(expr)}
                    for i, expr in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- the code


def test_agreed_metrics_are_the_ones_the_code_defines() -> None:
    """The contract above (and so the dashboard and alerts) matches adapters/metrics.py."""
    from prometheus_client.metrics import MetricWrapperBase

    from campaign_worker.adapters import metrics  # a broken import must fail, not skip

    defined: dict[str, tuple[str, tuple[str, ...]]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            (description,) = value.describe()
            defined[description.name] = (description.type, tuple(value._labelnames))
    for name, (kind, labels) in AGREED_METRICS.items():
        assert name in defined, f"{name} is not defined in campaign_worker.adapters.metrics"
        assert defined[name] == (kind, labels), name
    assert metrics.QueueDepthCollector.NAME in ALLOWED_SERIES


# --------------------------------------------------------------------------- supervision


def test_redis_keeps_the_queues_across_a_restart(compose: dict[str, Any]) -> None:
    """AOF on, fsynced every second (or always), no eviction, data on a named volume."""
    redis = compose["services"]["redis"]
    command = command_of(redis)
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert command[0] == "redis-server"
    assert options.get("--appendonly") == "yes"
    assert options.get("--appendfsync") in {"everysec", "always"}
    assert options.get("--maxmemory-policy", "noeviction") == "noeviction"
    mounts = [
        v.split(":")[:2] if isinstance(v, str) else [v["source"], v["target"]]
        for v in redis["volumes"]
    ]
    assert ["redis-data", "/data"] in mounts, mounts  # a named volume, not the container
    assert "redis-data" in compose["volumes"]


def test_every_long_running_service_is_restarted_when_it_exits(compose: dict[str, Any]) -> None:
    for name in ("mongodb", "redis", "worker", "beat", "flower"):
        assert compose["services"][name].get("restart") in {"unless-stopped", "always"}, name


def test_celeryconfig_keeps_in_flight_messages_across_broker_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_celeryconfig(monkeypatch)
    assert config.task_acks_late is True
    assert config.task_reject_on_worker_lost is True
    # Running tasks finish on a connection loss (killing them strands their message in
    # Redis's unacked set until the visibility timeout), and the worker never gives up.
    assert config.worker_cancel_long_running_tasks_on_connection_loss is False
    assert config.broker_connection_retry is True
    assert config.broker_connection_max_retries is None


def systemd_unit_from_docs() -> str:
    text = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```ini\n(.*?)```", text, flags=re.S)
    units = [b for b in blocks if "[Service]" in b]
    assert len(units) == 1, "docs/deployment.md: expected one systemd unit example"
    return str(units[0])


def test_documented_systemd_unit_restarts_the_worker_and_lets_tasks_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unit = systemd_unit_from_docs()
    keys = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert keys["Restart"] == "always"
    assert keys["KillSignal"] == "SIGTERM"
    assert keys["KillMode"] == "mixed"  # SIGTERM to the main process only: a warm shutdown
    assert keys["StartLimitIntervalSec"] == "0"
    config = load_celeryconfig(monkeypatch)
    assert int(keys["TimeoutStopSec"]) > config.task_time_limit
    command = shlex.split(keys["ExecStart"])
    assert command[1:4] == ["-A", APP, "worker"]
    assert queues_of(command) == {q.name for q in config.task_queues}


def test_documented_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    binary = require_tool("systemd-analyze", "systemd")
    unit = systemd_unit_from_docs()
    # Only what needs this machine changes: an executable that exists, a user that exists.
    unit = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", unit, flags=re.M)
    unit = re.sub(r"^(User|Group)=.*$", r"\1=root", unit, flags=re.M)
    unit = unit.replace("WorkingDirectory=/opt/campaign-worker", f"WorkingDirectory={tmp_path}")
    unit = re.sub(r"^EnvironmentFile=", "EnvironmentFile=-", unit, flags=re.M)
    path = tmp_path / "campaign-worker.service"
    path.write_text(unit)
    result = run([binary, "verify", str(path)])
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if str(path) in line]
    assert complaints == []


# ------------------------------------------------------------------ pinned versions


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_dependency_is_pinned_and_installed_with_the_pins() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    names = {re.split(r"[\[<>=!~ ]", spec, maxsplit=1)[0] for spec in wanted}
    pins = _constraints()
    missing = {name for name in names if re.sub(r"[-_.]+", "-", name).lower() not in pins}
    assert not missing, f"not pinned in constraints.txt: {sorted(missing)}"
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in (ROOT / "Dockerfile").read_text()


def test_compose_images_are_pinned_to_exact_versions() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    images = re.findall(r"^\s*image:\s*(\S+)", text, flags=re.M)
    assert images
    for image in images:
        if image.startswith("campaign-worker:"):
            continue  # built from this repository
        tag = image.rsplit(":", 1)[-1] if ":" in image else "latest"
        assert re.match(r"^v?\d+\.\d+\.\d+", tag), f"{image}: not an exact version"
