"""Nightly tagging on Ray Data: object store → features → batch inference → SQL catalog (issue 4).

One run, :func:`tag_store`::

    driver:  load the model artifact ─ start a run ─ list_items ─ skip what this model already tagged at the
             same object version (unless ``force``)
    Ray:     from_items ─ flat_map(extract_window_rows)        parallel CPU tasks, one item at a time:
                              read bytes → read_midi / decode_audio → [render] → extract_features → window rows
                        ─ map_batches(WindowPredictor)          actor pool, one GPU per actor when GPUs exist
    driver:  iter_batches ─ group windows per item ─ aggregate_windows ─ CatalogWriter.write_batch (one
             transaction per batch of items; idempotent upserts) ─ finish the run

Bad input never stops a run. Everything an item can raise inside a Ray task is caught per item and travels on
as data (a *failure row*: one placeholder window with ``failed_stage``/``failed_reason`` set, which the
predictor passes through untouched), so one item never kills a batch. An item with one unusable modality is
tagged from the other and the problem is recorded in ``labels.problems``; an item with nothing usable becomes a
``failures`` row with its stage and reason. Listing rejects (unsafe keys, duplicates) are ``list`` failures.

Incremental: an item is skipped when this model version already labelled it at the same object version, or
failed it there because of its content (a bad file stays bad until it changes). Failures that are not the
content's fault (store or network errors, unexpected errors) are recorded without an object version, so the next
run retries them. ``force`` re-tags everything. A re-run over an unchanged store starts no Ray work at all: it
loads the model, lists, reads the catalog's versions and closes the run. Listing rejects are recorded again by
every run (they cost nothing to find).

Counts: ``listed`` (items + listing rejects) = ``tagged`` + ``skipped`` + ``failed`` (+ ``deferred``: items left
for a later run by ``limit``).

:func:`tag_store_local` does the same work with the same functions in one process, item after item, without
Ray: the benchmark's baseline (``tests/benchmarks/bench_tagging.py``) and a check that the pipeline changes
nothing but the speed.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mer.audio import decode_audio
from mer.catalog import CatalogWriter, FailureRecord, LabelRecord
from mer.config import BRANCHES, QUADRANTS, MerConfig, TagConfig
from mer.errors import BadInputError, MerError
from mer.features import ItemFeatures, extract_features
from mer.metrics import JobMetrics
from mer.midi import read_midi
from mer.render import render_audio, soundfont_path
from mer.storage import Item, ObjectStore, list_items, open_store, printable_key
from mer.tokens import pad_id

log = logging.getLogger(__name__)

WINDOW_COLUMNS: tuple[str, ...] = (
    "name", "window_index", "window_start", "duration", "tokens", "token_length", "chroma", "mfcc", "present",
)
"""Columns of :meth:`ItemFeatures.window_rows`: what the model reads, and where each window sits in its piece."""

ITEM_COLUMNS: tuple[str, ...] = (
    "object_version", "modalities", "branches_used", "problems", "n_windows", "failed_stage", "failed_reason",
    "failed_transient", "read_seconds", "features_seconds",
)
"""Per-item columns repeated on each of the item's window rows (``n_windows`` = rows the driver waits for)."""

PREDICTION_COLUMNS: tuple[str, ...] = ("quadrant_probs", "arousal_prob", "valence_prob", "attention", "inference_seconds")
"""Columns :class:`WindowPredictor` adds; it drops the big feature arrays so the rows coming back stay small."""

FEATURE_TASK_CPUS = 1.0
"""CPUs a feature task reserves on a cluster with room for it: feature extraction is single-threaded
NumPy/librosa/FluidSynth. On a small machine the share shrinks so that all ``feature_concurrency`` tasks and the
inference actors fit at once (see :func:`feature_task_cpus`)."""

INFERENCE_ACTOR_CPUS = 0.5
"""CPUs an inference actor reserves on a CPU-only cluster. Inference of a batch of windows is a small share of an
item's cost (feature extraction dominates), so on a 2-core machine the actor may share a core with the feature
tasks instead of taking one away from them (whole-CPU actors would leave one feature task running)."""

FEATURE_TASK_RETRIES = 2
"""Retries of a feature task whose worker died. Ray Data's default retries forever, so one file that crashes a
decoder natively would hang the night's run; after these retries its block is given up and its items recorded."""

WRITE_EVERY_SECONDS = 10.0
"""A partial write batch is flushed after this long, so a slow run still shows progress in the catalog."""


# --- results -------------------------------------------------------------------------------------------------------


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


# --- one item: bytes → window rows (runs inside Ray tasks, and in the local loop) ------------------------------------


def item_row(item: Item) -> dict[str, str]:
    """The plain-string row that stands for an item in the Ray dataset ("" where a modality is absent)."""
    return {
        "key": item.stem,
        "object_version": item.version,
        "modalities": ",".join(item.modalities),
        "midi_key": item.midi.key if item.midi is not None else "",
        "audio_key": item.audio.key if item.audio is not None else "",
    }


@dataclass
class PreparedItem:
    """One item after reading and feature extraction: its windows for the model, or why it has none.

    ``features`` holds only the windows the model can use (``window_index`` keeps their place in the piece);
    ``failure`` is ``(stage, reason)`` when nothing usable is left; ``problems`` are what was wrong but did not
    stop tagging. Seconds are wall time in this process.
    """

    key: str
    object_version: str
    modalities: str
    features: ItemFeatures | None = None
    window_index: np.ndarray | None = None  # (W,) int64 positions of the kept windows
    branches_used: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)
    failure: tuple[str, str] | None = None
    transient: bool = False  # a problem that is not the content's fault (store error, unexpected error)
    read_seconds: float = 0.0
    features_seconds: float = 0.0

    def window_rows(self, config: MerConfig) -> list[dict[str, Any]]:
        """The item's rows for the dataset: one per kept window, or a single placeholder row for a failure.

        Every row has :data:`WINDOW_COLUMNS` and :data:`ITEM_COLUMNS`, with the same shapes for all items
        (tokens (max_tokens,), chroma (12, F), mfcc (n_mfcc, F), present (3,)), as Ray Data's blocks need.
        """
        meta = {
            "object_version": self.object_version,
            "modalities": self.modalities,
            "branches_used": ",".join(self.branches_used),
            "problems": "; ".join(self.problems),
            "failed_stage": self.failure[0] if self.failure else "",
            "failed_reason": self.failure[1] if self.failure else "",
            "failed_transient": bool(self.transient),
            "read_seconds": np.float64(self.read_seconds),
            "features_seconds": np.float64(self.features_seconds),
        }
        if self.failure is not None or self.features is None:
            return [{**placeholder_window(self.key, config), **meta, "n_windows": np.int64(1)}]
        rows = self.features.window_rows()
        kept = [rows[i] for i in self.window_index]
        return [{**row, **meta, "n_windows": np.int64(len(kept))} for row in kept]


def placeholder_window(name: str, config: MerConfig) -> dict[str, Any]:
    """An all-padding window row (no branch present): the shape a failure row travels in."""
    features = config.features
    frames = features.frames_per_window
    return {
        "name": name,
        "window_index": np.int64(0),
        "window_start": np.float64(0.0),
        "duration": np.float64(0.0),
        "tokens": np.full(features.max_tokens, pad_id(features), dtype=np.int64),
        "token_length": np.int64(0),
        "chroma": np.zeros((12, frames), dtype=np.float32),
        "mfcc": np.zeros((features.n_mfcc, frames), dtype=np.float32),
        "present": np.zeros(len(BRANCHES), dtype=bool),
    }


def _describe(error: BaseException) -> str:
    """A one-line reason for an exception: our own errors' reason, else the type and message."""
    if isinstance(error, BadInputError):
        return error.reason
    if isinstance(error, FileNotFoundError):
        return "the object disappeared from the store after it was listed"
    text = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def prepare_item(
    store: ObjectStore, row: Mapping[str, Any], *, config: MerConfig, render_missing_audio: bool = False
) -> PreparedItem:
    """Read an item's objects and extract the windows the model can use. Never raises for a bad item.

    Args:
        store: where the objects are (picklable, so this runs inside Ray tasks).
        row: :func:`item_row` of the item.
        config: the model artifact's config: ``features`` says how to extract, ``model.branches`` which
            modalities are worth reading (MIDI for ``symbolic``; audio for ``harmony``/``tone``).
        render_missing_audio: an item without usable audio gets audio rendered from its MIDI with FluidSynth,
            so the acoustic branches run too (the way the model was trained on EMOPIA).

    Returns:
        A :class:`PreparedItem`. Each modality that cannot be used adds a problem (e.g.
        ``"audio x.wav: audio is silent: ..."``); if none is left, ``failure`` is ``("read", problems)`` when
        reading/decoding failed, else ``("features", reason)``.
    """
    prepared = PreparedItem(key=str(row["key"]), object_version=str(row["object_version"]),
                            modalities=str(row["modalities"]))
    try:
        _prepare(store, row, prepared, config=config, render_missing_audio=render_missing_audio)
    except Exception as error:  # noqa: BLE001 — a bug or a library surprise on one item must not stop the run
        log.warning("%s: unexpected error while preparing: %s", prepared.key, _describe(error), exc_info=True)
        prepared.features = None
        prepared.failure = ("features", f"unexpected error: {_describe(error)}")
        prepared.transient = True
    return prepared


def _prepare(
    store: ObjectStore, row: Mapping[str, Any], prepared: PreparedItem, *, config: MerConfig,
    render_missing_audio: bool,
) -> None:
    features_config, built = config.features, config.model.branches
    wants_midi = "symbolic" in built
    wants_audio = "harmony" in built or "tone" in built
    midi_key, audio_key = str(row["midi_key"]), str(row["audio_key"])
    problems = prepared.problems

    # Read: fetch and decode each modality the model can use. A bad one is a problem, not yet a failure.
    start = time.perf_counter()
    audio = None
    if audio_key and wants_audio:
        try:
            audio = decode_audio(store.read(audio_key), name=audio_key, config=features_config)  # (samples,)
        except Exception as error:  # noqa: BLE001 — see prepare_item
            problems.append(f"audio {audio_key}: {_describe(error)}")
            prepared.transient |= not isinstance(error, BadInputError)
    midi = None
    if midi_key and (wants_midi or (render_missing_audio and wants_audio and audio is None)):
        try:
            midi = read_midi(store.read(midi_key), name=midi_key)
        except Exception as error:  # noqa: BLE001
            problems.append(f"MIDI {midi_key}: {_describe(error)}")
            prepared.transient |= not isinstance(error, BadInputError)
    prepared.read_seconds = time.perf_counter() - start

    start = time.perf_counter()
    try:
        if render_missing_audio and wants_audio and audio is None and midi is not None:
            try:
                audio = render_audio(midi, config=features_config, name=midi_key)
                problems.append("no usable audio: harmony and tone branches read audio rendered from the MIDI")
            except BadInputError as error:
                problems.append(f"rendering {midi_key} to audio: {error.reason}")
        model_midi = midi if wants_midi else None
        if model_midi is None and audio is None:
            if problems:
                prepared.failure = ("read", "; ".join(problems))
            else:
                needs = " or ".join(
                    (["MIDI (symbolic branch)"] if wants_midi else []) + (["audio (harmony/tone)"] if wants_audio else [])
                )
                prepared.failure = ("features", f"the model ({','.join(built)}) needs {needs}; "
                                                f"the item has only {prepared.modalities or 'nothing'}")
            return
        features = _extract(prepared, midi=model_midi, audio=audio, config=features_config)
        if features is None:
            return
        _keep_usable_windows(prepared, features, built)
    finally:
        prepared.features_seconds = time.perf_counter() - start


def _extract(prepared: PreparedItem, *, midi: Any, audio: np.ndarray | None, config: Any) -> ItemFeatures | None:
    """extract_features on both modalities; if that fails with both, on each alone (recording the problem)."""
    try:
        return extract_features(name=prepared.key, midi=midi, audio=audio, config=config)
    except BadInputError as error:
        if midi is None or audio is None:
            prepared.failure = ("features", "; ".join([*prepared.problems, error.reason]))
            return None
        first_error = error
    for label, kwargs in (("audio", {"midi": midi, "audio": None}), ("MIDI", {"midi": None, "audio": audio})):
        try:
            features = extract_features(name=prepared.key, config=config, **kwargs)
        except BadInputError:
            continue
        prepared.problems.append(f"features from the {label} failed: {first_error.reason}")
        return features
    prepared.failure = ("features", "; ".join([*prepared.problems, first_error.reason]))
    return None


def _keep_usable_windows(prepared: PreparedItem, features: ItemFeatures, built: Sequence[str]) -> None:
    """Keep the windows with input for at least one of the model's branches (the model rejects the others)."""
    present = features.present & np.array([b in built for b in BRANCHES])  # (3,)
    has_tokens = features.token_lengths > 0  # (W,) a MIDI window without notes has no symbolic input
    usable = (present[0] & has_tokens) | bool(present[1] or present[2])  # (W,)
    if not usable.any():
        prepared.failure = ("features", "no window has input for the model's branches "
                                        f"({','.join(built)}): the MIDI has no notes where the model looks")
        return
    if not usable.all():
        prepared.problems.append(
            f"{int((~usable).sum())} of {usable.size} windows have no input for the model (no notes, no audio) "
            "and are left out of the label"
        )
    used = [present[0] and bool(has_tokens[usable].any()), bool(present[1]), bool(present[2])]
    prepared.features = features
    prepared.window_index = np.flatnonzero(usable)
    prepared.branches_used = tuple(b for b, u in zip(BRANCHES, used) if u)


def extract_window_rows(
    row: dict[str, Any], *, store: ObjectStore, config: MerConfig, render_missing_audio: bool
) -> list[dict[str, Any]]:
    """The Ray Data ``flat_map`` step: one item row → its window rows (or one failure row). Never raises."""
    return prepare_item(store, row, config=config, render_missing_audio=render_missing_audio).window_rows(config)


# --- inference (Ray actor, or called directly by the local loop) -------------------------------------------------------


class WindowPredictor:
    """Labels batches of window rows with the model: :class:`mer.predict.EmotionPredictor` plus failure handling.

    Failure rows (``failed_stage`` set) pass through with zero probabilities. If the model raises on a batch,
    the windows are retried one by one and only those that still fail become ``inference`` failures, so one
    item never takes a batch down. Returns the rows without the feature arrays, plus :data:`PREDICTION_COLUMNS`.
    Applied with ``map_batches(WindowPredictor, fn_constructor_kwargs=..., concurrency=..., num_gpus=...)``.
    """

    def __init__(self, model: str, *, storage: str | None = None, device: str | None = None,
                 num_threads: int | None = None) -> None:
        """``model``: artifact path/URL or version id (with ``storage``). ``num_threads``: torch intra-op threads
        (None: leave torch's default; an actor gets as many as the CPUs it reserves)."""
        import torch

        from mer.predict import EmotionPredictor

        if num_threads is not None:
            # Many threads on a small batch contend with the feature tasks on the same cores for no gain.
            torch.set_num_threads(max(1, int(num_threads)))
        self.predictor = EmotionPredictor(model, storage=storage, device=device)
        self.heads = self.predictor.artifact.config.model.attention_heads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        n = len(batch["name"])
        stage = np.asarray(batch["failed_stage"]).astype(object)
        reason = np.asarray(batch["failed_reason"]).astype(object)
        transient = np.asarray(batch["failed_transient"]).astype(bool)
        out: dict[str, np.ndarray] = {k: np.asarray(batch[k]) for k in (*WINDOW_COLUMNS[:4], *ITEM_COLUMNS)}
        quadrant_probs = np.zeros((n, len(QUADRANTS)), dtype=np.float32)
        arousal = np.zeros(n, dtype=np.float32)
        valence = np.zeros(n, dtype=np.float32)
        attention = np.zeros((n, self.heads, len(BRANCHES), len(BRANCHES)), dtype=np.float32)

        def run(rows: np.ndarray) -> None:
            inputs = {k: np.asarray(batch[k])[rows] for k in ("tokens", "token_length", "chroma", "mfcc", "present")}
            result = self.predictor(inputs)
            quadrant_probs[rows] = result["quadrant_probs"]
            arousal[rows] = result["arousal_prob"]
            valence[rows] = result["valence_prob"]
            attention[rows] = result["attention"]

        good = np.flatnonzero(stage == "")
        if good.size:
            try:
                run(good)
            except Exception:  # noqa: BLE001 — find the window(s) at fault; the rest of the batch is fine
                for row in good:
                    try:
                        run(np.array([row]))
                    except Exception as error:  # noqa: BLE001
                        window = int(batch["window_index"][row])
                        stage[row], reason[row] = "inference", f"model failed on window {window}: {_describe(error)}"
                        transient[row] = True
        out["failed_stage"], out["failed_reason"] = stage.astype(str), reason.astype(str)
        out["failed_transient"] = transient
        out["quadrant_probs"], out["arousal_prob"], out["valence_prob"], out["attention"] = (
            quadrant_probs, arousal, valence, attention)
        out["inference_seconds"] = np.full(n, (time.perf_counter() - start) / max(n, 1))  # the batch's time, shared
        return out


# --- the driver's side: windows → items → catalog ---------------------------------------------------------------------


@dataclass
class _Done:
    """A finished item: its window rows (predictions) or its failure."""

    key: str
    rows: list[dict[str, Any]]


class _Recorder:
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
        self.stage_seconds = {stage: 0.0 for stage in ("list", "read", "features", "inference", "write")}
        self.last_flush = time.monotonic()
        self.seen: set[str] = set()

    # Items --------------------------------------------------------------------------------------------------------

    def fail(self, record: FailureRecord) -> None:
        self.failures.append(record)
        self._maybe_flush()

    def finish_item(self, done: _Done) -> None:
        """One item's windows are all back: observe its stage times, turn it into a label or a failure."""
        from mer.predict import aggregate_windows

        self.seen.add(done.key)
        first = done.rows[0]
        for stage, column in (("read", "read_seconds"), ("features", "features_seconds")):
            self._observe(stage, float(first[column]))
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
            # Tagged from one modality because reading the other failed for a reason that is not the content's
            # (store or network error): the label is kept, but without an object version, so the next run
            # retries the item instead of skipping it as done.
            partial = bool(first["failed_transient"])
            label = LabelRecord(
                key=done.key,
                object_version="" if partial else str(first["object_version"]),
                modalities=str(first["modalities"]),
                duration_s=float(first["duration"]),
                quadrant=piece.label,
                quadrant_probs=piece.quadrant_probs,
                arousal_prob=piece.arousal_prob,
                valence_prob=piece.valence_prob,
                branches_used=str(first["branches_used"]),
                attention=piece.attention if self.use_attention else None,
                timeline=[
                    {"start_s": start, "quadrant": QUADRANTS[int(np.argmax(probs))], "p_q1": probs[0],
                     "p_q2": probs[1], "p_q3": probs[2], "p_q4": probs[3], "arousal_prob": a, "valence_prob": v}
                    for start, probs, a, v in zip(piece.window_starts, piece.window_quadrant_probs,
                                                  piece.window_arousal_probs, piece.window_valence_probs)
                ],
                problems=str(first["problems"]) or None,
            )
        except Exception as error:  # noqa: BLE001 — e.g. NaN probabilities: this item fails, the run goes on
            self.fail(FailureRecord(key=done.key, object_version=str(first["object_version"]), stage="inference",
                                    reason=f"invalid model output: {_describe(error)}",
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
                        len(labels) + len(failures), _describe(error))
            written_labels, written_failures = [], []
            for record in failures:
                try:
                    self.writer.write_batch(self.run_id, [], [record])
                except Exception as item_error:  # noqa: BLE001 — e.g. a key the database cannot store as is
                    log.warning("catalog refused failure of %r (%s); storing it under a printable key",
                                record.key, _describe(item_error))
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
                                           reason=_describe(item_error), modalities=label.modalities)
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


class _Windows:
    """Groups window rows (arriving in any order, split over any batches) back into items."""

    def __init__(self) -> None:
        self.open: dict[str, list[dict[str, Any]]] = {}

    def add_batch(self, batch: Mapping[str, np.ndarray]) -> Iterator[_Done]:
        columns = list(batch)
        for i in range(len(batch["name"])):
            row = {k: batch[k][i] for k in columns}
            key = str(row["name"])
            rows = self.open.setdefault(key, [])
            rows.append(row)
            if len(rows) >= int(row["n_windows"]):
                del self.open[key]
                yield _Done(key=key, rows=rows)


# --- runs --------------------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
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
    recorder: _Recorder


def _begin(
    store: str | ObjectStore, *, catalog: str, model: str | None, storage: str | None, prefix: str,
    endpoint_url: str | None, force: bool, tagging: TagConfig, render_missing_audio: bool, metrics_port: int | None,
    pushgateway: str | None, limit: int | None,
) -> _Plan:
    from mer.artifact import load_artifact

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
        # The model only decides the version and the feature config here; actors load it again themselves.
        artifact = load_artifact(model, storage=storage, device="cpu")
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
    recorder = _Recorder(writer=writer, run_id=run_id, metrics=metrics, batch_size=tagging.batch_size,
                         use_attention=artifact.config.model.use_attention, expected={})
    plan = _Plan(store=store, artifact_url=artifact.url, config=artifact.config, model_version=artifact.version,
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
        _end(plan, success=False, pushgateway=pushgateway)
        raise
    return plan


def _end(plan: _Plan, *, success: bool, pushgateway: str | None) -> TagSummary:
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
            log.error("could not close run %d in the catalog: %s", plan.run_id, _describe(error))
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


def use_gpus(tagging: TagConfig, resources: Mapping[str, float]) -> bool:
    """Whether inference actors take a GPU each: ``tagging.use_gpu`` when set (True on an autoscaling cluster whose
    GPU nodes start at zero: asking for GPUs is what brings them up), else whether the cluster has GPUs now."""
    if tagging.use_gpu is not None:
        return bool(tagging.use_gpu)
    return resources.get("GPU", 0) > 0


def feature_task_cpus(cluster_cpus: float, *, tagging: TagConfig, actor_cpus: float, nodes: int = 1) -> float:
    """CPUs each feature task reserves: :data:`FEATURE_TASK_CPUS`, or less on a single machine that cannot hold
    ``feature_concurrency`` such tasks beside the inference actors — on 2 cores with one 0.5-CPU actor, two
    0.75-CPU tasks. Ray would otherwise run fewer tasks than asked and leave a core idle; the actor's share of a
    core is small because inference costs far less than feature extraction. On a multi-node cluster, or one whose
    workers have not started yet (no CPUs), tasks take a whole CPU: there the autoscaler adds nodes for them."""
    if nodes != 1 or cluster_cpus <= 0:
        return FEATURE_TASK_CPUS
    spare = cluster_cpus - actor_cpus * tagging.inference_concurrency
    return max(0.25, min(FEATURE_TASK_CPUS, spare / max(1, tagging.feature_concurrency)))


def _ray_compute(size: int, actor: bool) -> Any:
    import ray.data

    return ray.data.ActorPoolStrategy(size=size) if actor else ray.data.TaskPoolStrategy(size=size)


def _blocks_for(items: int, concurrency: int) -> int:
    """Input blocks (= feature tasks): about four per concurrent task keeps the cores busy to the end without
    paying a task's overhead per item on big stores."""
    return max(1, min(items, max(4 * concurrency, math.ceil(items / 4))))


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
) -> TagSummary:
    """Tag every new or changed item of an object store into the catalog, on Ray Data.

    Args:
        store: ``s3://bucket/prefix``, ``file://...`` or a folder (or an :class:`ObjectStore`).
        catalog: SQLAlchemy URL or SQLite path; the schema is created/upgraded first.
        model: artifact path/URL or version id; None: the LATEST model in ``storage``.
        storage: where model versions and LATEST are looked up.
        prefix: only keys starting with it (relative to the store root).
        endpoint_url: S3-compatible endpoint of the store (the artifact's comes from ``AWS_ENDPOINT_URL``).
        force: re-tag items this model already tagged at the same object version.
        tagging: batch size (windows per model call and items per catalog transaction) and concurrency
            (feature tasks, inference actors); None: :class:`TagConfig`'s defaults.
        render_missing_audio: render audio with FluidSynth for items without usable audio.
        metrics_port: serve ``/metrics`` on this port while the run lasts (None or 0: off).
        pushgateway: push the metrics there at the end (``host:port`` or URL).
        address: Ray cluster to join; None: the running Ray of this process, else a new local one (stopped at
            the end).
        limit: tag at most this many items (the rest stay for a later run: ``deferred``).
        progress: Ray Data's progress bars.

    Returns:
        The :class:`TagSummary`. Raises (after marking the run ``failed``) only when the run as a whole cannot
        go on: no model, an unreachable store or catalog.
    """
    tagging = tagging or TagConfig()
    plan = _begin(store, catalog=catalog, model=model, storage=storage, prefix=prefix, endpoint_url=endpoint_url,
                  force=force, tagging=tagging, render_missing_audio=render_missing_audio,
                  metrics_port=metrics_port, pushgateway=pushgateway, limit=limit)
    if not plan.todo:  # an unchanged store: no Ray at all, the run costs the listing
        return _end(plan, success=True, pushgateway=pushgateway)
    started_ray = False
    try:
        import ray

        if not ray.is_initialized():
            # "local": a new single-node Ray, even when a `ray start` cluster runs on this machine (a bare
            # ray.init() would join that one).
            ray.init(address=address or "local", include_dashboard=False if address is None else None,
                     logging_level=logging.WARNING)
            started_ray = True
        _run_pipeline(plan, tagging=tagging, render_missing_audio=render_missing_audio, storage=storage,
                      progress=progress)
    except BaseException:
        _end(plan, success=False, pushgateway=pushgateway)
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return _end(plan, success=True, pushgateway=pushgateway)


def _run_pipeline(plan: _Plan, *, tagging: TagConfig, render_missing_audio: bool, storage: str | None,
                  progress: bool) -> None:
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.enable_operator_progress_bars = progress
    context.max_errored_blocks = -1  # a block whose task died is skipped, its items recorded as failures below
    resources = ray.cluster_resources()
    gpus = use_gpus(tagging, resources)
    actor_cpus = 1 if gpus else INFERENCE_ACTOR_CPUS
    rows = [item_row(item) for item in plan.todo]
    blocks = _blocks_for(len(rows), tagging.feature_concurrency)
    dataset = (
        ray.data.from_items(rows, override_num_blocks=blocks)
        .flat_map(
            extract_window_rows,
            fn_kwargs={"store": plan.store, "config": plan.config, "render_missing_audio": render_missing_audio},
            compute=_ray_compute(min(tagging.feature_concurrency, blocks), actor=False),
            # Passed through to Ray as a remote arg (Ray 2.60 has no named parameter for it and warns that the
            # pass-through goes away in 2.64; pyproject pins 2.60).
            max_retries=FEATURE_TASK_RETRIES,
            num_cpus=feature_task_cpus(resources.get("CPU", 0.0), tagging=tagging, actor_cpus=actor_cpus,
                                       nodes=len([n for n in ray.nodes() if n.get("Alive")])),
        )
        .map_batches(
            WindowPredictor,
            fn_constructor_kwargs={"model": plan.artifact_url, "storage": storage,
                                   "num_threads": None if gpus else max(1, int(INFERENCE_ACTOR_CPUS))},
            batch_size=tagging.batch_size,
            compute=_ray_compute(tagging.inference_concurrency, actor=True),
            num_gpus=1 if gpus else 0,
            num_cpus=actor_cpus,
        )
    )
    windows = _Windows()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for done in windows.add_batch(batch):
            plan.recorder.finish_item(done)
    if windows.open:  # every window of an item comes back before the dataset ends; if not, do not lose the item
        for key, rows_ in windows.open.items():
            first = rows_[0]
            plan.recorder.fail(FailureRecord(
                key=key, object_version=None, stage="inference",
                reason=f"only {len(rows_)} of {int(first['n_windows'])} windows came back from inference",
                modalities=str(first["modalities"]) or None))
            plan.recorder.seen.add(key)
    # Items of blocks Ray Data gave up on (a task that died even after its retries: a native crash in a decoder,
    # out of memory) never came back. They fail without an object version, so the next run retries them — in
    # smaller blocks, since only they are left to do — and the good items of this run are kept.
    for key in sorted(set(plan.recorder.expected) - plan.recorder.seen):
        plan.recorder.fail(FailureRecord(
            key=key, object_version=None, stage="features",
            reason="the worker processing this item died (crash or out of memory) and it never came back; "
                   "retried by the next run", modalities=plan.recorder.expected[key] or None))
        plan.recorder.seen.add(key)


def tag_store_local(
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
    limit: int | None = None,
) -> TagSummary:
    """:func:`tag_store` without Ray: the same functions, item after item, in this process.

    Each item's windows go to the model as one batch. Same arguments and result as :func:`tag_store` (minus the
    Ray ones). For small stores, debugging, and as the benchmark's baseline.
    """
    tagging = tagging or TagConfig()
    plan = _begin(store, catalog=catalog, model=model, storage=storage, prefix=prefix, endpoint_url=endpoint_url,
                  force=force, tagging=tagging, render_missing_audio=render_missing_audio,
                  metrics_port=metrics_port, pushgateway=pushgateway, limit=limit)
    try:
        if plan.todo:
            predictor = WindowPredictor(plan.artifact_url, storage=storage)
            windows = _Windows()
            for item in plan.todo:
                rows = extract_window_rows(item_row(item), store=plan.store, config=plan.config,
                                           render_missing_audio=render_missing_audio)
                batch = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
                for done in windows.add_batch(predictor(batch)):
                    plan.recorder.finish_item(done)
    except BaseException:
        _end(plan, success=False, pushgateway=pushgateway)
        raise
    return _end(plan, success=True, pushgateway=pushgateway)
