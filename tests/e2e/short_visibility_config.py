"""``celeryconfig`` with Redis's unacked sweep made fast, for the visibility-timeout test
(``CELERY_CONFIG_MODULE=tests.e2e.short_visibility_config``; the timeout itself comes from
``CELERY_VISIBILITY_TIMEOUT`` as in production).

kombu scans for unacked messages older than the visibility timeout about every
``unacked_restore_interval`` x ``unacked_restore_throttle`` seconds (10 x 10 by default);
here every second, so a redelivery shows within a test's patience.
"""

from __future__ import annotations

import celeryconfig as _base
from celeryconfig import *  # noqa: F403 - every production setting, then the overrides

broker_transport_options = {
    **_base.broker_transport_options,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
