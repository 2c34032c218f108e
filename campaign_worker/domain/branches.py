"""Branches between stages: where each stage can lead, and the checks a template's graph
must pass (targets exist, every stage is reachable, no loop runs without a wait).

Edges of a stage: ``next`` (explicit, else the following stage, else completion), each
``on_reply`` and ``on_event`` target and the ``on_timeout`` target. A loop is fine as long
as some edge on it waits: a reply, a message wait, or a timeout longer than zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from campaign_worker.domain.templates import CampaignTypeTemplate, Rule, Stage


@dataclass(frozen=True)
class Route:
    """A resolved branch: to ``stage``, or out of the conversation with ``outcome``."""

    stage: str | None = None
    outcome: str | None = None

    @property
    def label(self) -> str:
        return self.stage if self.stage is not None else f"exit:{self.outcome}"


def next_route(type_template: CampaignTypeTemplate, stage: Stage) -> Route:
    """Where ``stage`` leads when it advances."""
    if stage.next is not None:
        return Route(stage.next.goto, stage.next.exit)
    names = type_template.stage_names
    index = names.index(stage.name)
    if index + 1 < len(names):
        return Route(names[index + 1])
    return Route(outcome="completed")


def reply_route(stage: Stage, intent: str) -> Route | None:
    """The stage's branch for a reply with ``intent``, if it has one."""
    target = (stage.on_reply or {}).get(intent)
    return None if target is None else Route(target.goto, target.exit)


def event_route(stage: Stage, event: str) -> Route | None:
    """The stage's branch for an event named ``event``, if it has one."""
    target = (stage.on_event or {}).get(event)
    return None if target is None else Route(target.goto, target.exit)


def timeout_route(stage: Stage) -> Route | None:
    timeout = stage.on_timeout
    return None if timeout is None else Route(timeout.goto, timeout.exit)


def _edges(type_template: CampaignTypeTemplate, stage: Stage) -> Iterator[tuple[str, Route, bool]]:
    """(field, route, instant) for each edge; ``instant`` when it can fire at once."""
    waits = sum((message.wait for message in stage.messages), timedelta(0))
    limit = stage.max_time_in_stage
    drip_advances = stage.advance_when is None and stage.on_timeout is None
    instant_next = (drip_advances and waits == timedelta(0)) or (
        limit is not None and limit.then == "advance" and limit.after == timedelta(0)
    )
    yield "next", next_route(type_template, stage), instant_next
    for intent in stage.on_reply or {}:
        route = reply_route(stage, intent)
        assert route is not None
        yield f"on_reply.{intent}", route, False
    for event in stage.on_event or {}:
        route = event_route(stage, event)
        assert route is not None
        yield f"on_event.{event}", route, False
    timeout = timeout_route(stage)
    if timeout is not None and stage.on_timeout is not None:
        yield "on_timeout", timeout, stage.on_timeout.after == timedelta(0)


def problems(type_template: CampaignTypeTemplate) -> list[str]:
    """Every graph error, each naming the stage and field."""
    names = type_template.stage_names
    found: list[str] = []
    graph: dict[str, list[tuple[str, str, bool]]] = {name: [] for name in names}
    for stage in type_template.stages:
        for field, route, instant in _edges(type_template, stage):
            if route.stage is None:
                continue
            if route.stage not in names:
                found.append(
                    f"stage {stage.name!r} field {field}: unknown target stage "
                    f"{route.stage!r} (stages: {names})"
                )
                continue
            graph[stage.name].append((field, route.stage, instant))
    if found:
        return found
    reachable = _reachable(graph, names[0])
    found += [
        f"stage {name!r} field name: unreachable from the first stage {names[0]!r}"
        for name in names
        if name not in reachable
    ]
    loop = _instant_loop(graph)
    if loop is not None:
        first, field = loop[0]
        path = " -> ".join([name for name, _ in loop] + [first])
        found.append(f"stage {first!r} field {field}: loop without a wait ({path})")
    return found


def _reachable(graph: dict[str, list[tuple[str, str, bool]]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for _, target, _ in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _instant_loop(graph: dict[str, list[tuple[str, str, bool]]]) -> list[tuple[str, str]] | None:
    """A cycle of edges that fire at once, as (stage, field) pairs, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
        on_path = [name for name, _ in path]
        for field, target, instant in graph[node]:
            if not instant:
                continue
            here = [*path, (node, field)]
            if target in on_path or target == node:
                return here[[name for name, _ in here].index(target) :]
            if target not in done:
                loop = visit(target, here)
                if loop is not None:
                    return loop
        done.add(node)
        return None

    for name in graph:
        if name not in done:
            loop = visit(name, [])
            if loop is not None:
                return loop
    return None


def intents_used(stage: Stage) -> Iterator[tuple[str, str]]:
    """(field, intent) for every intent a stage refers to."""
    for intent in stage.on_reply or {}:
        yield f"on_reply.{intent}", intent
    if stage.advance_when is not None:
        yield from _rule_intents(stage.advance_when, "advance_when")


def _rule_intents(rule: Rule, where: str, field: str = "intent") -> Iterator[tuple[str, str]]:
    for name in getattr(rule, field) or []:
        yield f"{where}.{field}", name
    for kind, children in (("any", rule.any), ("all", rule.all)):
        for index, child in enumerate(children or []):
            yield from _rule_intents(child, f"{where}.{kind}.{index}", field)


def events_used(stage: Stage) -> Iterator[tuple[str, str]]:
    """(field, event) for every event a stage reacts to."""
    for event in stage.on_event or {}:
        yield f"on_event.{event}", event
    if stage.advance_when is not None:
        yield from _rule_intents(stage.advance_when, "advance_when", "event")


__all__ = [
    "Route",
    "event_route",
    "events_used",
    "intents_used",
    "next_route",
    "problems",
    "reply_route",
    "timeout_route",
]
