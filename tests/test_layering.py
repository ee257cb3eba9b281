"""Data flows one way: storage → features → model → catalog. These tests keep the import graph so."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mer"

# module -> what it must never import (prefix match on absolute module names).
FORBIDDEN = {
    "config": ["mer.", "torch", "ray"],
    "errors": ["mer.", "torch", "ray"],
    "midi": ["torch", "ray", "mer.model", "mer.catalog", "mer.storage"],
    "tokens": ["torch", "ray", "mer.model", "mer.catalog", "mer.storage"],
    "render": ["torch", "ray", "mer.model", "mer.catalog", "mer.storage"],
    "audio": ["torch", "ray", "mer.model", "mer.catalog", "mer.storage"],
    "features": ["torch", "ray", "mer.model", "mer.catalog", "mer.storage"],
    "cache": ["torch", "ray", "mer.model", "mer.catalog", "mer.storage"],
    "model": ["ray", "mer.features", "mer.cache", "mer.storage", "mer.catalog", "mer.midi", "mer.audio"],
    "storage": ["torch", "ray", "mer.model", "mer.features", "mer.catalog"],
    "catalog": ["torch", "ray", "mer.model", "mer.features", "mer.storage"],
    "metrics": ["torch", "ray", "mer.model", "mer.features"],
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_imports_only_downstream(module: str) -> None:
    path = PACKAGE / f"{module}.py"
    if not path.exists():
        pytest.skip(f"mer/{module}.py does not exist")
    bad = sorted(
        name for name in imported_modules(path)
        for prefix in FORBIDDEN[module]
        if name == prefix.rstrip(".") or name.startswith(prefix if prefix.endswith(".") else prefix + ".")
        or name == prefix
    )
    assert not bad, f"mer/{module}.py imports {bad}, against the one-way data flow"


def test_nothing_imports_jobs() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert not any(n == "jobs" or n.startswith("jobs.") for n in imported_modules(path)), path
