"""How often each item's feature work began in a pass, so that an item whose worker keeps dying fails instead of
hanging the run (the Ray Data pipeline's feature tasks; :mod:`mer.tagging.pipeline`).

A module of its own, light to import: every feature worker unpickles :func:`extract_window_rows_counted` from
here, and needs neither the catalog nor the driver's planning to run it.
"""
from __future__ import annotations

from typing import Any

from mer.config import MerConfig
from mer.tagging.prepare import extract_window_rows, failed_item_rows

FEATURE_ATTEMPTS = 3
"""Attempts at one item's features before it fails as "the worker died". Ray Data retries a feature task whose
worker died without limit (and Ray 2.60 offers no supported per-operator limit: ``max_retries`` would go through
the remote-args pass-through that Ray 2.64 removes), so one file that crashes a decoder natively would hang the
night's run. Each item's attempts are counted instead, in an :class:`AttemptLedger` actor: the retried task skips
an item that has already begun this many times without ending, and the rest of its block is tagged."""


class AttemptLedger:
    """Per pass, the items whose feature work began and the ones that ended (a Ray actor; zero CPUs). A worker
    that dies leaves its item begun and not ended; when Ray retries the task, :meth:`begin` says how often."""

    def __init__(self) -> None:
        self.unfinished: dict[str, int] = {}

    def begin(self, key: str) -> int:
        """Count an attempt at ``key``; returns the attempts so far that did not end, this one included."""
        self.unfinished[key] = self.unfinished.get(key, 0) + 1
        return self.unfinished[key]

    def end(self, key: str) -> None:
        self.unfinished.pop(key, None)


def extract_window_rows_counted(row: dict[str, Any], *, ledger: Any, config: MerConfig,
                                **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`~mer.tagging.prepare.extract_window_rows`, unless this item's worker already died
    :data:`FEATURE_ATTEMPTS` times: then its failure row (transient, so the next run tries it again)."""
    import ray

    key = str(row["key"])
    attempts = ray.get(ledger.begin.remote(key))
    if attempts > FEATURE_ATTEMPTS:
        rows = failed_item_rows(row, config=config, stage="features", reason=(
            f"the worker processing this item died {attempts - 1} times (a crash in a decoder, or out of memory); "
            "retried by the next run"))
    else:
        rows = extract_window_rows(row, config=config, **kwargs)
    # Not awaited: an actor runs one caller's calls in order, so this worker's next begin() sees it. A worker
    # killed before the message leaves counts one attempt too many for an item that ended, never one too few.
    ledger.end.remote(key)
    return rows
