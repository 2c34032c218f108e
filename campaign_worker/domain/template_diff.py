"""What changed between two templates, for an operator about to migrate: per campaign
type, stages added and removed, and per stage kept, messages whose text or wait changed,
messages added or removed, and other settings that changed. Pure."""

from __future__ import annotations

from typing import Any

from campaign_worker.domain.templates import CampaignTypeTemplate, Stage, Template
from campaign_worker.domain.versions import content_of


def diff_templates(a: Template, b: Template) -> dict[str, Any]:
    """``{identical, settings: [...], campaign_types: {name: {...}}}``; lists of changes
    are human-readable lines."""
    before, after = content_of(a), content_of(b)
    settings = [
        f"{key} changed"
        for key in sorted({*before, *after} - {"campaign_types"})
        if before.get(key) != after.get(key)
    ]
    types: dict[str, Any] = {}
    for name in sorted({*a.campaign_types, *b.campaign_types}):
        old, new = a.for_type(name), b.for_type(name)
        if old is None:
            types[name] = {"added": True}
        elif new is None:
            types[name] = {"removed": True}
        else:
            changed = _type_diff(old, new)
            if changed:
                types[name] = changed
    return {"identical": not settings and not types, "settings": settings, "campaign_types": types}


def _type_diff(old: CampaignTypeTemplate, new: CampaignTypeTemplate) -> dict[str, Any]:
    found: dict[str, Any] = {}
    removed = [s for s in old.stage_names if new.stage(s) is None]
    added = [s for s in new.stage_names if old.stage(s) is None]
    if removed:
        found["stages_removed"] = removed
    if added:
        found["stages_added"] = added
    kept_old = [s for s in old.stage_names if s not in removed]
    kept_new = [s for s in new.stage_names if s not in added]
    if kept_old != kept_new:
        found["order"] = {"before": kept_old, "after": kept_new}
    stages = {}
    for name in kept_old:
        old_stage, new_stage = old.stage(name), new.stage(name)
        assert old_stage is not None and new_stage is not None
        lines = _stage_diff(old_stage, new_stage)
        if lines:
            stages[name] = lines
    if stages:
        found["stages_changed"] = stages
    return found


def _stage_diff(old: Stage, new: Stage) -> list[str]:
    lines = []
    for step in range(max(len(old.messages), len(new.messages))):
        if step >= len(new.messages):
            lines.append(f"message {step} removed")
        elif step >= len(old.messages):
            lines.append(f"message {step} added")
        else:
            before, after = old.messages[step], new.messages[step]
            for what in ("text", "wait", "channel"):
                if getattr(before, what) != getattr(after, what):
                    lines.append(f"message {step} {what} changed")
    dumped_old = old.model_dump(mode="json", exclude={"messages"})
    dumped_new = new.model_dump(mode="json", exclude={"messages"})
    lines += [
        f"{key} changed"
        for key in sorted({*dumped_old, *dumped_new})
        if dumped_old.get(key) != dumped_new.get(key)
    ]
    return lines


__all__ = ["diff_templates"]
