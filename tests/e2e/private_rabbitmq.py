"""A RabbitMQ node of the test's own: ``rabbitmq-server`` (Debian's package) started as a
separate node (its own name, AMQP and distribution ports, data and cookie in a temp dir),
so a test can restart its broker without touching the machine's RabbitMQ."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from kombu import Connection

from campaign_worker.demo.embedded import free_port, wait_for_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")


class PrivateRabbitMQ:
    """Messages survive a restart as RabbitMQ keeps them: durable queues (Celery declares
    its queues durable) and persistent messages (Celery's default delivery mode), stored
    under ``dir``, which a restart keeps."""

    def __init__(self, directory: Path) -> None:
        if not (SERVER.exists() and CTL.exists()):
            pytest.skip("needs rabbitmq-server (Debian package rabbitmq-server)")
        self.dir = directory
        self.port = free_port()
        self.node = f"cwtest{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir),  # the node's own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_BASE": str(self.dir),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [str(SERVER)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for_port(self.port, timeout=60)
        with Connection(self.url, connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=20, interval_start=1, interval_step=1)

    def stop(self) -> None:
        """SIGTERM: RabbitMQ stops the node cleanly (what a service manager sends)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL to the node's whole process group (the Erlang VM and its helpers): no
        clean stop; what survives is what the node had written to its data directory."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """Queue name -> (ready, unacknowledged), from rabbitmqctl."""
        result = subprocess.run(
            [
                str(CTL),
                "-n",
                self.node,
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        counts: dict[str, tuple[int, int]] = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3:
                counts[parts[0]] = (int(parts[1]), int(parts[2]))
        return counts
