"""A dry run of any template: the in-memory adapters (``adapters/memory_*.py``, the same
behaviour as MongoDB's: ``tests/contract``), a ManualClock stepped through the campaign,
and a simulated audience that replies at a given rate. Nothing is published to a broker
or channel: the outbox stays in memory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from campaign_worker.demo.audience import Answer, _roll, drive, sample_recipients
from campaign_worker.domain.documents import conversation_id_for
from campaign_worker.domain.templates import Rule, Stage, Template

CAMPAIGN_ID = "simulation"


@dataclass(frozen=True)
class SimulationOptions:
    campaign_type: str
    recipients: int = 100
    reply_rate: float = 0.5
    speed: float = 0.0  # simulated seconds per real second; 0: as fast as possible
    tick: timedelta = timedelta(hours=4)
    max_days: int = 60


def reply_text(rule: Rule | None) -> str:
    """A reply that satisfies ``rule`` where a text can (keywords; any/all of them)."""
    if rule is None:
        return "ok"
    if rule.keywords:
        return rule.keywords[0]
    if rule.any:
        return reply_text(rule.any[0])
    if rule.all:
        return " ".join(reply_text(part) for part in rule.all)
    return "yes"


def audience(template: Template, options: SimulationOptions) -> Answer:
    """Each recipient answers a stage with probability ``reply_rate`` (seeded), 1-41 h in."""
    stages: dict[str, Stage] = {
        stage.name: stage for stage in template.campaign_types[options.campaign_type].stages
    }

    def answer(user_id: str, stage: str) -> tuple[str | None, timedelta]:
        delay = timedelta(hours=1 + 40 * _roll(user_id, stage, "delay"))
        if _roll(user_id, stage, "reply") >= options.reply_rate or stage not in stages:
            return None, delay
        return reply_text(stages[stage].advance_when), delay

    return answer


def embedded_manager(template: Template, clock: Any) -> Any:
    """A CampaignManager on a fresh in-memory database that knows ``template``."""
    from campaign_worker.adapters.memory_store import MemoryDatabase
    from campaign_worker.adapters.template_files import TemplateFiles
    from campaign_worker.bootstrap import build_manager
    from campaign_worker.settings import Settings

    templates = TemplateFiles(None)
    templates.add_template(template)
    db = MemoryDatabase("simulation")
    return build_manager(db, Settings(), clock=clock, config_manager=templates)


def simulate(
    template: Template, options: SimulationOptions, progress: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the campaign to its end; returns its metrics and one sample conversation."""
    from campaign_worker.adapters.clock import ManualClock

    clock = ManualClock()
    manager = embedded_manager(template, clock)
    recipients = sample_recipients(options.recipients)
    manager.create_campaign({"_id": CAMPAIGN_ID, "name": "simulation",
                             "campaign_type": options.campaign_type,
                             "template_id": template.template_id,
                             "recipients": recipients})  # fmt: skip
    manager.initialize_campaign_conversations(CAMPAIGN_ID)
    start = clock.now()

    def pace() -> None:
        if options.speed > 0:
            time.sleep(options.tick.total_seconds() / options.speed)

    completed = drive(manager, clock, CAMPAIGN_ID, answer=audience(template, options),
                      tick=options.tick, max_days=options.max_days, after_step=pace)  # fmt: skip
    days = (clock.now() - start) / timedelta(days=1)
    progress(f"{'completed' if completed else 'still active'} after {days:.1f} simulated days")
    sample = manager.get_conversation(conversation_id_for(CAMPAIGN_ID, recipients[0]["user_id"]))
    return manager.get_campaign_metrics(CAMPAIGN_ID), sample
