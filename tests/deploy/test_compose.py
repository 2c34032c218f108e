"""Deployment files: docker-compose.yml (checked by the real client), supervision, pins.

No Docker engine is needed: the compose file is validated and normalised by the Debian
``docker-compose`` client (``config``), the Prometheus files by ``promtool`` (including its rule
unit tests in deploy/prometheus/tests/), and the dashboard's PromQL is parsed by promtool and
checked against the agreed metric names and the metrics campaign_worker actually defines.
Tests that need a missing tool skip and say which Debian package provides it (.ci/run
installs them).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo import uri_parser

from campaign_worker.settings import Settings
from tests.deploy.support import (
    APP,
    COMPOSE_FILE,
    DASHBOARD,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    ROOT,
    SCRAPE_JOB,
    SECRETS,
    command_of,
    compose_config,
    healthcheck_text,
    load_celeryconfig,
    published,
    queues_of,
    require_tool,
    run,
)


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
