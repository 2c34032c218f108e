"""``campaign-worker health`` and ``campaign-worker demo``."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer


def health(
    worker: Annotated[
        str | None, typer.Option(help="ping only this worker node (e.g. celery@host)")
    ] = None,
    skip_worker: Annotated[
        bool, typer.Option("--skip-worker", help="check broker and MongoDB only")
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds per check")] = 3.0,
) -> None:
    """Check broker, MongoDB and worker; print a JSON report.

    Exit code: a bitmask of failures, 1 broker, 2 MongoDB, 4 worker (0 when healthy).
    """
    from campaign_worker.entrypoints.health import run_health
    from campaign_worker.settings import get_settings

    settings = get_settings()
    client: Any = None
    if not skip_worker:
        # A client of the broker is all a ping needs: the worker's app is not loaded here.
        from celery import Celery

        client = Celery("campaign-worker-health", broker=settings.celery_broker_url)
    try:
        report = run_health(
            settings, app=client, worker=worker, check_workers=not skip_worker, timeout=timeout
        )
    finally:
        if client is not None:
            client.close()
    sys.stdout.write(report.as_json() + "\n")
    raise typer.Exit(report.exit_code)


def demo(
    recipients: Annotated[int, typer.Option(min=1, help="simulated recipients")] = 250,
    speed: Annotated[
        float,
        typer.Option(
            help="simulated seconds per real second (6 h per second; much faster and the "
            "embedded MongoDB stand-in falls behind the simulated clock)"
        ),
    ] = 21_600.0,
    timeout: Annotated[float, typer.Option(help="real seconds at most")] = 300.0,
    concurrency: Annotated[int, typer.Option(help="worker processes")] = 2,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process", help="drive CampaignManager directly (no Celery), with a manual clock"
        ),
    ] = False,
    webhook: Annotated[
        bool,
        typer.Option(
            "--webhook",
            help="deliver through the webhook channel to a local receiver that verifies "
            "signatures and reports delivery statuses back",
        ),
    ] = False,
) -> None:
    """Run a sample campaign end to end and print its funnel.

    Uses MONGODB_URI / CELERY_BROKER_URL when set, else embedded ones.
    """
    from campaign_worker.demo.cli import DemoOptions, run_demo

    options = DemoOptions(recipients, speed, timeout, concurrency, in_process, webhook)
    raise typer.Exit(run_demo(options))
