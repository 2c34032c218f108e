"""The deployment-file tests' shared fixture: the compose file as the real client reads it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.support import SECRETS, compose_config, require_tool


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """`docker-compose config`: validated, interpolated and normalised by the real client."""
    require_tool("docker-compose", "docker-compose")
    # A clean environment, so host variables (e.g. REDIS_HOST_PORT) cannot change the result.
    # The two secrets it takes from the environment are given (see test_secrets_...).
    result = compose_config(SECRETS)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config
