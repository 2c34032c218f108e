"""``python -m campaign_worker.entrypoints.cli``."""

import sys

from campaign_worker.entrypoints.cli import main

sys.exit(main())
