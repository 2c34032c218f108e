"""docs/architecture.md's module table names every module under campaign_worker/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "campaign_worker"


def _table_rows() -> list[str]:
    lines = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("| module | job |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def _named(row: str) -> set[str]:
    """Module paths (relative to campaign_worker/) a row names; a bare ``x.py`` is in the
    folder of the path named before it in the row (``entrypoints/envelope.py``,
    ``consumer.py``), or of the row's folder (`demo/`, `entrypoints/cli/`)."""
    named: set[str] = set()
    folder = ""
    for token in re.findall(r"`([^`]+)`", row):
        token = token.removeprefix("campaign_worker/")
        if token.endswith("/"):
            folder = token
        elif token.endswith(".py"):
            if "/" in token:
                folder = token.rsplit("/", 1)[0] + "/"
                named.add(token)
            else:
                named.update({folder + token, token})
    return named


def test_every_module_has_a_row() -> None:
    modules = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }
    named = set().union(*(_named(row) for row in _table_rows()))
    assert sorted(modules - named) == []


def test_the_table_names_no_module_that_is_gone() -> None:
    named = set().union(*(_named(row) for row in _table_rows()))
    paths = {name for name in named if "/" in name or (PACKAGE / name).exists()}
    gone = [name for name in paths if not (PACKAGE / name).exists()]
    assert gone == []
