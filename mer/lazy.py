"""A package's names imported from their module on first use (PEP 562), so that a process that needs one module
of a package does not pay for importing the others: :mod:`mer.model` without torch for a driver that reads an
artifact's config, :mod:`mer.tagging`'s feature workers and actors without the catalog. Imports nothing of ours."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """``__getattr__`` and ``__all__`` for ``package``: each name in ``homes[module]`` is imported from
    ``package.module`` when it is first asked for, then kept in the package's namespace."""
    home_of = {name: module for module, names in homes.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = home_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__, sorted(home_of)
