"""The driver's side of a run: window rows come back in any order → items → labels and failures → the catalog.

:class:`WindowGrouper` regroups an item's window rows; :class:`Recorder` turns each finished item into a
:class:`~mer.catalog.LabelRecord` (windows merged by :func:`mer.model.aggregate_windows`) or a
:class:`~mer.catalog.FailureRecord`, writes them in batches (one transaction each), and keeps the run's counts,
stage seconds and metrics.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mer.catalog import CatalogWriter, FailureRecord, LabelRecord
from mer.config import QUADRANTS
from mer.errors import MerError
from mer.features import PITCH_CLASS_NAMES, estimate_key
from mer.tagging.metrics import STAGES, JobMetrics
from mer.tagging.prepare import describe_error
from mer.tagging.storage import Item, printable_key

log = logging.getLogger(__name__)

WRITE_EVERY_SECONDS = 10.0
"""A partial write batch is flushed after this long, so a slow run still shows progress in the catalog."""


@dataclass
class FinishedItem:
    """A finished item: its window rows (predictions) or its failure."""

    key: str
    rows: list[dict[str, Any]]


class Recorder:
    """Collects finished items into write batches, writes them, and keeps the counts and metrics."""

    def __init__(self, *, writer: CatalogWriter, run_id: int, metrics: JobMetrics, batch_size: int,
                 use_attention: bool, expected: Mapping[str, str]) -> None:
        self.writer, self.run_id, self.metrics = writer, run_id, metrics
        self.batch_size = max(1, batch_size)
        self.use_attention = use_attention
        self.expected = dict(expected)  # key -> modalities, of the items sent through the pipeline
        self.labels: list[tuple[LabelRecord, str]] = []
        self.failures: list[FailureRecord] = []
        self.tagged = self.failed = 0
        self.stage_seconds = {stage: 0.0 for stage in STAGES}
        self.last_flush = time.monotonic()
        self.seen: set[str] = set()  # of the items of the current pass that came back
        self.features_from = {"cache": 0, "extraction": 0}

    # Passes -------------------------------------------------------------------------------------------------------

    def start_pass(self, items: Sequence[Item]) -> None:
        """The items about to be sent through the pipeline: each must come back (as a label or a failure)."""
        self.expected = {item.stem: ",".join(item.modalities) for item in items}
        self.seen = set()

    def end_pass(self) -> None:
        """Write what is pending, so that a run killed between passes loses nothing of the passes before.

        Raises:
            MerError: an item of the pass never came back (the pipeline records those as failures first, so
                this means a bug; better a failed run than a lost item).
        """
        self.flush()
        missing = sorted(set(self.expected) - self.seen)
        if missing:
            raise MerError(f"{len(missing)} items never came back from the pipeline, e.g. {missing[:3]}")
        self.expected, self.seen = {}, set()

    # Items --------------------------------------------------------------------------------------------------------

    def fail(self, record: FailureRecord) -> None:
        self.failures.append(record)
        self._maybe_flush()

    def finish_item(self, done: FinishedItem) -> None:
        """One item's windows are all back: observe its stage times, turn it into a label or a failure."""
        from mer.model import aggregate_windows

        self.seen.add(done.key)
        first = done.rows[0]
        for stage, column in (("read", "read_seconds"), ("features", "features_seconds")):
            self._observe(stage, float(first[column]))
        source = str(first.get("features_from", ""))
        if source in self.features_from:
            self.features_from[source] += 1
        self._observe("inference", float(sum(float(r.get("inference_seconds", 0.0)) for r in done.rows)))
        failed = next((r for r in done.rows if r["failed_stage"]), None)
        if failed is not None:
            # A failure pinned to its object version is skipped by later runs until the objects change; one that
            # is not the content's fault carries no version, so the next run retries it.
            version = None if bool(failed["failed_transient"]) else str(first["object_version"])
            self.fail(FailureRecord(key=done.key, object_version=version,
                                    stage=str(failed["failed_stage"]), reason=str(failed["failed_reason"]),
                                    modalities=str(first["modalities"]) or None))
            return
        try:
            piece = aggregate_windows({
                "name": np.array([done.key] * len(done.rows)),
                **{k: np.stack([np.asarray(r[k]) for r in done.rows])
                   for k in ("window_index", "window_start", "quadrant_probs", "arousal_prob", "valence_prob",
                             "attention")},
            })[0]
            # The catalog derives arousal/valence from the quadrant probabilities; the binary V/A head's own
            # outputs are kept under their explicit names. A label tagged from one modality because reading the
            # other failed for a reason that is not the content's (store or network error) is partial: it keeps
            # the object version it was read at, and the next run tags the item again.
            label = LabelRecord(
                key=done.key,
                object_version=str(first["object_version"]),
                modalities=str(first["modalities"]),
                duration_s=float(first["duration"]),
                quadrant=piece.label,
                quadrant_probs=piece.quadrant_probs,
                va_head_arousal_prob=piece.arousal_prob,
                va_head_valence_prob=piece.valence_prob,
                branches_used=str(first["branches_used"]),
                attention=piece.attention if self.use_attention else None,
                timeline=[
                    {"start_s": start, "quadrant": QUADRANTS[int(np.argmax(probs))], "p_q1": probs[0],
                     "p_q2": probs[1], "p_q3": probs[2], "p_q4": probs[3], "va_head_arousal_prob": a,
                     "va_head_valence_prob": v}
                    for start, probs, a, v in zip(piece.window_starts, piece.window_quadrant_probs,
                                                  piece.window_arousal_probs, piece.window_valence_probs)
                ],
                problems=str(first["problems"]) or None,
                partial=bool(first["failed_transient"]),
                **piece_key(first),
            )
        except Exception as error:  # noqa: BLE001 — e.g. NaN probabilities: this item fails, the run goes on
            self.fail(FailureRecord(key=done.key, object_version=str(first["object_version"]), stage="inference",
                                    reason=f"invalid model output: {describe_error(error)}",
                                    modalities=str(first["modalities"]) or None))
            return
        self.labels.append((label, piece.label))
        self._maybe_flush()

    def _observe(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] += seconds
        self.metrics.stage_seconds.labels(stage=stage).observe(seconds)

    # Writing ------------------------------------------------------------------------------------------------------

    def _maybe_flush(self) -> None:
        pending = len(self.labels) + len(self.failures)
        if pending >= self.batch_size or (pending and time.monotonic() - self.last_flush > WRITE_EVERY_SECONDS):
            self.flush()

    def flush(self) -> None:
        """Write the pending labels and failures in one transaction. If the batch is refused, write its records
        one by one so only the record at fault becomes a ``write`` failure (if even that cannot be written, the
        catalog itself is unusable and the error propagates: the run fails)."""
        if not self.labels and not self.failures:
            return
        labels, failures = self.labels, self.failures
        self.labels, self.failures = [], []
        start = time.perf_counter()
        try:
            self.writer.write_batch(self.run_id, [label for label, _ in labels], failures)
            written_labels, written_failures = labels, failures
        except Exception as error:  # noqa: BLE001
            log.warning("catalog refused a batch of %d records (%s); writing them one by one",
                        len(labels) + len(failures), describe_error(error))
            written_labels, written_failures = [], []
            for record in failures:
                try:
                    self.writer.write_batch(self.run_id, [], [record])
                except Exception as item_error:  # noqa: BLE001 — e.g. a key the database cannot store as is
                    log.warning("catalog refused failure of %r (%s); storing it under a printable key",
                                record.key, describe_error(item_error))
                    record = dataclasses.replace(record, key=printable_key(record.key),
                                                 reason=printable_key(record.reason))
                    self.writer.write_batch(self.run_id, [], [record])  # if even this fails, the catalog is unusable
                written_failures.append(record)
            for label, quadrant in labels:
                try:
                    self.writer.write_batch(self.run_id, [label], [])
                    written_labels.append((label, quadrant))
                except Exception as item_error:  # noqa: BLE001
                    record = FailureRecord(key=label.key, object_version=None, stage="write",
                                           reason=describe_error(item_error), modalities=label.modalities)
                    self.writer.write_batch(self.run_id, [], [record])
                    written_failures.append(record)
        seconds = time.perf_counter() - start
        self._observe("write", seconds)
        self.last_flush = time.monotonic()
        self.tagged += len(written_labels)
        self.failed += len(written_failures)
        self.metrics.record_tagged(quadrant for _, quadrant in written_labels)
        for record in written_failures:
            self.metrics.record_failed(record.stage)
        log.info("wrote %d labels, %d failures in %.2f s (run %d: %d tagged, %d failed so far)",
                 len(written_labels), len(written_failures), seconds, self.run_id, self.tagged, self.failed)


class WindowGrouper:
    """Groups window rows (arriving in any order, split over any batches) back into items.

    Rows are told apart by (item, ``window_index``): a feature task that Ray retries after it had already emitted
    rows emits them again, and a row seen before — or a row of an item already finished — is dropped, so a retry
    neither double counts a window nor turns a good item into "only k of n windows came back".
    """

    def __init__(self) -> None:
        self.open: dict[str, dict[int, dict[str, Any]]] = {}  # item key -> window index -> row
        self.finished: set[str] = set()

    def add_batch(self, batch: Mapping[str, np.ndarray]) -> Iterator[FinishedItem]:
        columns = list(batch)
        for i in range(len(batch["name"])):
            key = str(batch["name"][i])
            if key in self.finished:
                continue
            rows = self.open.setdefault(key, {})
            rows.setdefault(int(batch["window_index"][i]), {k: batch[k][i] for k in columns})
            if len(rows) >= int(batch["n_windows"][i]):
                del self.open[key]
                self.finished.add(key)
                yield FinishedItem(key=key, rows=[rows[index] for index in sorted(rows)])


def piece_key(row: dict) -> dict[str, object]:
    """The label's key fields (``musical_key``, ``mode``, ``key_confidence``) from a window row's ``pitch_classes``
    (the piece's histogram, :func:`mer.features.estimate_key`); all None when the row has none or it is empty."""
    histogram = np.asarray(row.get("pitch_classes", ()), dtype=np.float64)
    if histogram.shape != (12,) or not histogram.any():
        return {"musical_key": None, "mode": None, "key_confidence": None}
    key = estimate_key(histogram)
    return {"musical_key": PITCH_CLASS_NAMES[key.tonic], "mode": key.mode, "key_confidence": key.confidence}
