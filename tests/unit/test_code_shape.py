"""The code's shape, held where issue 22 put it: small modules and functions, ports that
speak domain types and are all used, MongoDB only in the adapters, no Celery in the CLI's
imports and no function-level import of the Celery app."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "campaign_worker"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50
PORTS = ("service/ports.py", "service/delivery_ports.py", "service/review_ports.py")
APP = "campaign_worker.entrypoints.celery_app"


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_no_module_is_longer_than_400_lines() -> None:
    long = {
        name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_longer_than_50_lines() -> None:
    long = {
        f"{name(path)}:{node.name}": node.end_lineno - node.lineno + 1
        for path in MODULES
        for node in ast.walk(tree(path))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert long == {}


def _imports_the_app(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        named = {alias.name for alias in node.names}
        return module == APP or (module == "campaign_worker.entrypoints" and "celery_app" in named)
    return isinstance(node, ast.Import) and any(alias.name == APP for alias in node.names)


def test_no_function_imports_the_celery_app() -> None:
    """Modules that need the app import it at their top: no import dodges a cycle."""
    inside = [
        f"{name(path)}:{function.name}"
        for path in MODULES
        for function in ast.walk(tree(path))
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if _imports_the_app(node)
    ]
    assert inside == []


def test_the_cli_does_not_import_celery_or_its_worker() -> None:
    """The operator CLI builds its manager from bootstrap; Celery is imported only by the
    commands that send (replay, health), when they run."""
    code = "import sys, campaign_worker.entrypoints.cli; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    worker = [m for m in loaded if m.startswith(("celery", "kombu")) or m == APP]
    assert worker == []
    assert "campaign_worker.bootstrap" in loaded


def _port_methods(path: Path) -> list[tuple[str, str]]:
    protocols = [
        node
        for node in tree(path).body
        if isinstance(node, ast.ClassDef)
        and any(isinstance(base, ast.Name) and base.id == "Protocol" for base in node.bases)
    ]
    return [
        (protocol.name, method.name)
        for protocol in protocols
        for method in protocol.body
        if isinstance(method, ast.FunctionDef)
    ]


@pytest.mark.parametrize("port", PORTS)
def test_ports_speak_domain_types(port: str) -> None:
    """No ``Any`` (no ``dict[str, Any]``, no document) in a port's signatures."""
    text = (PACKAGE / port).read_text()
    assert re.findall(r"\bAny\b", text) == []
    assert "Doc" not in re.findall(r"\b\w+\b", text)


@pytest.mark.parametrize("port", PORTS)
def test_every_port_method_is_called_by_the_service(port: str) -> None:
    service = [p for p in (PACKAGE / "service").glob("*.py") if name(p) not in PORTS]
    calls = {
        node.func.attr
        for path in service
        for node in ast.walk(tree(path))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    unused = [f"{cls}.{method}" for cls, method in _port_methods(PACKAGE / port)]
    assert [m for m in unused if m.split(".")[1] not in calls] == []


OPERATOR = re.compile(r"^\$[a-zA-Z]+$")


def test_mongodb_operators_appear_only_in_the_adapters() -> None:
    found = [
        f"{name(path)}:{node.lineno} {node.value}"
        for path in MODULES
        if not name(path).startswith("adapters/")
        for node in ast.walk(tree(path))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and OPERATOR.match(node.value)
    ]
    assert found == []
