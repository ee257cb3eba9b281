"""librosa, with its numba kernels compiled by one process at a time on this machine.

librosa compiles numba kernels when some of its modules are imported (zero crossings, piptrack's parabolic
interpolation, peak picking) and others at their first call, and caches them beside its own files
(``__pycache__/*.nbi``, ``*.nbc``). Two processes that compile into an empty cache at once — two Ray feature
workers on a fresh install — can leave an index that points at the other's code, and from then on every process
that loads it segfaults inside ``piptrack`` (seen on a fresh clone: the first training run's feature workers
crashed again and again). So librosa is imported here, by :func:`load_librosa`, under an exclusive lock on a file
in the temp folder, and :func:`one_process_compiles` makes a feature function's first call in a process take the
same lock: the first process compiles and writes the cache alone, the others wait, then load it.

Once a process has made its first call under the lock, it leaves a marker in the numba cache's folder (librosa's
``__pycache__`` or ``NUMBA_CACHE_DIR``, so it goes when the cache goes; named after the librosa and numba
versions). Later processes that find it only load what is cached, which any number of processes may do at once:
they skip the lock, and the feature workers of a run no longer start one after the other.

The import happens at the first call, not when ``mer.features`` is imported: a process that never computes a
spectrogram (an inference actor, the tagging driver) neither pays librosa's import (about a second on this
machine) nor queues behind the feature workers for the lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.metadata
import importlib.util
import os
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


def cached_marker() -> Path | None:
    """The file that says librosa's numba cache holds every kernel the features use (None where librosa is not
    installed). numba caches librosa's kernels under ``NUMBA_CACHE_DIR`` when it is set, else beside librosa."""
    spec = importlib.util.find_spec("librosa")
    if spec is None or spec.origin is None:
        return None
    root = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(os.path.dirname(spec.origin), "__pycache__")
    versions = f"{importlib.metadata.version('librosa')}-{importlib.metadata.version('numba')}"
    return Path(root) / f"mer-kernels-cached-librosa-{versions}"


def _kernels_cached() -> bool:
    marker = cached_marker()
    return marker is not None and marker.exists()


def _mark_kernels_cached() -> None:
    marker = cached_marker()
    try:
        if marker is not None and marker.parent.is_dir():
            marker.touch()
    except OSError:  # a read-only install: every process keeps taking the lock, as before
        pass


def one_process_compiles(function: F) -> F:
    """``function`` whose first successful call in this process runs under :func:`compile_lock` (the numba
    kernels it reaches compile, or load from the cache, then), unless a process already did so since the cache was
    made (:func:`cached_marker`); after that first call the cache is marked complete."""
    warm = False

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        nonlocal warm
        if warm or _kernels_cached():
            result = function(*args, **kwargs)
        else:
            with compile_lock():
                result = function(*args, **kwargs)
            _mark_kernels_cached()
        warm = True
        return result

    return wrapper  # type: ignore[return-value]


@functools.cache
def load_librosa() -> ModuleType:
    """librosa, imported (its numba kernels compiled or loaded) under :func:`compile_lock` the first time, or
    without it where the cache is already complete."""
    with contextlib.nullcontext() if _kernels_cached() else compile_lock():
        import librosa
        import librosa.core.audio  # noqa: F401 — the modules whose import compiles or loads numba kernels
        import librosa.core.pitch  # noqa: F401
        import librosa.util.utils  # noqa: F401

        return librosa
