"""The review queue's contract (``ReplyReviewRepository``): the conversations holding a
reply, oldest first, by campaign; the one holding a given reply; labelled examples kept
once per reply and read back in resolution order. On every backend."""

from __future__ import annotations

from datetime import timedelta

from campaign_worker.domain.documents import ConversationState, ReplyReview
from campaign_worker.domain.reviews import ReplyLabel
from tests.contract.support import MINUTE, START, Store, state


def holding(
    user_id: str, *message_ids: str, campaign_id: str = "camp-1", at: int = 0
) -> ConversationState:
    """A conversation with a pending review per message id (held ``at`` minutes in)."""
    held = START + at * MINUTE
    reviews = [ReplyReview(message_id=m, held_at=held, suggested="positive") for m in message_ids]
    return state(
        user_id,
        campaign_id=campaign_id,
        next_action_at=None,
        reviews=reviews,
        review_pending_since=held if reviews else None,
    )


def label(message_id: str, intent: str = "positive", minutes: int = 0) -> ReplyLabel:
    return ReplyLabel(
        message_id=message_id,
        intent=intent,
        text=f"reply {message_id}",
        language="en",
        campaign_id="camp-1",
        conversation_id="c",
        resolved_at=START + minutes * MINUTE,
    )


def test_pending_is_the_held_conversations_oldest_first_by_campaign(store: Store) -> None:
    store.repos.conversations.insert_states(
        [
            holding("late", "m-late", at=30),
            holding("early", "m-early", at=5),
            holding("other-campaign", "m-x", campaign_id="camp-2", at=1),
            state("quiet"),  # holds nothing
            holding("resolved", at=0),  # its reviews are over: review_pending_since None
        ]
    )
    reviews = store.repos.reviews
    assert [s.user_id for s in reviews.pending(None, 10)] == ["other-campaign", "early", "late"]
    assert [s.user_id for s in reviews.pending("camp-1", 10)] == ["early", "late"]
    assert [s.user_id for s in reviews.pending(None, 2)] == ["other-campaign", "early"]
    assert reviews.pending("camp-9", 10) == []


def test_holding_finds_the_conversation_of_a_held_reply(store: Store) -> None:
    first, second = holding("a", "m-1", "m-2"), holding("b", "m-3")
    store.repos.conversations.insert_states([first, second, state("c")])
    reviews = store.repos.reviews
    assert reviews.holding("m-2") == first
    assert reviews.holding("m-3") == second
    assert reviews.holding("m-unknown") is None


def test_labels_are_kept_once_per_reply_and_read_in_resolution_order(store: Store) -> None:
    reviews = store.repos.reviews
    reviews.save_label(label("m-2", minutes=20))
    reviews.save_label(label("m-1", minutes=10))
    reviews.save_label(label("m-1", minutes=10))  # a replay: still one
    reviews.save_label(label("m-3", "opt_out", minutes=30))
    assert [x.message_id for x in reviews.labels(None)] == ["m-1", "m-2", "m-3"]
    since = list(reviews.labels(START + timedelta(minutes=20)))
    assert [(x.message_id, x.intent) for x in since] == [("m-2", "positive"), ("m-3", "opt_out")]
    assert since[0] == label("m-2", minutes=20)


def test_the_recount_counts_reviews_pending_and_resolved(store: Store) -> None:
    resolved = ReplyReview(
        message_id="m-0",
        status="resolved",
        held_at=START,
        suggested="other",
        intent="positive",
        resolved_at=START + MINUTE,
    )
    two_pending = holding("a", "m-1", "m-2")
    one_of_each = holding("b", "m-3").model_copy(
        update={"reviews": [resolved, *holding("b", "m-3").reviews]}
    )
    store.repos.conversations.insert_states([two_pending, one_of_each, state("c")])
    counts = store.repos.conversations.recount("camp-1")
    assert (counts.get("reviews.pending"), counts.get("reviews.resolved")) == (3, 1)
