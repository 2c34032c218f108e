"""Prometheus config, alert rules and their promtool unit tests, the Grafana dashboard's PromQL,
and the agreed metric names against what the code defines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.support import (
    AGREED_METRICS,
    ALLOWED_SERIES,
    DASHBOARD,
    PROMETHEUS_DIR,
    SCRAPE_JOB,
    check_expr_against_contract,
    plain_promql,
    referenced_labels,
    referenced_series,
    require_tool,
    run,
)


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
