"""Data flows one way — storage → features → model → catalog — and these tests keep the import graph so.

Every module under ``mer/`` is named by exactly one rule below (a new module no rule names fails
:func:`test_every_module_is_named_by_one_rule`); each rule puts it in a layer, and a layer may import only the
layers listed for it. Imports are read from the source (``ast``), lazy ones inside functions and ``TYPE_CHECKING``
ones included, so hiding an import in a function does not hide it from the rules or from the cycle check.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mer"

RULES: tuple[tuple[str, str], ...] = (
    ("mer", "root"),
    ("mer.config", "config"),
    ("mer.errors", "errors"),
    ("mer.lazy", "lazy"),
    ("mer.readahead", "readahead"),
    ("mer.labels", "labels"),
    ("mer.storage", "storage"),
    ("mer.features", "features"),
    ("mer.features.*", "features"),
    ("mer.model", "model"),
    ("mer.model.*", "model"),
    ("mer.catalog", "catalog"),
    ("mer.catalog.*", "catalog"),
    ("mer.train", "train"),
    ("mer.train.*", "train"),
    ("mer.evaluation", "evaluation"),
    ("mer.evaluation.*", "evaluation"),
    ("mer.tagging", "tagging"),
    ("mer.tagging.*", "tagging"),
)
"""(module name pattern, layer): every module under mer/ matches exactly one."""

MAY_IMPORT: dict[str, frozenset[str]] = {
    "root": frozenset(),
    "config": frozenset(),
    "errors": frozenset(),
    "lazy": frozenset(),
    "readahead": frozenset(),
    "labels": frozenset({"config"}),
    "storage": frozenset({"config", "errors", "readahead"}),
    "features": frozenset({"config", "errors", "labels", "storage"}),
    "model": frozenset({"config", "errors", "lazy", "labels", "storage", "features"}),
    "catalog": frozenset({"config", "errors", "labels"}),
    "train": frozenset({"config", "errors", "labels", "storage", "features", "model"}),
    "evaluation": frozenset({"config", "errors", "labels", "storage", "features", "model", "train"}),
    "tagging": frozenset({"config", "errors", "lazy", "labels", "storage", "features", "model", "catalog"}),
}
"""The layers of ours each layer may import, besides modules of its own subpackage."""

FORBIDDEN_LIBRARIES: dict[str, tuple[str, ...]] = {
    "config": ("torch", "ray"),
    "errors": ("torch", "ray"),
    "lazy": ("torch", "ray"),
    "readahead": ("torch", "ray"),
    "labels": ("torch", "ray"),
    "storage": ("torch", "ray"),
    "features": ("torch", "ray"),
    "model": ("ray",),
    "catalog": ("torch", "ray"),
}
"""Libraries a layer never imports (feature tasks and the catalog stay light; the model runs without Ray)."""

RAY_ONLY_IN = frozenset({"mer.train.dataset", "mer.train.loop", "mer.tagging.pipeline", "mer.tagging.attempts"})
"""Ray is imported only where it is used: extraction tasks, Ray Train, the Ray Data pipeline (and its feature
tasks' attempt ledger)."""

ONE_STORAGE_STACK: dict[str, frozenset[str]] = {
    "boto3": frozenset({"mer.storage"}),
    "botocore": frozenset({"mer.storage"}),
    "pyarrow.fs": frozenset({"mer.train.loop"}),
}
"""Object storage is one stack, boto3 in :mod:`mer.storage`; pyarrow.fs only where Ray Train's ``RunConfig``
wants a filesystem (:func:`mer.train.loop.ray_storage`)."""

SUBPACKAGES = ("mer.features", "mer.model", "mer.catalog", "mer.train", "mer.evaluation", "mer.tagging")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def mer_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str, known: Iterable[str]) -> set[str]:
    """Every module ``path`` imports: for ``from A import b``, ``A.b`` when that is a module of ours, else ``A``."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def layer_of(name: str, rules: Iterable[tuple[str, str]] = RULES) -> list[str]:
    """The layers of every rule that names module ``name`` (exactly one for a well-covered module)."""
    return [layer for pattern, layer in rules if fnmatchcase(name, pattern)]


def subpackage_of(name: str) -> str | None:
    return next((p for p in SUBPACKAGES if name == p or name.startswith(p + ".")), None)


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module → modules it imports) as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    modules = mer_modules()
    return {name: {m for m in imports(path, name, modules) if m in modules} for name, path in modules.items()}


def all_imports() -> dict[str, set[str]]:
    modules = mer_modules()
    return {name: imports(path, name, modules) for name, path in modules.items()}


# --- the rules ---------------------------------------------------------------------------------------------------


def test_every_module_is_named_by_one_rule() -> None:
    modules = mer_modules()
    assert len(modules) > 30, f"found only {sorted(modules)} under {PACKAGE}"
    unnamed = sorted(name for name in modules if not layer_of(name))
    assert not unnamed, f"modules no layering rule names (add them to RULES in {Path(__file__).name}): {unnamed}"
    ambiguous = {name: layer_of(name) for name in modules if len(layer_of(name)) > 1}
    assert not ambiguous, f"modules named by several rules: {ambiguous}"
    unused = [pattern for pattern, _ in RULES if not any(fnmatchcase(name, pattern) for name in modules)]
    assert not unused, f"rules that name no module (stale): {unused}"


def one_layer(name: str) -> str | None:
    """The layer of a module named by exactly one rule (the others fail the coverage test), else None."""
    layers = layer_of(name)
    return layers[0] if len(layers) == 1 else None


def test_layers_import_only_the_layers_below() -> None:
    bad = []
    for name, targets in import_graph().items():
        layer = one_layer(name)
        for target in sorted(targets):
            same_subpackage = subpackage_of(name) is not None and subpackage_of(name) == subpackage_of(target)
            target_layer = one_layer(target)
            if not same_subpackage and (layer is None or target_layer not in MAY_IMPORT[layer]):
                bad.append(f"{name} ({layer}) imports {target} ({target_layer})")
    assert not bad, "imports against the one-way data flow:\n" + "\n".join(bad)


def test_libraries_stay_where_they_belong() -> None:
    bad = []
    for name, targets in all_imports().items():
        layer = one_layer(name)
        for target in sorted(targets):
            root = target.split(".")[0]
            if root in FORBIDDEN_LIBRARIES.get(layer, ()):
                bad.append(f"{name} ({layer}) imports {target}")
            if root == "ray" and name not in RAY_ONLY_IN:
                bad.append(f"{name} imports {target}; Ray belongs only in {sorted(RAY_ONLY_IN)}")
    assert not bad, "\n".join(bad)


def imported_names(path: Path) -> set[str]:
    """Every dotted name ``path`` imports, whatever the spelling: ``import a.b``, ``from a import b`` and
    ``from a.b import c`` all count as importing ``a.b`` (and ``a``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            full = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            full = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in full:
            parts = name.split(".")
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def test_one_object_storage_stack() -> None:
    bad = [f"{name} imports {library}; it belongs only in {sorted(allowed)}"
           for name, path in mer_modules().items() for library, allowed in ONE_STORAGE_STACK.items()
           if library in imported_names(path) and name not in allowed]
    assert not bad, "\n".join(bad)
    for library, allowed in ONE_STORAGE_STACK.items():  # and the rule is not stale
        assert any(library in imported_names(mer_modules()[name]) for name in allowed), library


def test_other_subpackages_are_imported_through_their_package() -> None:
    """``from mer.features import read_midi``, never ``from mer.features.midi import ...``, outside mer.features:
    each subpackage's ``__init__`` is its public face."""
    bad = [f"{name} imports {target}" for name, targets in import_graph().items() for target in sorted(targets)
           if subpackage_of(target) and target != subpackage_of(target) and subpackage_of(name) != subpackage_of(target)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_imports_jobs() -> None:
    bad = [f"{name} imports {target}" for name, targets in all_imports().items() for target in targets
           if target == "jobs" or target.startswith("jobs.")]
    assert not bad, bad


# --- the checks themselves can fail -------------------------------------------------------------------------------


def test_the_storage_check_sees_every_spelling_of_an_import(tmp_path: Path) -> None:
    for source in ("import pyarrow.fs as pafs", "from pyarrow import fs", "from pyarrow.fs import S3FileSystem",
                   "def f():\n    import pyarrow.fs"):
        (tmp_path / "m.py").write_text(source + "\n")
        assert "pyarrow.fs" in imported_names(tmp_path / "m.py"), source
    (tmp_path / "m.py").write_text("import pyarrow.parquet as pq\nfrom pyarrow import fsspec_helpers\n")
    assert "pyarrow.fs" not in imported_names(tmp_path / "m.py")


def test_the_checks_catch_an_unnamed_module_and_a_cycle() -> None:
    assert layer_of("mer.new_stage") == []  # a new top-level module: no rule names it
    assert layer_of("mer.features.midi") == ["features"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
