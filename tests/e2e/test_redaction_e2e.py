"""Bodies do not leak: reply texts and recipient values sent through a real worker (with
task events) appear in no log line, no dead letter error, no CLI listing and no Flower
page (rendered by headless Chromium) or Flower API answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.e2e.broker_tools import publish_raw
from tests.e2e.conftest import Broker, Processes, wait_until
from tests.e2e.test_flower_e2e import CHROMIUM, fetch, render, worker_and_flower

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CLI = str(Path(sys.executable).with_name("campaign-worker"))
INBOUND = "campaign_worker.record_inbound_message"
CREATE = "campaign_worker.create_campaign"
REPLY = "reply-marker-5be1 please call me at home"
ATTRIBUTE = "attribute-marker-90c2"
ZONE = "Mars/zone-marker-31d7"
MARKERS = (REPLY, ATTRIBUTE, ZONE)


def leaked(text: str) -> list[str]:
    return [marker for marker in MARKERS if marker in text]


def campaign(campaign_id: str, **recipient: Any) -> dict[str, Any]:
    return {
        "_id": campaign_id,
        "name": "redaction",
        "campaign_type": "quick",
        "template_id": "e2e",
        "start_at": "2099-01-01T00:00:00Z",
        "recipients": [{"user_id": "u-1", "attributes": {"first_name": ATTRIBUTE}, **recipient}],
    }


def api_tasks(base: str) -> dict[str, Any]:
    text = fetch(f"{base}/api/tasks")
    return dict(json.loads(text)) if text.startswith("{") else {}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed")
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_bodies_appear_in_no_log_dead_letter_listing_or_flower_page(
    broker: Broker, processes: Processes, client: Celery, mongo: Any, tmp_path: Path
) -> None:
    _, base = worker_and_flower(processes, client, "e2e-redact")

    created = client.send_task(CREATE, kwargs={"campaign": campaign("red")})
    assert created.get(timeout=30) == "red"
    reply = {"campaign_id": "nope", "user_id": "u-1", "message_id": "m-1", "content": REPLY}
    unknown_campaign = client.send_task(INBOUND, kwargs=reply, queue="inbound")
    positional = client.send_task(INBOUND, args=["red", "u-1", "m-2", REPLY], queue="inbound")
    bad_zone = client.send_task(CREATE, kwargs={"campaign": campaign("zone", timezone=ZONE)})
    for failing in (unknown_campaign, positional, bad_zone):
        with pytest.raises(Exception, match=r"not found|unknown timezone"):
            failing.get(timeout=30)
    publish_raw(broker, [[], reply, {}], {"lang": "py", "task": INBOUND + "s", "id": "misspelt"})
    ids = [created.id, unknown_campaign.id, positional.id, bad_zone.id]

    wait_until(lambda: mongo["dead_letters"].count_documents({}) == 4, 60, "four dead letters")

    def every_task_listed() -> dict[str, Any]:
        tasks = api_tasks(base)
        return tasks if set(ids) <= set(tasks) else {}

    seen = wait_until(every_task_listed, 60, "Flower's API to list every task")
    assert not leaked(json.dumps(seen))
    assert "'campaign_id': 'nope'" in seen[unknown_campaign.id]["kwargs"]  # ids stay visible
    assert "[redacted]" in seen[unknown_campaign.id]["kwargs"]

    profile = tmp_path / "chromium"
    page = render(f"{base}/tasks", profile)
    assert unknown_campaign.id in page and not leaked(page)
    for task_id in ids:
        detail = render(f"{base}/task/{task_id}", profile)
        assert task_id in detail
        assert not leaked(detail), task_id

    for doc in mongo["dead_letters"].find():
        assert not leaked(doc["error"]), doc["_id"]
    for listing in (["list"], ["list", "--json"], ["list", "--all"]):
        done = subprocess.run(
            [CLI, "dead-letters", *listing],
            env=processes.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "misspelt" in done.stdout and not leaked(done.stdout + done.stderr)

    assert not leaked(processes.log("e2e-redact"))
    assert not leaked(processes.log("flower"))


BROKER_PASSWORD = "brokerpw-credential-4c1d"
WEBHOOK_SECRET = "whsecret-credential-88ab"
SMTP_PASSWORD = "smtppw-credential-02fe"
CREDENTIALS = (BROKER_PASSWORD, WEBHOOK_SECRET, SMTP_PASSWORD)


def with_password(url: str, password: str) -> str:
    """``redis://host/db`` as ``redis://default:password@host/db`` (the default user of a
    Redis without requirepass accepts any password: ACL ``nopass``)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://default:{password}@{rest}"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed")
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_credentials_appear_in_no_log_or_flower_page(
    broker: Broker, processes: Processes, client: Celery, mongo: Any, tmp_path: Path
) -> None:
    """The broker URL's password, the webhook secret and the SMTP password, given to the
    worker and Flower in their environment only: in no log line (worker, beat, Flower, the
    CLI) and on no Flower page, the worker's configuration tab included. (The MongoDB URI's
    password is covered by tests/unit/test_credentials.py: the stand-in server has no
    authentication to give it one here.)"""
    processes.env.update(
        {
            "CELERY_BROKER_URL": with_password(broker.url, BROKER_PASSWORD),
            "CELERY_RESULT_BACKEND": with_password(broker.backend, BROKER_PASSWORD),
            "WEBHOOK_URL": "http://127.0.0.1:9/hook",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": "9",
            "SMTP_USERNAME": "mailer",
            "SMTP_PASSWORD": SMTP_PASSWORD,
            "LOG_LEVEL": "DEBUG",
        }
    )
    node, base = worker_and_flower(processes, client, "e2e-credentials")
    processes.beat()
    failing = client.send_task("campaign_worker.get_campaign_metrics", kwargs={"campaign_id": "x"})
    with pytest.raises(Exception, match="campaign not found"):
        failing.get(timeout=30)
    client.send_task("campaign_worker.poll_campaigns", queue="polling").get(timeout=30)
    health = subprocess.run(
        [CLI, "health", "--worker", node],
        env=processes.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    wait_until(lambda: failing.id in api_tasks(base), 60, "Flower to list the task")

    profile = tmp_path / "chromium"
    pages = [
        render(f"{base}{path}", profile)
        for path in ("/", "/tasks", f"/task/{failing.id}", "/broker", f"/worker/{node}")
    ]
    pages.append(fetch(f"{base}/api/workers"))
    assert node in pages[-1]
    texts = {
        "pages": "\n".join(pages),
        "worker log": processes.log("e2e-credentials"),
        "beat log": processes.log("beat"),
        "flower log": processes.log("flower"),
        "health": health.stdout + health.stderr,
    }
    for where, text in texts.items():
        for secret in CREDENTIALS:
            assert secret not in text, f"{secret} in the {where}"
