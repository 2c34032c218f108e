"""Flower on the test broker, its dashboard rendered by headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from campaign_worker.demo.embedded import free_port, wait_for_port
from tests.e2e.conftest import APP, Broker, Processes, wait_for_workers, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PUBLIC = [
    "campaign_worker.create_campaign",
    "campaign_worker.poll_campaigns",
    "campaign_worker.initialize_campaign",
    "campaign_worker.process_conversations",
    "campaign_worker.record_inbound_message",
    "campaign_worker.mark_conversation_complete",
    "campaign_worker.pause_campaign",
    "campaign_worker.resume_campaign",
    "campaign_worker.cancel_campaign",
    "campaign_worker.get_campaign_metrics",
]


def render(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran (virtual time lets its XHRs finish)."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def worker_and_flower(processes: Processes, client: Celery, name: str) -> tuple[str, str]:
    """A worker sending task events and Flower (its API open, as behind a trusted proxy);
    the worker's node name and Flower's URL, once Flower sees the worker."""
    # -E: task events from the start (Flower would switch them on too, but only after it
    # connected, so the first tasks' "received" events could be missed).
    node = processes.worker(name, concurrency=1, extra=("-E",))
    wait_for_workers(client, [node])
    port = free_port()
    processes.env["FLOWER_UNAUTHENTICATED_API"] = "true"
    processes.start(
        "flower",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            APP,
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
    )
    wait_for_port(port, timeout=60)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: node in fetch(f"{base}/"), 60, "Flower to see the worker")
    return node, base


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed")
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_flower_dashboard_shows_the_worker_and_the_tasks(
    broker: Broker, processes: Processes, client: Celery, mongo: Any, tmp_path: Path
) -> None:
    node, base = worker_and_flower(processes, client, "e2e-flower")
    client.send_task("campaign_worker.poll_campaigns", queue="polling").get(timeout=30)
    failed = client.send_task("campaign_worker.get_campaign_metrics", kwargs={"campaign_id": "x"})
    with pytest.raises(Exception, match="campaign not found"):
        failed.get(timeout=30)

    profile = tmp_path / "chromium"
    dashboard = render(f"{base}/", profile)
    assert node in dashboard

    worker_page = render(f"{base}/worker/{node}", profile)
    assert node in worker_page
    missing = [name for name in PUBLIC if name not in worker_page]
    assert not missing, f"registered tasks missing from the worker page: {missing}"

    def tasks_page() -> str:
        page = render(f"{base}/tasks", profile)
        ran = ("campaign_worker.poll_campaigns", "campaign_worker.get_campaign_metrics")
        return page if all(name in page for name in ran) else ""

    page = wait_until(tasks_page, 60, "the tasks page to list the tasks that ran", interval=1)
    assert failed.id in page
