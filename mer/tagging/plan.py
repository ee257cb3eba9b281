"""A run's lifecycle, around whatever processes the items: begin (model, catalog run, listing, what is new) and
end (flush, close the run with its status and counts, metrics).

:func:`begin_run` decides everything in the driver before any item is processed: it loads the model artifact
(for its version and feature config), starts a catalog run, lists the store and leaves out the items this model
already tagged (or failed for their content) at the same object version. :func:`end_run` closes the run whether
the work succeeded or not, and returns the :class:`TagSummary`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from mer.catalog import CatalogWriter, FailureRecord
from mer.config import MerConfig, TagConfig
from mer.errors import MerError
from mer.features import soundfont_path
from mer.tagging.metrics import JobMetrics
from mer.tagging.prepare import describe_error
from mer.tagging.recorder import Recorder
from mer.tagging.storage import Item, ObjectStore, list_items, open_store

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TagSummary:
    """What a run did. ``seconds`` is the run's wall time; ``stage_seconds`` sums the per-item seconds of each
    stage (``list``, ``read``, ``features``, ``inference``, ``write``; work in parallel tasks adds up, so the sum
    can exceed the wall time). ``deferred`` items were left for a later run by ``limit``."""

    run_id: int
    model_version: str
    status: str
    listed: int
    tagged: int
    skipped: int
    failed: int
    deferred: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    metrics_port: int | None = None

    @property
    def items_per_second(self) -> float:
        """Items tagged or failed (i.e. processed) per wall-clock second."""
        return (self.tagged + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict[str, int]:
        """The run's counts, as the ``runs`` table stores them."""
        return {"listed": self.listed, "tagged": self.tagged, "skipped": self.skipped, "failed": self.failed}

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "model_version": self.model_version, "status": self.status, **self.counts(),
            "deferred": self.deferred, "seconds": round(self.seconds, 3),
            "items_per_second": round(self.items_per_second, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


@dataclass
class Plan:
    """Everything decided in the driver before any item is processed."""

    store: ObjectStore
    artifact_url: str
    config: MerConfig
    model_version: str
    writer: CatalogWriter
    run_id: int
    metrics: JobMetrics
    todo: list[Item]
    rejects: list[tuple[str, str]]
    listed: int
    skipped: int
    deferred: int
    started: float
    metrics_port: int | None
    recorder: Recorder


def begin_run(
    store: str | ObjectStore, *, catalog: str, model: str | None, storage: str | None, prefix: str,
    endpoint_url: str | None, force: bool, tagging: TagConfig, render_missing_audio: bool, metrics_port: int | None,
    pushgateway: str | None, limit: int | None,
) -> Plan:
    from mer.model import read_artifact

    started = time.monotonic()
    metrics = JobMetrics()
    port = None
    if metrics_port:
        try:
            port = metrics.serve(metrics_port)
            log.info("serving metrics on :%d/metrics", port)
        except OSError as error:  # e.g. the port is taken: the night's tagging matters more than its metrics
            log.warning("cannot serve metrics on port %d (%s); running without a metrics endpoint", metrics_port, error)
    try:
        # The driver needs the version and the feature config: config.json and meta.json, never the weights
        # (the inference actors load those, once each).
        artifact = read_artifact(model, storage=storage)
        if render_missing_audio:
            soundfont_path(artifact.config.features)  # a missing SoundFont is a config error, not 1000 bad items
        store = store if isinstance(store, ObjectStore) else open_store(store, endpoint_url=endpoint_url)
        writer = CatalogWriter(catalog)
        run_id = writer.start_run(artifact.version)
    except BaseException:
        # No run to record (no model or no catalog), but the failure still reaches the dashboards and alerts.
        metrics.finish(success=False)
        if pushgateway:
            metrics.push(pushgateway)
        metrics.stop()
        raise
    recorder = Recorder(writer=writer, run_id=run_id, metrics=metrics, batch_size=tagging.batch_size,
                        use_attention=artifact.config.model.use_attention, expected={})
    plan = Plan(store=store, artifact_url=artifact.url, config=artifact.config, model_version=artifact.version,
                writer=writer, run_id=run_id, metrics=metrics, todo=[], rejects=[], listed=0, skipped=0, deferred=0,
                started=started, metrics_port=port, recorder=recorder)
    log.info("run %d: model %s, store %r, prefix %r", run_id, artifact.version, store, prefix)
    try:
        list_start = time.perf_counter()
        with metrics.timed("list"):
            items, rejects = list_items(store, prefix)
            # Up to date: labelled by this model at this object version, or known to fail there (bad content;
            # failures that were not the content's fault carry no version and are retried).
            tagged = {} if force else writer.tagged_versions(artifact.version)
            known_bad = {} if force else writer.failed_versions(artifact.version)
        recorder.stage_seconds["list"] += time.perf_counter() - list_start
        todo = [item for item in items if item.version not in (tagged.get(item.stem), known_bad.get(item.stem))]
        plan.skipped = len(items) - len(todo)
        if limit is not None and len(todo) > limit:
            plan.deferred = len(todo) - limit
            todo = todo[:limit]
        plan.todo, plan.rejects, plan.listed = todo, rejects, len(items) + len(rejects)
        metrics.record_listed(plan.listed)
        metrics.record_skipped(plan.skipped)
        recorder.expected = {item.stem: ",".join(item.modalities) for item in todo}
        log.info("run %d: listed %d items and %d unusable objects; %d to tag, %d already tagged%s",
                 run_id, len(items), len(rejects), len(todo), plan.skipped,
                 f", {plan.deferred} left for later (limit {limit})" if plan.deferred else "")
        for key, reason in rejects:
            recorder.fail(FailureRecord(key=key, object_version=None, stage="list", reason=reason))
    except BaseException:
        end_run(plan, success=False, pushgateway=pushgateway)
        raise
    return plan


def end_run(plan: Plan, *, success: bool, pushgateway: str | None) -> TagSummary:
    """Flush, close the run (status and counts), finish and push the metrics."""
    recorder = plan.recorder
    status = "succeeded" if success else "failed"
    try:
        if success:
            recorder.flush()
            missing = sorted(set(recorder.expected) - recorder.seen)
            if missing:  # never expected: each item yields rows; if it happens, say so rather than lose them
                raise MerError(f"{len(missing)} items never came back from the pipeline, e.g. {missing[:3]}")
    except BaseException:
        status, success = "failed", False
        raise
    finally:
        seconds = time.monotonic() - plan.started
        summary = TagSummary(
            run_id=plan.run_id, model_version=plan.model_version, status=status, listed=plan.listed,
            tagged=recorder.tagged, skipped=plan.skipped, failed=recorder.failed, deferred=plan.deferred,
            seconds=seconds, stage_seconds=dict(recorder.stage_seconds), metrics_port=plan.metrics_port,
        )
        try:
            plan.writer.finish_run(plan.run_id, status=status, counts=summary.counts())
        except Exception as error:  # noqa: BLE001 — keep the original error, if any; this one is secondary
            log.error("could not close run %d in the catalog: %s", plan.run_id, describe_error(error))
            success = False
        plan.metrics.finish(success=success)
        if pushgateway:
            plan.metrics.push(pushgateway)
        plan.metrics.stop()
        plan.writer.close()
        log.info("run %d %s: %d listed, %d tagged, %d skipped, %d failed in %.1f s (%.2f items/s)", plan.run_id,
                 status, summary.listed, summary.tagged, summary.skipped, summary.failed, seconds,
                 summary.items_per_second)
    return summary
