"""A run's lifecycle, around whatever processes the items: begin (model, catalog run), the passes (listing, what
is new), end (flush, close the run with its status and counts, metrics).

:func:`begin_run` reads the model artifact's config and meta.json (its version and feature config; never the
weights), starts a catalog run (closing runs whose heartbeat stopped) and its :class:`Heartbeat`. :func:`passes`
then lists the store page by page (:func:`~mer.tagging.storage.list_pages`): every item of a page is refreshed in
the catalog (``see_items``), the page's keys are looked up in the catalog, the items this model already tagged
(or failed for their content) at the same object version are left out, and so are the listing rejects already
recorded at the same object version; the rest are yielded in passes of at most ``TagConfig.page_size`` items,
which the caller processes (one Ray Data pass each) before the listing goes on. Once the listing is complete,
items it did not find are marked deleted (``mark_missing``; never after a listing that stopped early). The driver
never holds the whole listing: a page of the listing, its catalog lookups and one pass. A night over an
unchanged store yields no pass at all. :func:`end_run` closes the run whether the work succeeded or not, and
returns the :class:`TagSummary`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from mer.catalog import CatalogWriter, FailureRecord, ListedItem
from mer.config import MerConfig, TagConfig
from mer.features import FeatureCache, soundfont_path
from mer.storage import ObjectStore, open_store
from mer.tagging.metrics import JobMetrics
from mer.tagging.prepare import describe_error
from mer.tagging.recorder import Recorder
from mer.tagging.storage import Item, list_pages

log = logging.getLogger(__name__)


class Heartbeat:
    """Proves the run alive: every ``seconds`` a daemon thread stamps the catalog run's ``heartbeat_at`` and the
    metrics' heartbeat, and pushes the heartbeat to the Pushgateway when there is one. A killed job stops beating:
    the next run closes it as failed (``CatalogWriter.start_run``) and the alert ``MerRunStoppedHeartbeating``
    fires. Never raises: a missed beat is logged, and the run goes on."""

    def __init__(self, *, writer: CatalogWriter, run_id: int, metrics: JobMetrics, seconds: float,
                 pushgateway: str | None) -> None:
        self.writer, self.run_id, self.metrics = writer, run_id, metrics
        self.seconds = max(0.05, float(seconds))
        self.pushgateway = pushgateway
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_stopped, name=f"mer-heartbeat-{run_id}", daemon=True)
        self._warned = False

    def start(self) -> None:
        """Beat now (the catalog stamped the start already) and then every ``seconds``."""
        self.metrics.heartbeat()
        if self.pushgateway:
            self.metrics.push_heartbeat(self.pushgateway)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.seconds):
            self.beat()

    def beat(self) -> None:
        self.metrics.heartbeat()
        if self.pushgateway:
            self.metrics.push_heartbeat(self.pushgateway)
        try:
            alive = self.writer.heartbeat(self.run_id)
        except Exception as error:  # noqa: BLE001 — the catalog may be briefly unreachable; the next beat retries
            alive = True
            log.warning("run %d: could not stamp its heartbeat in the catalog: %s", self.run_id,
                        describe_error(error))
        if not alive and not self._warned:
            self._warned = True
            log.warning("run %d: the catalog no longer shows it running (another run found its heartbeat too old "
                        "and closed it as failed); its labels are still written", self.run_id)


@dataclass(frozen=True)
class TagSummary:
    """What a run did. ``seconds`` is the run's wall time; ``stage_seconds`` sums the per-item seconds of each
    stage (``list``, ``read``, ``features``, ``inference``, ``write``; work in parallel tasks adds up, so the sum
    can exceed the wall time). ``deferred`` items were left for a later run by ``limit``. Of the items that got
    features, ``features_cached`` read them from the feature cache and ``features_extracted`` computed them;
    ``passes`` is the number of pipeline passes (0 for an unchanged store)."""

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
    features_cached: int = 0
    features_extracted: int = 0
    passes: int = 0

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
            "deferred": self.deferred, "features_cached": self.features_cached,
            "features_extracted": self.features_extracted, "passes": self.passes, "seconds": round(self.seconds, 3),
            "items_per_second": round(self.items_per_second, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
        }


@dataclass
class Plan:
    """A run in the driver: what it tags with, where it writes, and its counts so far."""

    store: ObjectStore
    artifact_url: str
    config: MerConfig
    model_version: str
    writer: CatalogWriter
    run_id: int
    metrics: JobMetrics
    started: float
    metrics_port: int | None
    recorder: Recorder
    cache: FeatureCache | None = None
    heartbeat: Heartbeat | None = None
    endpoint_url: str | None = None  # the S3-compatible endpoint of every s3:// location: store, model, cache
    listed: int = 0
    skipped: int = 0
    deferred: int = 0
    passes: int = 0
    inference: str | None = None  # how the model computed the labels so far (runs.inference), as the actors report


def begin_run(
    store: str | ObjectStore, *, catalog: str, model: str | None, storage: str | None, endpoint_url: str | None,
    tagging: TagConfig, render_missing_audio: bool, metrics_port: int | None, pushgateway: str | None,
    cache: str | FeatureCache | None = None,
) -> Plan:
    """Read the model's config and version, open the store, the catalog and the feature cache, start a run."""
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
        artifact = read_artifact(model, storage=storage, endpoint_url=endpoint_url)
        if render_missing_audio:
            soundfont_path(artifact.config.features)  # a missing SoundFont is a config error, not 1000 bad items
        store = store if isinstance(store, ObjectStore) else open_store(store, endpoint_url=endpoint_url)
        if cache is not None and not isinstance(cache, FeatureCache):
            cache = FeatureCache(cache, endpoint_url=endpoint_url)
        writer = CatalogWriter(catalog)
        run_id = writer.start_run(artifact.version, dead_after=timedelta(seconds=tagging.dead_after_seconds))
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
                writer=writer, run_id=run_id, metrics=metrics, started=started, metrics_port=port,
                recorder=recorder, cache=cache, endpoint_url=endpoint_url,
                heartbeat=Heartbeat(writer=writer, run_id=run_id, metrics=metrics, seconds=tagging.heartbeat_seconds,
                                    pushgateway=pushgateway))
    log.info("run %d: model %s, store %r, feature cache %r", run_id, artifact.version, store, cache)
    try:
        plan.heartbeat.start()
    except BaseException:
        end_run(plan, success=False, pushgateway=pushgateway)
        raise
    return plan


def passes(plan: Plan, *, prefix: str, force: bool, limit: int | None, page_size: int) -> Iterator[list[Item]]:
    """The items to tag, in passes of at most ``page_size``, from a listing read and compared page by page.

    Every item of a page is refreshed in the catalog (:meth:`CatalogWriter.see_items`: seen now, not deleted).
    Each page's new rejects are recorded as ``list`` failures (a reject already recorded at the same object
    version is not recorded again) and its counts added to the plan; an item is left out when this model
    labelled it at this object version, or failed it there because of its content (failures that were not the
    content's fault carry no version and are retried). Once the whole listing has gone by — and only then —
    the items under ``prefix`` it did not find are marked deleted (:meth:`CatalogWriter.mark_missing`). Before
    each pass the recorder is told which items to expect (:meth:`Recorder.start_pass`). ``limit``: at most this
    many items in all; the rest are counted as ``deferred``.
    """
    recorder, metrics, writer = plan.recorder, plan.metrics, plan.writer
    todo: list[Item] = []
    room = limit
    reject_keys: list[str] = []
    listed_at = datetime.now(timezone.utc)
    known_rejects = {} if force else writer.open_rejects()
    pages = list_pages(plan.store, prefix, page_size=page_size)
    while True:
        list_start = time.perf_counter()
        with metrics.timed("list"):
            page = next(pages, None)
            if page is not None:
                items, rejects = page
                writer.see_items([ListedItem(item.stem, item.version, item.modalities) for item in items],
                                 seen_at=listed_at)
                keys = [item.stem for item in items]
                tagged = {} if force else writer.tagged_versions(plan.model_version, keys=keys)
                known_bad = {} if force else writer.failed_versions(plan.model_version, keys=keys)
            else:
                # The listing is complete: what is true of the store now is that the items it did not find are
                # gone. (A listing that failed or stopped early never gets here.)
                gone = writer.mark_missing(plan.run_id, listed_at=listed_at, prefix=prefix, reject_keys=reject_keys)
        recorder.stage_seconds["list"] += time.perf_counter() - list_start
        if page is None:
            break
        fresh = [item for item in items if item.version not in (tagged.get(item.stem), known_bad.get(item.stem))]
        new_rejects = [reject for reject in rejects if known_rejects.get(reject.key) != reject.version]
        reject_keys.extend(reject.key for reject in rejects)
        skipped = len(items) - len(fresh) + len(rejects) - len(new_rejects)
        if room is not None:
            plan.deferred += max(0, len(fresh) - room)
            fresh = fresh[:room]
            room -= len(fresh)
        plan.listed += len(items) + len(rejects)
        plan.skipped += skipped
        metrics.record_listed(len(items) + len(rejects))
        metrics.record_skipped(skipped)
        for reject in new_rejects:
            recorder.fail(FailureRecord(key=reject.key, object_version=reject.version, stage="list",
                                        reason=reject.reason))
        todo.extend(fresh)
        while len(todo) >= page_size:
            yield _start_pass(plan, todo[:page_size])
            todo = todo[page_size:]
    log.info("run %d: listed %d items and unusable objects; %d already done; %d items gone from the store%s",
             plan.run_id, plan.listed, plan.skipped, gone,
             f", {plan.deferred} left for later (limit {limit})" if plan.deferred else "")
    if todo:
        yield _start_pass(plan, todo)


def _start_pass(plan: Plan, todo: list[Item]) -> list[Item]:
    plan.passes += 1
    plan.recorder.start_pass(todo)
    log.info("run %d: pass %d, %d items to tag (%d listed so far, %d already done)", plan.run_id, plan.passes,
             len(todo), plan.listed, plan.skipped)
    return todo


def end_run(plan: Plan, *, success: bool, pushgateway: str | None) -> TagSummary:
    """Flush, close the run (status and counts), finish and push the metrics."""
    recorder = plan.recorder
    status = "succeeded" if success else "failed"
    if plan.heartbeat is not None:
        plan.heartbeat.stop()  # before the writer closes; finish_run stamps the last heartbeat
    try:
        if success:
            recorder.end_pass()
    except BaseException:
        status, success = "failed", False
        raise
    finally:
        seconds = time.monotonic() - plan.started
        summary = TagSummary(
            run_id=plan.run_id, model_version=plan.model_version, status=status, listed=plan.listed,
            tagged=recorder.tagged, skipped=plan.skipped, failed=recorder.failed, deferred=plan.deferred,
            seconds=seconds, stage_seconds=dict(recorder.stage_seconds), metrics_port=plan.metrics_port,
            features_cached=recorder.features_from["cache"], features_extracted=recorder.features_from["extraction"],
            passes=plan.passes,
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
