"""librosa, with its numba kernels compiled by one process at a time on this machine.

librosa compiles numba kernels when some of its modules are imported (zero crossings, piptrack's parabolic
interpolation, peak picking) and others at their first call, and caches them beside its own files
(``__pycache__/*.nbi``, ``*.nbc``). Two processes that compile into an empty cache at once — two Ray feature
workers on a fresh install — can leave an index that points at the other's code, and from then on every process
that loads it segfaults inside ``piptrack`` (seen on a fresh clone: the first training run's feature workers
crashed again and again). So librosa is imported here, by :func:`load_librosa`, under an exclusive lock on a file
in the temp folder, and :func:`one_process_compiles` makes a feature function's first call in a process take the
same lock: the first process compiles and writes the cache alone, the others wait, then load it.

Once a process has made its first call under the lock, it leaves a marker in the numba cache's folder
(``NUMBA_CACHE_DIR``, or librosa's ``__pycache__``), named after what the cached code depends on (librosa, numba,
Python, the host CPU) and after the call (the function and its feature configuration). Later processes that find
the marker for their call only load what is cached, which any number of processes may do at once: they skip the
lock, and the feature workers of a run no longer start one after the other. Clearing numba's cache by hand
should remove the markers too (``mer-kernels-cached-*``); a new librosa or numba brings new names.

The import happens at the first call, not when ``mer.features`` is imported: a process that never computes a
spectrogram (an inference actor, the tagging driver) neither pays librosa's import (about a second on this
machine) nor queues behind the feature workers for the lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TypeVar

LOCK_PATH = os.path.join(tempfile.gettempdir(), "mer-librosa-numba.lock")

F = TypeVar("F", bound=Callable)


_in_process = threading.RLock()  # the file lock is taken once per process; nested holders pass through
_depth = 0


@contextlib.contextmanager
def compile_lock() -> Iterator[None]:
    """Held by one process of this machine at a time (unlocked where the temp folder cannot be written).
    Re-entrant within a process: a feature function that holds it may import librosa under it."""
    global _depth
    with _in_process:
        if _depth:
            _depth += 1
            try:
                yield
            finally:
                _depth -= 1
            return
        try:
            lock = open(LOCK_PATH, "a")  # noqa: SIM115 — held until the block ends
        except OSError:
            lock = None
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            _depth = 1
            yield
        finally:
            _depth = 0
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()


def _kernel_build() -> tuple[Path, str] | None:
    """Where numba caches librosa's kernels (``NUMBA_CACHE_DIR`` or numba's configured folder when set, else
    librosa's ``__pycache__``) and what the cached code depends on: librosa, numba, Python, the host CPU."""
    spec = importlib.util.find_spec("librosa")
    if spec is None or spec.origin is None:
        return None
    import llvmlite.binding  # numba's; librosa imports it anyway
    from numba.core import config as numba_config

    root = Path(numba_config.CACHE_DIR or os.path.join(os.path.dirname(spec.origin), "__pycache__"))
    build = (f"librosa-{importlib.metadata.version('librosa')}-numba-{importlib.metadata.version('numba')}"
             f"-py{sys.version_info.major}{sys.version_info.minor}-{llvmlite.binding.get_host_cpu_name()}")
    return root, build


def cached_marker(function: Callable, config: object) -> Path | None:
    """The file that says a process made ``function``'s first call with ``config`` under the lock, so the numba
    cache holds the kernels that call reaches (another configuration may reach others: librosa's ``piptrack``
    for odd frequency bands). None where librosa is not installed."""
    found = _kernel_build()
    if found is None:
        return None
    root, build = found
    called = hashlib.sha256(f"{function.__module__}.{function.__qualname__}:{config!r}".encode()).hexdigest()[:16]
    return root / f"mer-kernels-cached-{build}-{called}"


def _import_kernels_cached() -> bool:
    """Whether any first call was made under the lock with this build: librosa's import-time kernels are cached."""
    found = _kernel_build()
    return found is not None and any(found[0].glob(f"mer-kernels-cached-{found[1]}-*"))


def one_process_compiles(function: F) -> F:
    """``function`` whose first successful call in this process runs under :func:`compile_lock` (the numba
    kernels it reaches compile, or load from the cache, then), unless a process already made that call with the same
    ``config`` keyword since the cache was made (:func:`cached_marker`), which it marks after the call."""
    warm = False

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        nonlocal warm
        marker = None if warm else cached_marker(function, kwargs.get("config"))
        if warm or (marker is not None and marker.exists()):
            result = function(*args, **kwargs)
        else:
            with compile_lock():
                result = function(*args, **kwargs)
            try:
                if marker is not None and marker.parent.is_dir():
                    marker.touch()
            except OSError:  # a read-only install: every process keeps taking the lock, as before
                pass
        warm = True
        return result

    return wrapper  # type: ignore[return-value]


@functools.cache
def load_librosa() -> ModuleType:
    """librosa, imported (its numba kernels compiled or loaded) under :func:`compile_lock` the first time, or
    without it where the cache is already complete."""
    with contextlib.nullcontext() if _import_kernels_cached() else compile_lock():
        import librosa
        import librosa.core.audio  # noqa: F401 — the modules whose import compiles or loads numba kernels
        import librosa.core.pitch  # noqa: F401
        import librosa.util.utils  # noqa: F401

        return librosa
