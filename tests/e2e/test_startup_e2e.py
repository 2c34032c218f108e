"""A worker that cannot serve must not consume: bad templates or settings stop it at start,
with a non-zero exit and a message naming the file (or variable) and the field, and the
messages already queued stay in the broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.e2e.broker_tools import queued
from tests.e2e.conftest import Broker, Processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BAD_TEMPLATE = """\
template_id: broken
campaign_types:
  sales:
    stages:
      - name: hello
        messages:
          - {text: "Hi {first_name}", wait: soon}
"""


def start_and_wait(processes: Processes, name: str) -> int:
    proc = processes.start(name, processes.worker_argv(name))
    return proc.wait(60)


def test_bad_template_stops_the_worker_before_it_consumes(
    broker: Broker, processes: Processes, client: Celery, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "broken.yaml").write_text(BAD_TEMPLATE)
    processes.env["CAMPAIGN_TEMPLATES_DIR"] = str(templates)
    client.send_task(
        "campaign_worker.get_campaign_metrics", kwargs={"campaign_id": "c"}, queue="inbound"
    )
    assert queued(broker, "inbound") == 1

    code = start_and_wait(processes, "bad-template")

    assert code != 0
    log = processes.log("bad-template")
    assert str(templates / "broken.yaml") in log
    assert "campaign_types.sales.stages.0.messages.0.wait" in log
    assert " ready." not in log
    assert queued(broker, "inbound") == 1


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("POLL_INTERVAL_SECONDS", "-7.25", "greater than 0"),
        # Celery's own settings come from the same validated source (celeryconfig.py).
        ("CELERY_TASK_TIME_LIMIT", "five minutes", "valid integer"),
        ("CELERY_SEND_TASK_EVENTS", "maybe", "valid boolean"),
    ],
)
def test_bad_setting_stops_the_worker_naming_the_variable(
    broker: Broker,
    processes: Processes,
    client: Celery,
    variable: str,
    value: str,
    expected: str,
) -> None:
    processes.env[variable] = value
    client.send_task(
        "campaign_worker.get_campaign_metrics", kwargs={"campaign_id": "c"}, queue="inbound"
    )

    code = start_and_wait(processes, "bad-setting")

    assert code == 78
    log = processes.log("bad-setting")
    assert f"{variable}: " in log and expected in log
    assert value not in log  # the form expected, never the value (it may be a secret)
    assert queued(broker, "inbound") == 1


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_conflicting_index_stops_the_worker(
    broker: Broker, processes: Processes, client: Celery, mongo: Any
) -> None:
    # An index of ours ("created" on dead_letters) already exists with other keys.
    mongo["dead_letters"].create_index([("task_name", 1)], name="created")
    client.send_task(
        "campaign_worker.get_campaign_metrics", kwargs={"campaign_id": "c"}, queue="inbound"
    )

    code = start_and_wait(processes, "bad-index")

    assert code != 0
    log = processes.log("bad-index")
    assert "cannot create the MongoDB indexes" in log and "created" in log
    assert queued(broker, "inbound") == 1
