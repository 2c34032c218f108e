"""The Dockerfile and its build context (parsed with docker-py, no engine needed)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    APP,
    DOCKERFILE,
    ROOT,
    command_of,
    queues_of,
    require_tool,
    run,
)

# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in lines]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_dockerfile_runtime_stage() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    ops = [op for op, _ in stage]
    # The package is installed with pip (from the wheels `pip wheel .` built in stage one).
    assert any(op == "RUN" and "pip install" in a and "campaign-worker" in a for op, a in stage)
    assert any(
        op == "RUN" and re.search(r"pip wheel .*\s\.$", a) for op, a in dockerfile_instructions()
    )
    assert ("COPY", "celeryconfig.py /app/celeryconfig.py") in stage
    env = " ".join(a for op, a in stage if op == "ENV")
    assert "PYTHONPATH=/app" in env
    # A non-root user, set before the command runs.
    user = [a for op, a in stage if op == "USER"]
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert ops.index("USER") < ops.index("CMD")


def test_dockerfile_default_command_is_the_worker(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cmd = json.loads(next(a for op, a in final_stage() if op == "CMD"))
    assert cmd[:4] == ["celery", "-A", APP, "worker"]
    assert queues_of(cmd) == queues_of(command_of(compose["services"]["worker"]))
    healthcheck = next(a for op, a in final_stage() if op == "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["campaign-worker", "health"]')


def docker_py_python() -> str:
    """The interpreter of the Debian docker-compose client, which ships docker-py."""
    binary = require_tool("docker-compose", "docker-compose")
    shebang = Path(binary).read_text(errors="replace").splitlines()[0]
    python = shebang[2:].strip().split()[0] if shebang.startswith("#!") else sys.executable
    if run([python, "-c", "import docker.utils.build"]).returncode != 0:
        pytest.skip(f"docker-py not importable by {python}")
    return python


def build_context(root: Path) -> set[str]:
    """The files Docker would send for ``root``, by docker-py's implementation of the rules."""
    script = (
        "import json, sys; from docker.utils.build import exclude_paths; "
        "patterns = [l.strip() for l in open(sys.argv[1]) "
        "if l.strip() and not l.lstrip().startswith('#')]; "
        "print(json.dumps(sorted(exclude_paths('.', patterns))))"
    )
    result = run([docker_py_python(), "-c", script, str(ROOT / ".dockerignore")], cwd=root)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_build_context_holds_what_the_image_needs() -> None:
    context = build_context(ROOT)
    assert {"pyproject.toml", "celeryconfig.py", "constraints.txt", "Dockerfile"} <= context
    assert "README.md" in context or not (ROOT / "README.md").exists()
    package = {
        str(path.relative_to(ROOT))
        for pattern in ("*.py", "*.yaml", "py.typed")
        for path in (ROOT / "campaign_worker").rglob(pattern)
        if "__pycache__" not in path.parts
    }
    assert package and package <= context
    assert all(path.split("/")[0] not in {".venv", ".git", "tests"} for path in context)


def test_build_context_leaves_out_venv_caches_and_test_data(tmp_path: Path) -> None:
    """.dockerignore applied to a tree holding everything a working copy accumulates."""
    wanted = [
        "Dockerfile",
        "pyproject.toml",
        "README.md",
        "celeryconfig.py",
        "campaign_worker/__init__.py",
        "campaign_worker/templates/default.yaml",
    ]
    unwanted = [
        ".venv/bin/python",
        ".git/HEAD",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v/x",
        "__pycache__/celeryconfig.cpython-311.pyc",
        "campaign_worker/__pycache__/settings.cpython-311.pyc",
        "campaign_worker/adapters/__pycache__/mongo.cpython-311.pyc",
        "campaign_worker.egg-info/PKG-INFO",
        "tests/unit/fixtures/templates/bad.yaml",
        "tests/conftest.py",
        "bench/results/run.json",
        "docs/deployment.md",
        "deploy/prometheus/alerts.yml",
        "celerybeat-schedule",
        "worker.log",
        ".tmp/secantus/data",
        "var/data",
        "build/lib/x.py",
        "dist/campaign_worker-0.1.0.whl",
    ]
    for name in wanted + unwanted:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    context = {path for path in build_context(tmp_path) if (tmp_path / path).is_file()}
    assert context == set(wanted)
