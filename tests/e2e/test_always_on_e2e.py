"""An always-on campaign on a real worker, beat and broker, driven by a plain Celery
client that never imports campaign_worker: three waves of enrollment (with duplicates
across waves), entry events that enroll more, ``meeting_booked`` events that end those
conversations as completed and stop their follow-ups, goal events that convert (holdout
included), then ``campaign-worker metrics --json`` with exact counts and the lift with its
interval, and ``campaign-worker check`` passing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from campaign_worker.domain.splits import in_holdout
from tests.e2e.conftest import Broker, Processes, wait_for_workers, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CAMPAIGN = "always-on-e2e"
CLI = str(Path(sys.executable).with_name("campaign-worker"))
PLAIN_CLIENT = Path(__file__).with_name("plain_client.py")
ENROLL = "campaign_worker.enroll_recipients"
EVENT = "campaign_worker.record_event"
HOLDOUT = 0.25


def person(i: int) -> dict[str, Any]:
    return {"user_id": f"u{i:03d}", "attributes": {"first_name": f"P{i}", "plan": "pro"}}


WAVES = [
    [person(i) for i in range(0, 20)],
    [person(i) for i in range(10, 30)],  # 10 already enrolled
    [*(person(i) for i in range(25, 40)), {"attributes": {"first_name": "no id"}}],  # 5 again
]
TRIALS = [f"t{i:03d}" for i in range(10)]  # entry events enroll these
BOOKED = [f"u{i:03d}" for i in range(10)] + TRIALS[:5]
BUYERS = [f"u{i:03d}" for i in range(10, 40)]
EVERYONE = [f"u{i:03d}" for i in range(40)] + TRIALS


def plain_send(broker: Broker, env: dict[str, str], cwd: Path, kwargs: dict[str, Any]) -> Any:
    """enroll_recipients from a separate process that imports only celery."""
    done = subprocess.run(
        [sys.executable, str(PLAIN_CLIENT), broker.url, broker.backend, ENROLL, json.dumps(kwargs)],
        env={k: v for k, v in env.items() if k != "PYTHONPATH"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])["result"]


def cli(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def outbox(mongo: Any, user: str) -> list[dict[str, Any]]:
    return list(mongo["outbox"].find({"campaign_id": CAMPAIGN, "user_id": user}).sort("step", 1))


def events(client: Celery, name: str, users: list[str], **properties: Any) -> None:
    for user in users:
        kwargs: dict[str, Any] = {"user_id": user, "event": name, "event_id": f"{name}-{user}"}
        if properties:
            kwargs["properties"] = {**properties, "first_name": user.upper()}
        for _ in range(2):  # every event delivered twice
            client.send_task(EVENT, kwargs=kwargs, queue="inbound")


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_an_always_on_journey_end_to_end(
    broker: Broker, processes: Processes, client: Celery, mongo: Any, tmp_path: Path
) -> None:
    node = processes.worker("always-on")
    processes.beat()
    wait_for_workers(client, [node])
    created = client.send_task(
        "campaign_worker.create_campaign",
        kwargs={
            "campaign": {
                "_id": CAMPAIGN,
                "name": "onboarding",
                "campaign_type": "onboarding",
                "template_id": "always_on",
            }
        },
    )
    assert created.get(timeout=30) == CAMPAIGN
    wait_until(
        lambda: (mongo["campaigns"].find_one({"_id": CAMPAIGN}) or {}).get("status") == "running",
        30,
        "the open campaign to run",
    )

    first = plain_send(
        broker, processes.env, tmp_path, {"campaign_id": CAMPAIGN, "recipients": WAVES[0]}
    )
    second = client.send_task(ENROLL, kwargs={"campaign_id": CAMPAIGN, "recipients": WAVES[1]})
    third = client.send_task(
        ENROLL, kwargs={"campaign_id": CAMPAIGN, "recipients": WAVES[2], "idempotency_key": "w3"}
    )
    counts = [first, second.get(timeout=60), third.get(timeout=60)]
    assert [(c["enrolled"], c["already"], c["invalid"]) for c in counts] == [
        (20, 0, 0),
        (10, 10, 0),
        (10, 5, 1),
    ]
    events(client, "trial_started", [*TRIALS, "u000"], plan="basic")
    wait_until(
        lambda: mongo["conversation_states"].count_documents({"campaign_id": CAMPAIGN}) == 50,
        60,
        "50 conversations",
    )
    treated = [u for u in EVERYONE if not in_holdout(CAMPAIGN, u, HOLDOUT)]
    wait_until(lambda: all(outbox(mongo, u) for u in treated), 60, "every first message to be sent")
    assert outbox(mongo, "t003")[0]["content"] == "Welcome T003, enjoy your basic plan!"

    events(client, "meeting_booked", BOOKED)
    events(client, "purchased", BUYERS)
    wait_until(
        lambda: (
            mongo["conversation_states"].count_documents(
                {"campaign_id": CAMPAIGN, "status": "completed"}
            )
            == len(BOOKED)
            and mongo["conversation_states"].count_documents(
                {"campaign_id": CAMPAIGN, "conversion": {"$ne": None}}
            )
            == len(BUYERS)
        ),
        60,
        "meetings to complete conversations and purchases to convert",
    )
    # The others get their follow-up 12 s after the first message; those who booked a
    # meeting get none.
    waiting = [u for u in treated if u not in BOOKED]
    wait_until(lambda: all(len(outbox(mongo, u)) == 2 for u in waiting), 60, "follow-ups")
    assert all(len(outbox(mongo, u)) == 1 for u in treated if u in BOOKED)

    env = {"MONGODB_URI": processes.env["MONGODB_URI"], "MONGODB_DB": processes.env["MONGODB_DB"]}
    env["PATH"] = processes.env.get("PATH", "")
    metrics = cli(env, "metrics", CAMPAIGN, "--json")
    held_buyers = sum(in_holdout(CAMPAIGN, u, HOLDOUT) for u in BUYERS)
    held = sum(in_holdout(CAMPAIGN, u, HOLDOUT) for u in EVERYONE)
    assert metrics["total_recipients"] == 50
    assert metrics["outcomes"]["completed"] == len(BOOKED)
    assert metrics["outcomes"]["active"] == 50 - len(BOOKED)
    goal = metrics["goals"]["purchased"]
    assert goal["converted"] == len(BUYERS) and goal["conversations"] == 50
    assert goal["holdout"] == {
        **goal["holdout"],
        "converted": held_buyers,
        "conversations": held,
    }
    assert goal["treatment"]["converted"] == len(BUYERS) - held_buyers
    [versus] = goal["lift"]
    assert (versus["group"], versus["baseline"]) == ("treatment", "holdout")
    assert versus["converted"] == len(BUYERS) - held_buyers
    assert versus["baseline_conversations"] == held
    if held_buyers:
        assert (
            versus["ci95"] is not None and versus["ci95"][0] <= versus["lift"] <= versus["ci95"][1]
        )
    assert versus["verdict"] == "sample too small to tell"  # under 30 held out
    report = cli(env, "check", CAMPAIGN, "--json")
    assert report["ok"], report["violations"]
    assert report["figures"]["conversions"] == len(BUYERS)
    assert report["figures"]["enrolled"] == 50
    assert mongo["dead_letters"].count_documents({}) == 0
    figures = {"e2e": "always_on", "enrolled": 50, "completed": len(BOOKED), "goal": goal}
    print(f"\nE2E FIGURES {json.dumps(figures, sort_keys=True)}")
