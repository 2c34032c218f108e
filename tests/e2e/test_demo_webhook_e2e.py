"""`campaign-worker demo --webhook`: the sample campaign delivered through the webhook
channel to the demo's local receiver, which verifies every signature and reports statuses
back by task name; the counts agree end to end."""

from __future__ import annotations

import ast
import re

import pytest

from tests.e2e.test_demo_e2e import _run_demo

pytestmark = pytest.mark.e2e


def test_demo_delivers_by_webhook_with_statuses_back() -> None:
    result = _run_demo("--webhook", "--recipients", "40", "--timeout", "200")
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    receiver = re.search(
        r"Webhook receiver: (\d+) messages accepted \(each Idempotency-Key once\), (\d+) repeats "
        r"\(of (\d+) sends retried\), (\d+) bad signatures; reported (\d+) delivered, "
        r"(\d+) bounced",
        output,
    )
    assert receiver is not None, output
    accepted, repeats, retried, bad, delivered, bounced = map(int, receiver.groups())
    sent = int(re.search(r"messages sent (\d+)", output).group(1))  # type: ignore[union-attr]
    # A repeat only ever follows a send the dispatcher saw fail or time out (at least once,
    # under one Idempotency-Key); on a quiet machine there are none.
    assert bad == 0 and repeats <= retried
    assert delivered + bounced == accepted
    counted = re.search(r"Metrics document, delivery per channel and status: (\{.*\})", output)
    assert counted is not None
    webhook = ast.literal_eval(counted.group(1))["webhook"]
    assert (webhook["sent"], webhook["delivered"]) == (accepted, delivered)
    assert webhook.get("bounced", 0) == bounced
    # Every recorded message was accepted, except those to an address that bounced before.
    assert accepted + webhook.get("failed", 0) == sent
    ended = re.search(
        r"Suppressed addresses \(bounces, complaints\): (\d+); conversations ended by a "
        r"bounce: (\d+)",
        output,
    )
    assert ended is not None and ended.group(1) == ended.group(2)
    assert (int(ended.group(1)) > 0) == (bounced > 0)
    assert "campaign status: completed" in output
