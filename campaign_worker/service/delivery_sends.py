"""One dispatcher batch's sends on one channel, concurrent: a bounded thread pool around
the channel's synchronous client (at most ``limit`` sends in flight), send slots taken
from the shared rate limit in blocks (as many as can start at once), and a deadline after
which no send starts (the rows' lease must still cover the longest send).

Each send starts right after its slot was taken, so the rate limit's window counts sends
as they reach the provider, whatever the number of processes sharing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import structlog

from campaign_worker.domain.delivery import OutboxRow, Outgoing
from campaign_worker.domain.errors import (
    PermanentDeliveryError,
    TransientDeliveryError,
    TransientError,
)
from campaign_worker.service.delivery_ports import Channel, RateLimiter

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Job:
    """A row to send: its channel's name and the message as the provider gets it."""

    row: OutboxRow
    name: str
    message: Outgoing


@dataclass(frozen=True)
class Sent:
    """What came of one job: the provider's id, or its error, or no send at all (the
    deadline passed before it could start)."""

    job: Job
    provider_id: str | None = None
    error: TransientDeliveryError | PermanentDeliveryError | None = None
    started: bool = True


@dataclass
class ChannelRun:
    outcomes: list[Sent] = field(default_factory=list)
    deferred: list[Job] = field(default_factory=list)  # no slot within the wait budget
    defer_seconds: float = 0.0  # when the deferred rows' slot is expected
    lost: list[Job] = field(default_factory=list)  # the lease was gone at the attempt
    error: TransientError | None = None  # the limiter failed: the rest did not start
    started: bool = False  # the attempts were counted (rows not sent are to be uncounted)


@dataclass
class Budget:
    """What a batch may still spend: seconds of waiting for slots, and the monotonic time
    after which no send starts."""

    wait: float
    deadline: float


# Called once before the first send of a channel: counts the attempt and extends the
# lease of these jobs' rows; returns those still this dispatcher's.
Start = Callable[[list[Job]], list[Job]]


class ChannelSender:
    """Sends one channel's jobs of a batch (``run``)."""

    def __init__(
        self,
        channel: Channel,
        limit: int,
        limiter: RateLimiter,
        budget: Budget,
        sleep: Callable[[float], None],
    ) -> None:
        self.channel, self.limit, self.limiter = channel, max(1, limit), limiter
        self.budget, self.sleep = budget, sleep

    def run(self, jobs: list[Job], start: Start) -> ChannelRun:
        run = ChannelRun()
        queue, started = list(jobs), False
        running: set[Future[Sent]] = set()
        workers = min(self.limit, len(jobs)) or 1
        with ThreadPoolExecutor(workers, thread_name_prefix=f"send-{self.channel.name}") as pool:
            while queue or running:
                free = self.limit - len(running)
                if queue and free > 0:
                    ready, queue = self._slots(queue, min(free, len(queue)), run)
                    if ready and not started:
                        ready, started = self._start(start, ready, queue, run), True
                    running |= {pool.submit(self._send, job) for job in ready}
                if running:
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    run.outcomes.extend(future.result() for future in done)
        return run

    def _start(
        self, start: Start, ready: list[Job], queue: list[Job], run: ChannelRun
    ) -> list[Job]:
        """The attempt of every job not deferred: one write for the channel's batch."""
        everyone = ready + queue
        try:
            ours = {job.row.id for job in start(everyone)}
        except TransientError as exc:  # the store: nothing of this channel starts
            run.error = exc
            run.outcomes.extend(Sent(job, started=False) for job in everyone)
            queue.clear()
            return []
        run.started = True
        run.lost.extend(job for job in everyone if job.row.id not in ours)
        queue[:] = [job for job in queue if job.row.id in ours]
        return [job for job in ready if job.row.id in ours]

    def _slots(self, queue: list[Job], wanted: int, run: ChannelRun) -> tuple[list[Job], list[Job]]:
        """Jobs that may start now, and the rest (none when they are deferred)."""
        if time.monotonic() > self.budget.deadline:
            run.outcomes.extend(Sent(job, started=False) for job in queue)
            return [], []
        try:
            granted, wait_for = self.limiter.take(self.channel.name, wanted)
        except TransientError as exc:
            run.error = exc
            run.outcomes.extend(Sent(job, started=False) for job in queue)
            return [], []
        if granted > 0:
            return queue[:granted], queue[granted:]
        if wait_for > self.budget.wait:
            run.deferred.extend(queue)
            run.defer_seconds = wait_for
            return [], []
        self.budget.wait -= wait_for
        self.sleep(wait_for)
        return [], queue

    def _send(self, job: Job) -> Sent:
        if time.monotonic() > self.budget.deadline:
            return Sent(job, started=False)
        try:
            return Sent(job, self.channel.send(job.message))
        except (TransientDeliveryError, PermanentDeliveryError) as exc:
            return Sent(job, error=exc)
        except Exception as exc:  # a channel's bug must not lose the batch's other outcomes
            log.exception("delivery_channel_error", message_id=job.row.id, channel=job.name)
            return Sent(job, error=TransientDeliveryError(f"channel error ({type(exc).__name__})"))


__all__ = ["Budget", "ChannelRun", "ChannelSender", "Job", "Sent", "Start"]
