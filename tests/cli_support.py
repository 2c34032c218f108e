"""Run ``campaign-worker`` through its installed entry point, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXE = Path(sys.executable).parent / "campaign-worker"
# Settings come from the test, not from whoever runs it.
_OWN = ("CELERY_", "MONGODB_", "CLOCK_", "CAMPAIGN_")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``campaign-worker ARGS`` with a wide terminal (Rich tables unwrapped); ``stdin``
    is its input if given."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(_OWN)}
    base.update({"COLUMNS": "200", "NO_COLOR": "1", **(env or {})})
    return subprocess.run(
        [str(EXE), *args],
        env=base,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
