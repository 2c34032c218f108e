"""This process's ``Container`` (``bootstrap.py``): built on first use, after any fork.

No Celery here: the operator CLI takes its ``CampaignManager`` from this module, built
straight from ``bootstrap``. A worker process installs its own (with metrics and command
timing: ``worker_lifecycle.py``) as it starts; ``use_builder`` makes that the default for
whatever builds one later in the process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from campaign_worker.bootstrap import Container, bootstrap
from campaign_worker.settings import get_settings

Builder = Callable[[], Container]

_lock = threading.Lock()
_container: Container | None = None
_container_pid: int | None = None


def plain() -> Container:
    """The real adapters from the settings (the environment); indexes left alone."""
    return bootstrap(get_settings(), create_indexes=False)


_builder: Builder = plain


def use_builder(builder: Builder) -> None:
    """How this process builds its Container from now on."""
    global _builder
    _builder = builder


def container() -> Container:
    """This process's Container (built on first use if none was installed)."""
    global _container, _container_pid
    with _lock:
        if _container is None or _container_pid != os.getpid():
            _container = _builder()
            _container_pid = os.getpid()
        return _container


def set_container(value: Container | None) -> None:
    """Install a Container for this process (tests, a worker child); None drops it
    (unclosed: it may be a parent's, inherited over a fork)."""
    global _container, _container_pid
    with _lock:
        _container = value
        _container_pid = os.getpid() if value is not None else None


def close_container() -> None:
    global _container, _container_pid
    with _lock:
        if _container is not None and _container_pid == os.getpid():
            _container.close()
        _container = None
        _container_pid = None


__all__ = ["Builder", "close_container", "container", "plain", "set_container", "use_builder"]
