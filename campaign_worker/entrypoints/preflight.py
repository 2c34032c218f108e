"""Start-up checks: a worker that cannot serve must not consume.

Run in the worker's parent process (``worker_init``) before the pool forks and before
the consumer connects, so a bad template or setting stops the worker with a non-zero exit
instead of acknowledging every message into a failure.
"""

from __future__ import annotations

from campaign_worker.adapters.template_files import TemplateFiles
from campaign_worker.domain.errors import ConfigurationError, InvalidTemplateError
from campaign_worker.settings import Settings, load_settings

EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h): a supervisor should not just restart it


def check_configuration() -> Settings:
    """Validate the settings and load every template; raise ``ConfigurationError``."""
    settings = load_settings()
    try:
        TemplateFiles(settings.campaign_templates_dir)
    except InvalidTemplateError as exc:
        raise ConfigurationError(str(exc)) from None
    return settings
