"""The always-on template of the tests (an onboarding journey) and its builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ONBOARDING = """\
template_id: always_on
attribute_defaults: {first_name: there, plan: trial}
campaign_types:
  onboarding:
    audience: open
    entry: {event: trial_started, attributes: [plan, first_name]}
    re_entry: {after: 30d}
    goal: {event: purchased, within: 14d}
    holdout: 0.3
    stages:
      - name: welcome
        messages:
          - text: "Welcome {first_name}, enjoy your {plan} plan!"
            wait: 1d
          - text: "Need a hand, {first_name}? Book a call."
            wait: 2d
        on_event: {meeting_booked: {exit: completed}}
        on_timeout: {after: 5d, goto: nudge}
      - name: nudge
        messages:
          - variants:
              - {id: A, text: "Your trial ends soon, {first_name}."}
              - {id: B, text: "Two days left, {first_name}: 20% off today."}
            wait: 1d
        advance_when: {event: [purchased]}
        on_event: {meeting_booked: {exit: completed}}
  fixed:
    stages:
      - name: only
        messages: [{text: "hello", wait: 1d}]
"""


def write_template(directory: Path) -> Path:
    (directory / "always_on.yaml").write_text(ONBOARDING)
    return directory


def open_campaign(campaign_id: str = "always", **extra: Any) -> dict[str, Any]:
    return {
        "_id": campaign_id,
        "name": "onboarding",
        "campaign_type": "onboarding",
        "template_id": "always_on",
        **extra,
    }


def people(n: int, prefix: str = "u", start: int = 0) -> list[dict[str, Any]]:
    return [
        {"user_id": f"{prefix}{i:04d}", "attributes": {"first_name": f"N{i}"}}
        for i in range(start, start + n)
    ]
