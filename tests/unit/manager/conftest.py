"""CampaignManager on the in-memory fakes of its ports and over the wire: every test in this
directory runs on both (``db`` is the same one)."""

from __future__ import annotations

import pytest

from campaign_worker.service.campaign_manager import CampaignManager
from tests import fakes

any_db = fakes.any_db  # fixture: each test on the in-memory fakes, and over the wire


@pytest.fixture
def manager(manager_on_both: CampaignManager) -> CampaignManager:
    """Every test here runs on the fakes and over the wire (``db`` is the same one)."""
    return manager_on_both
