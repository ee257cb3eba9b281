"""Nightly tagging on Ray Data: object store → features → batch inference → SQL catalog (issues 4 and 11).

One run, :func:`tag_store`::

    driver:  read the model's config.json and meta.json (not its weights) ─ start a run
             then, page by page (TagConfig.page_size keys): list ─ look the page's keys up in the catalog ─ skip
             what this model already tagged at the same object version (unless ``force``) ─ once a pass's worth
             of items is due, one Ray Data pass over them:
    Ray:     from_items ─ flat_map(extract_window_rows_counted) parallel CPU tasks, one item at a time
                                                                (attempts per item counted: AttemptLedger):
                              read → feature cache? → decode in blocks / [render] → extract_features → window rows
                        ─ map_batches(WindowPredictor)          actor pool, one GPU per actor when GPUs exist;
                                                                windows bucketed by token length
    driver:  iter_batches ─ group windows per item ─ aggregate_windows ─ CatalogWriter.write_batch (one
             transaction per batch of items; idempotent upserts) ─ everything written before the next page

Rows between the stages are compact (:func:`~mer.tagging.prepare.window_row`): tokens unpadded in the smallest
integer type, no frames for absent audio, a failure row with no arrays at all. The driver holds one page of the
listing, its catalog lookups and one pass, never the whole listing; a night over an unchanged store runs no pass
and starts no Ray at all. A job killed between (or during) passes and started again re-lists, skips what was
written and tags the rest: every item exactly once.

Bad input never stops a run. Everything an item can raise inside a Ray task is caught per item and travels on
as data (a *failure row*: one empty window with ``failed_stage``/``failed_reason`` set, which the
predictor passes through untouched), so one item never kills a batch. An item with one unusable modality is
tagged from the other and the problem is recorded in ``labels.problems``; an item with nothing usable becomes a
``failures`` row with its stage and reason. Listing rejects (unsafe keys, duplicates) are ``list`` failures.

Incremental: an item is skipped when this model version already labelled it at the same object version, or
failed it there because of its content (a bad file stays bad until it changes). Failures that are not the
content's fault (store or network errors, unexpected errors) are recorded without an object version, so the next
run retries them. ``force`` re-tags everything. A re-run over an unchanged store starts no Ray work at all: it
loads the model, lists, reads the catalog's versions and closes the run. A listing reject is recorded once per
object version. Every read is pinned to the version the listing saw; an object that changed in between fails its
item for this run (transient), so no label pairs one version with another's bytes.

Counts: ``listed`` (items + listing rejects) = ``tagged`` + ``skipped`` + ``failed`` (+ ``deferred``: items left
for a later run by ``limit``).

:func:`~mer.tagging.loop.tag_store_local` does the same work with the same functions in one process, item after
item, without Ray: the benchmark's baseline (``tests/benchmarks/bench_tagging.py``) and a check that the pipeline
changes nothing but the speed.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mer.catalog import FailureRecord
from mer.config import TagConfig
from mer.features import FeatureCache
from mer.storage import ObjectStore
from mer.tagging.attempts import AttemptLedger, extract_window_rows_counted
from mer.tagging.plan import Plan, TagSummary, begin_run, end_run, passes
from mer.tagging.predictor import BUCKET_POOL, WindowPredictor
from mer.tagging.prepare import item_row
from mer.tagging.recorder import WindowGrouper
from mer.tagging.storage import Item

FEATURE_TASK_CPUS = 1.0
"""CPUs a feature task reserves on a cluster with room for it: feature extraction is single-threaded
NumPy/librosa/FluidSynth. On a small machine the share shrinks so that all ``feature_concurrency`` tasks and the
inference actors fit at once (see :func:`feature_task_cpus`)."""

INFERENCE_ACTOR_CPUS = 0.5
"""CPUs an inference actor reserves on a CPU-only cluster. An actor runs torch on one thread (more threads on
small GRU batches gain little and, on a busy machine, spin). On a 2-core machine the two actors and the two
feature tasks share the cores: while items need features the tasks get most of them, and when the features come
from the cache, inference gets both."""

def use_gpus(tagging: TagConfig, resources: Mapping[str, float]) -> bool:
    """Whether inference actors take a GPU each: ``tagging.use_gpu`` when set (True on an autoscaling cluster whose
    GPU nodes start at zero: asking for GPUs is what brings them up), else whether the cluster has GPUs now."""
    if tagging.use_gpu is not None:
        return bool(tagging.use_gpu)
    return resources.get("GPU", 0) > 0


def feature_task_cpus(cluster_cpus: float, *, tagging: TagConfig, actor_cpus: float, nodes: int = 1) -> float:
    """CPUs each feature task reserves: :data:`FEATURE_TASK_CPUS`, or less on a single machine that cannot hold
    ``feature_concurrency`` such tasks beside the inference actors — on 2 cores with two 0.5-CPU actors, two
    0.5-CPU tasks. Ray would otherwise run fewer tasks than asked and leave a core idle; the actor's share of a
    core is small because inference costs far less than feature extraction. On a multi-node cluster, or one whose
    workers have not started yet (no CPUs), tasks take a whole CPU: there the autoscaler adds nodes for them."""
    if nodes != 1 or cluster_cpus <= 0:
        return FEATURE_TASK_CPUS
    spare = cluster_cpus - actor_cpus * tagging.inference_concurrency
    return max(0.25, min(FEATURE_TASK_CPUS, spare / max(1, tagging.feature_concurrency)))


def _ray_compute(size: int, actor: bool, *, gpus: bool = False, start: int | None = None) -> Any:
    """Tasks: ``size`` at a time. CPU actors: a fixed pool of ``size``. GPU actors: ``start`` of them at first
    (default ``size``), at least one, at most ``size`` (Ray Data adds actors while work queues up and the
    resources allow; one GPU is enough to run).

    A CPU pool does not shrink: Ray Data's autoscaler retires an actor that sits idle while the first features
    are extracted, then starts a new one (torch imported and the model loaded again) once windows queue up, by
    which time one actor has taken every batch."""
    import ray.data

    if not actor:
        return ray.data.TaskPoolStrategy(size=size)
    if not gpus:
        return ray.data.ActorPoolStrategy(size=size)
    return ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=max(1, min(size, start or size)))


def inference_actors(items: int, *, tagging: TagConfig, gpus: bool) -> int:
    """Inference actors for a pass of ``items``: ``inference_concurrency``, but on CPUs no more than the pass has
    model calls for (each item gives at least one window, a call takes ``batch_size * BUCKET_POOL``): a second
    actor for a handful of items only pays a second start-up (torch and the model loaded) for nothing."""
    if gpus:
        return tagging.inference_concurrency
    calls = math.ceil(items / (tagging.batch_size * BUCKET_POOL))
    return max(1, min(tagging.inference_concurrency, calls))


ITEMS_PER_BLOCK = 16
"""Items per input block (= per feature task), where the pass is long enough. Each task costs Ray Data a fixed
overhead — scheduling, building its output block, the executor's bookkeeping in the driver — that on 2 cores is
worth reading a few cached items: over 200 EMOPIA pairs, blocks of 16 instead of 4 items took a first pass from
21.6 to 19.6 s and a re-tag from cached features from 13.2 to 11.7 s (two runs each by hand, not kept as JSON;
README, "Benchmarks")."""


def _blocks_for(items: int, concurrency: int) -> int:
    """Input blocks (= feature tasks): :data:`ITEMS_PER_BLOCK` items each, but at least four per concurrent task,
    so that the cores stay busy to the end of a short pass (a block's features can take seconds)."""
    return max(1, min(items, max(4 * concurrency, math.ceil(items / ITEMS_PER_BLOCK))))


def tag_store(
    store: str | ObjectStore,
    *,
    catalog: str,
    model: str | None = None,
    storage: str | None = None,
    prefix: str = "",
    endpoint_url: str | None = None,
    force: bool = False,
    tagging: TagConfig | None = None,
    render_missing_audio: bool = False,
    metrics_port: int | None = None,
    pushgateway: str | None = None,
    address: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    cache: str | FeatureCache | None = None,
) -> TagSummary:
    """Tag every new or changed item of an object store into the catalog, on Ray Data.

    Args:
        store: ``s3://bucket/prefix``, ``file://...`` or a folder (or an :class:`ObjectStore`).
        catalog: SQLAlchemy URL or SQLite path; the schema is created/upgraded first.
        model: artifact path/URL or version id; None: the LATEST model in ``storage``.
        storage: where model versions and LATEST are looked up.
        prefix: only keys starting with it (relative to the store root).
        endpoint_url: S3-compatible endpoint of every ``s3://`` location: the store, the model's storage and
            the feature cache (passed to the workers and actors explicitly).
        force: re-tag items this model already tagged at the same object version.
        tagging: batch size (windows per model call and items per catalog transaction), concurrency
            (feature tasks, inference actors) and page size (keys listed and compared at a time, items per Ray
            Data pass); None: :class:`TagConfig`'s defaults.
        render_missing_audio: render audio with FluidSynth for items without usable audio.
        metrics_port: serve ``/metrics`` on this port while the run lasts (None or 0: off).
        pushgateway: push the metrics there at the end (``host:port`` or URL).
        address: Ray cluster to join; None: the running Ray of this process, else a new local one (stopped at
            the end).
        limit: tag at most this many items (the rest stay for a later run: ``deferred``).
        progress: Ray Data's progress bars.
        cache: the feature cache (a folder or ``s3://`` prefix every worker reaches, or a
            :class:`~mer.features.FeatureCache`): features are read from it instead of extracted when the same
            files were extracted before with the same feature config (by an earlier model version, or by
            training), and stored in it after extraction. None: no cache.

    Returns:
        The :class:`TagSummary`. Raises (after marking the run ``failed``) only when the run as a whole cannot
        go on: no model, an unreachable store or catalog.
    """
    tagging = tagging or TagConfig()
    plan = begin_run(store, catalog=catalog, model=model, storage=storage, endpoint_url=endpoint_url,
                     tagging=tagging, render_missing_audio=render_missing_audio, metrics_port=metrics_port,
                     pushgateway=pushgateway, cache=cache)
    started_ray = False
    try:
        for todo in passes(plan, prefix=prefix, force=force, limit=limit, page_size=tagging.page_size):
            import ray

            if not ray.is_initialized():  # only once there is work: an unchanged store starts no Ray at all
                # "local": a new single-node Ray, even when a `ray start` cluster runs on this machine (a bare
                # ray.init() would join that one).
                ray.init(address=address or "local", include_dashboard=False if address is None else None,
                         logging_level=logging.WARNING)
                started_ray = True
            _run_pipeline(plan, todo, tagging=tagging, render_missing_audio=render_missing_audio, storage=storage,
                          progress=progress)
            plan.recorder.end_pass()
    except BaseException:
        end_run(plan, success=False, pushgateway=pushgateway)
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return end_run(plan, success=True, pushgateway=pushgateway)


def _run_pipeline(plan: Plan, todo: list[Item], *, tagging: TagConfig, render_missing_audio: bool,
                  storage: str | None, progress: bool) -> None:
    """One Ray Data pass over ``todo``: features in parallel tasks, inference in actors, labels into the catalog."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.enable_operator_progress_bars = progress
    context.max_errored_blocks = -1  # a block whose task died is skipped, its items recorded as failures below
    # No per-operator CPU reservation: both stages are already bounded (feature_concurrency tasks, a pool of
    # inference actors), and Ray Data's reservation (half the cluster, split between the two stages) let only
    # one feature task run at a time on a 2-core machine while the actors waited for windows.
    context.op_resource_reservation_enabled = False
    resources = ray.cluster_resources()
    gpus = use_gpus(tagging, resources)
    actor_cpus = 1 if gpus else INFERENCE_ACTOR_CPUS
    rows = [item_row(item) for item in todo]
    blocks = _blocks_for(len(rows), tagging.feature_concurrency)
    ledger = ray.remote(num_cpus=0)(AttemptLedger).remote()
    dataset = (
        ray.data.from_items(rows, override_num_blocks=blocks)
        .flat_map(
            extract_window_rows_counted,
            fn_kwargs={"ledger": ledger, "store": plan.store, "config": plan.config,
                       "render_missing_audio": render_missing_audio, "cache": plan.cache},
            compute=_ray_compute(min(tagging.feature_concurrency, blocks), actor=False),
            num_cpus=feature_task_cpus(resources.get("CPU", 0.0), tagging=tagging, actor_cpus=actor_cpus,
                                       nodes=len([n for n in ray.nodes() if n.get("Alive")])),
        )
        .map_batches(
            WindowPredictor,
            fn_constructor_kwargs={"model": plan.artifact_url, "storage": storage, "endpoint_url": plan.endpoint_url,
                                   "batch_size": tagging.batch_size, "int8": tagging.int8,
                                   "num_threads": None if gpus else max(1, int(INFERENCE_ACTOR_CPUS))},
            batch_size=tagging.batch_size * BUCKET_POOL,  # the actor sorts these by token length (bucketing)
            compute=_ray_compute(inference_actors(len(rows), tagging=tagging, gpus=gpus), actor=True, gpus=gpus,
                                 start=int(resources.get("GPU", 0)) if gpus else None),
            num_gpus=1 if gpus else 0,
            num_cpus=actor_cpus,
        )
    )
    windows = WindowGrouper()
    ran_int8: set[bool] = set()  # what the actors report; a torch without int8 kernels falls back to float32
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        ran_int8.update(bool(v) for v in np.unique(batch["int8"]))
        for done in windows.add_batch(batch):
            plan.recorder.finish_item(done)
    if ran_int8:  # float32 as soon as one actor of one pass ran it
        plan.inference = "int8" if ran_int8 == {True} and plan.inference in (None, "int8") else "float32"
        plan.writer.record_inference(plan.run_id, plan.inference)
    if windows.open:  # every window of an item comes back before the dataset ends; if not, do not lose the item
        for key, rows_ in windows.open.items():  # {window index: row}, distinct windows only
            first = next(iter(rows_.values()))
            plan.recorder.fail(FailureRecord(
                key=key, object_version=None, stage="inference",
                reason=f"only {len(rows_)} of {int(first['n_windows'])} windows came back from inference",
                modalities=str(first["modalities"]) or None))
            plan.recorder.seen.add(key)
    ray.kill(ledger)
    # Items that never came back (a block Ray Data gave up on for another reason than a dying worker, which the
    # ledger handles) fail without an object version, so the next run retries them and this run's good items
    # are kept.
    for key in sorted(set(plan.recorder.expected) - plan.recorder.seen):
        plan.recorder.fail(FailureRecord(
            key=key, object_version=None, stage="features",
            reason="the worker processing this item died (crash or out of memory) and it never came back; "
                   "retried by the next run", modalities=plan.recorder.expected[key] or None))
        plan.recorder.seen.add(key)
