"""The metrics recount: a campaign's metrics-document counters recomputed from its
conversations in one aggregation (``$facet`` over the ``campaign_id`` index), flattened to
field paths (``stage_metrics.<stage>.entered``, ``variants.<stage>.<variant>.sent``...)."""

from __future__ import annotations

from pymongo.collection import Collection

from campaign_worker.domain.aliases import Doc

_STATUS_FIELD = {
    "active": "active_conversations",
    "completed": "completed_conversations",
    "failed": "failed_conversations",
    "opted_out": "opted_out_conversations",
    "cancelled": "cancelled_conversations",
}


def recount_conversations(collection: Collection[Doc], campaign_id: str) -> dict[str, float]:
    """The counters of ``campaign_id``'s conversations, as field paths (zeros left out)."""
    result = list(collection.aggregate(_pipeline(campaign_id)))
    return _counts(result[0] if result else {"status": [], "messages": [], "stages": []})


def _pipeline(campaign_id: str) -> list[Doc]:
    return [
        {"$match": {"campaign_id": campaign_id}},
        {
            "$facet": {
                "status": [{"$group": {"_id": "$status", "n": {"$sum": 1}}}],
                "messages": [
                    {
                        "$group": {
                            "_id": None,
                            "sent": {"$sum": "$metrics.messages_sent"},
                            "received": {"$sum": "$metrics.messages_received"},
                        }
                    }
                ],
                "stages": _STAGES_FACET,
                **_SPLIT_FACETS,
            }
        },
    ]


def _counts(aggregate: Doc) -> dict[str, float]:
    """Flatten a conversation aggregation into metrics-document field paths."""
    counts: dict[str, float] = {"total_recipients": 0}
    for row in aggregate.get("status", []):
        counts["total_recipients"] += row["n"]
        counts[_STATUS_FIELD[str(row["_id"])]] = row["n"]
    for row in aggregate.get("messages", []):
        counts["message_metrics.total_sent"] = row["sent"]
        counts["message_metrics.total_received"] = row["received"]
    for row in aggregate.get("stages", []):
        stage = row["_id"]
        counts[f"stage_metrics.{stage}.entered"] = row["entered"]
        counts[f"stage_metrics.{stage}.completed"] = row["completed"]
        counts[f"stage_metrics.{stage}.total_duration_seconds"] = row["total_ms"] / 1000.0
    counts.update(_split_counts(aggregate))
    counts.update(_goal_counts(aggregate))
    return {key: value for key, value in counts.items() if value}


def _split_counts(aggregate: Doc) -> dict[str, float]:
    """The A/B split and holdout counters (``variants.*``, ``holdout.*``)."""
    counts: dict[str, float] = {}
    for row in aggregate.get("holdout", []):
        counts["holdout.conversations"] = counts.get("holdout.conversations", 0) + row["n"]
        counts["holdout.replies"] = counts.get("holdout.replies", 0) + row["replies"]
        counts[f"holdout.{row['_id']}"] = row["n"]
    for row in aggregate.get("variant_messages", []):
        key = row["_id"]
        path = f"variants.{key['stage']}.{key['variant']}"
        if key["direction"] == "outbound":
            counts[f"{path}.sent"] = counts.get(f"{path}.sent", 0) + row["n"]
            continue
        counts[f"{path}.replies"] = counts.get(f"{path}.replies", 0) + row["n"]
        if isinstance(key.get("intent"), str):
            counts[f"{path}.intents.{key['intent']}"] = row["n"]
    for row in aggregate.get("reviews", []):
        if row["_id"] in ("pending", "resolved"):
            counts[f"reviews.{row['_id']}"] = row["n"]
    for row in aggregate.get("variant_visits", []):
        path = f"variants.{row['_id']['stage']}.{row['_id']['variant']}"
        counts[f"{path}.conversations"] = row["visits"]
        counts[f"{path}.advanced"] = row["advanced"]
    return counts


def _goal_counts(aggregate: Doc) -> dict[str, float]:
    """Goal conversions (``goals.*``, the paths of domain/goals.conversion_paths)."""
    counts: dict[str, float] = {}

    def add(path: str, amount: float) -> None:
        counts[path] = counts.get(path, 0) + amount

    for row in aggregate.get("goals", []):
        key, base = row["_id"], f"goals.{row['_id']['event']}"
        add(f"{base}.converted", row["n"])
        add(f"{base}.seconds_to_convert", row["seconds"])
        add(f"{base}.stages.{key['stage']}.converted", row["n"])
        if key.get("holdout") is True:
            add(f"{base}.holdout.converted", row["n"])
            add(f"{base}.holdout.seconds_to_convert", row["seconds"])
    for row in aggregate.get("goal_variants", []):
        key = row["_id"]
        add(f"goals.{key['event']}.variants.{key['stage']}.{key['variant']}.converted", row["n"])
    return counts


# Entered and completed per stage, and the time spent in completed visits.
_STAGES_FACET: list[Doc] = [
    {"$unwind": "$stages"},
    {
        "$group": {
            "_id": "$stages.name",
            "entered": {"$sum": 1},
            "completed": {"$sum": {"$cond": ["$stages.completed", 1, 0]}},
            "total_ms": {
                "$sum": {
                    "$cond": [
                        "$stages.completed",
                        {
                            "$subtract": [
                                "$stages.exited_at",
                                "$stages.entered_at",
                            ]
                        },
                        0,
                    ]
                }
            },
        }
    },
]

# A/B split messages (``metadata.variant``) and holdout conversations, for the reconcile
# (the same rules as domain/splits.recount). Conversations without a variant message are
# dropped before their history is unwound.
_VARIANT = "$message_history.metadata.variant"
_WITH_VARIANTS: Doc = {"$match": {"message_history.metadata.variant": {"$type": "string"}}}
_VISIT_COMPLETED: Doc = {
    "$let": {
        "vars": {"visit": {"$arrayElemAt": ["$stages", "$_id.entry"]}},
        "in": "$$visit.completed",
    }
}
_CONVERTED: Doc = {"$match": {"conversion.event": {"$type": "string"}}}
_SPLIT_FACETS: Doc = {
    # Goal conversions (domain/goals.py) by event, stage and holdout; and per variant.
    "goals": [
        _CONVERTED,
        {
            "$group": {
                "_id": {
                    "event": "$conversion.event",
                    "stage": "$conversion.stage",
                    "holdout": "$conversion.holdout",
                },
                "n": {"$sum": 1},
                "seconds": {"$sum": "$conversion.seconds"},
            }
        },
    ],
    "goal_variants": [
        _CONVERTED,
        {"$unwind": "$conversion.variants"},
        {
            "$group": {
                "_id": {
                    "event": "$conversion.event",
                    "stage": "$conversion.variants.stage",
                    "variant": "$conversion.variants.variant",
                },
                "n": {"$sum": 1},
            }
        },
    ],
    # Replies held for review, pending and resolved (ConversationState.reviews).
    "reviews": [
        {"$match": {"reviews.status": {"$exists": True}}},
        {"$unwind": "$reviews"},
        {"$group": {"_id": "$reviews.status", "n": {"$sum": 1}}},
    ],
    "holdout": [
        {"$match": {"holdout": True}},
        {
            "$group": {
                "_id": "$status",
                "n": {"$sum": 1},
                "replies": {"$sum": "$metrics.messages_received"},
            }
        },
    ],
    # Sent and replies per stage, variant, direction and intent.
    "variant_messages": [
        _WITH_VARIANTS,
        {"$unwind": "$message_history"},
        _WITH_VARIANTS,
        {
            "$group": {
                "_id": {
                    "stage": "$message_history.metadata.stage",
                    "variant": _VARIANT,
                    "direction": "$message_history.direction",
                    "intent": "$message_history.metadata.intent",
                },
                "n": {"$sum": 1},
            }
        },
    ],
    # Stage visits a variant was sent in, and how many of them completed (advanced).
    "variant_visits": [
        _WITH_VARIANTS,
        {"$unwind": "$message_history"},
        _WITH_VARIANTS,
        {"$match": {"message_history.direction": "outbound"}},
        {
            "$group": {
                "_id": {
                    "conversation": "$_id",
                    "stage": "$message_history.metadata.stage",
                    "entry": "$message_history.metadata.entry",
                    "variant": _VARIANT,
                },
                "stages": {"$first": "$stages"},
            }
        },
        {
            "$group": {
                "_id": {"stage": "$_id.stage", "variant": "$_id.variant"},
                "visits": {"$sum": 1},
                # stages[entry].completed ($let, not "$stages.completed": secantusdb
                # does not traverse arrays in expressions).
                "advanced": {"$sum": {"$cond": [_VISIT_COMPLETED, 1, 0]}},
            }
        },
    ],
}


__all__ = ["recount_conversations"]
