"""Fault suite (pytest marker ``fault``): real worker, beat, broker and database-server
processes, faults injected while a campaign runs, and every scenario ending with the
invariant checker passing.

The e2e fixtures (processes, brokers, the wire database) are
reused as they are; scenario support lives in modules of this package.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import *  # noqa: F403 - the e2e fixtures, reused by every scenario


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/fault/" in str(item.fspath):
            item.add_marker(pytest.mark.fault)
