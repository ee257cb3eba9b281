"""Progress output of long runs (feature extraction, training steps, the tables), drawn by tqdm.

On a terminal a bar redraws in place. Anywhere else — ``ray job logs``, a Ray Train worker's log, CI — a redrawn
bar would be one endless line of carriage returns, so each update becomes a plain line, at most one every
:data:`LOG_INTERVAL_SECONDS` plus the last. Everything is written to the process's own stdout: Ray Train patches
``print`` on its workers to both echo and log each line, which would show it twice in the driver's output.
"""
from __future__ import annotations

import sys
from typing import IO, Iterable, TypeVar

from tqdm.auto import tqdm

LOG_INTERVAL_SECONDS = 15.0  # between two progress lines in a log (a terminal redraws ten times a second)

T = TypeVar("T")


class _Lines:
    """A stream for tqdm that turns each redraw (``\\r`` + the bar) into a line of its own."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _stdout() -> IO[str]:
    return sys.__stdout__ or sys.stdout


def progress_bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str,
                 enabled: bool = True, unit: str = "it") -> tqdm:
    """A tqdm bar over ``iterable`` (or ``total`` items, advanced with ``update``) labelled ``desc``; nothing is
    printed when not ``enabled``. Lines instead of redraws when stdout is not a terminal (see the module)."""
    stream = _stdout()
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled,
                file=stream if terminal else _Lines(stream), dynamic_ncols=terminal, ascii=not terminal,
                mininterval=0.1 if terminal else LOG_INTERVAL_SECONDS)


def progress_line(message: str, *, enabled: bool = True) -> None:
    """Print one line of progress (an epoch's summary, a stage beginning) without breaking an open bar."""
    if enabled:
        tqdm.write(message, file=_stdout())
        _stdout().flush()
