"""One item: its objects' bytes → the windows the model can use, or why it has none. Never raises for a bad item.

Runs inside the Ray Data feature tasks (:func:`extract_window_rows` is the ``flat_map`` step) and in the local
loop. A modality that cannot be used is a *problem* and the item is tagged from the other; an item with nothing
usable becomes a *failure row*: one empty window with ``failed_stage``/``failed_reason`` set, which travels
through inference untouched. Every row has the same columns; the rows are compact (:func:`window_row`): tokens
unpadded in a small integer type, no frames for absent audio, nothing but the reason on a failure row.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from mer.config import BRANCHES, FeatureConfig, MerConfig
from mer.errors import BadInputError, ItemError, ObjectChangedError
from mer.features import (SUMMARY_SIZE, FeatureCache, ItemFeatures, extract_features, open_audio, read_midi,
                          render_audio, token_dtype)
from mer.storage import ObjectStore
from mer.tagging.storage import Item

log = logging.getLogger(__name__)

WINDOW_COLUMNS: tuple[str, ...] = (
    "name", "window_index", "window_start", "duration", "tokens", "token_length", "chroma", "mfcc", "present",
    "summary", "pitch_classes",
)
"""Columns of a window row: what the model reads, and where the window sits in its piece (:func:`window_row`)."""

ITEM_COLUMNS: tuple[str, ...] = (
    "object_version", "modalities", "branches_used", "problems", "n_windows", "failed_stage", "failed_reason",
    "failed_transient", "read_seconds", "features_seconds", "features_from",
)
"""Per-item columns repeated on each of the item's window rows (``n_windows`` = rows the driver waits for;
``features_from`` = ``"cache"`` or ``"extraction"``, or ``""`` when the item has no features)."""


def item_row(item: Item) -> dict[str, str]:
    """The plain-string row that stands for an item in the Ray dataset ("" where a modality is absent): its key,
    version and modalities, and per object the key and the version the listing saw (reads are pinned to it)."""
    row = {"key": item.stem, "object_version": item.version, "modalities": ",".join(item.modalities)}
    for kind, obj in (("midi", item.midi), ("audio", item.audio)):
        row[f"{kind}_key"] = obj.key if obj is not None else ""
        row[f"{kind}_version"] = obj.version if obj is not None else ""
        row[f"{kind}_version_id"] = obj.version_id if obj is not None else ""
    return row


def read_listed(store: ObjectStore, row: Mapping[str, Any], kind: str) -> bytes:
    """The bytes of the item's ``kind`` ("midi" or "audio") object, exactly as listed: ObjectChangedError if it
    changed since (a row without versions reads whatever is there)."""
    return store.read(str(row[f"{kind}_key"]), version=str(row.get(f"{kind}_version") or "") or None,
                      version_id=str(row.get(f"{kind}_version_id") or ""))


def open_listed(store: ObjectStore, row: Mapping[str, Any], kind: str) -> BinaryIO:
    """The item's ``kind`` object as a file (:meth:`ObjectStore.open`), pinned as :func:`read_listed`."""
    return store.open(str(row[f"{kind}_key"]), version=str(row.get(f"{kind}_version") or "") or None,
                      version_id=str(row.get(f"{kind}_version_id") or ""))


def window_row(features: ItemFeatures, index: int, *, config: FeatureConfig) -> dict[str, Any]:
    """Window ``index`` of an item as a compact row: what travels from the feature tasks to inference.

    Nothing is padded and nothing absent is sent: ``tokens`` are the window's ``token_length`` ids in
    :func:`token_dtype` (the model pads a batch to its own longest window), and ``chroma`` (12, F) / ``mfcc``
    (n_mfcc, F) float32 are (12, 0) / (n_mfcc, 0) when the item has no audio. Ray Data stores such columns as
    variable-shaped tensors. Other columns: ``name``, ``window_index`` (int64), ``window_start`` and ``duration``
    (float64 s), ``token_length`` (int64), ``present`` (3,) bool, ``summary`` (SUMMARY_SIZE,) float32,
    ``pitch_classes`` (12,) float64 (the piece's, on every row: what its key is estimated from).
    """
    length = int(features.token_lengths[index])
    audio = bool(features.present[1] or features.present[2])
    frames = features.chroma.shape[2] if audio else 0
    return {
        "name": features.name,
        "window_index": np.int64(index),
        "window_start": np.float64(features.window_starts[index]),
        "duration": np.float64(features.duration),
        "tokens": features.tokens[index, :length].astype(token_dtype(config)),  # (length,)
        "token_length": np.int64(length),
        "chroma": features.chroma[index, :, :frames],  # (12, F) or (12, 0)
        "mfcc": features.mfcc[index, :, :frames],  # (n_mfcc, F) or (n_mfcc, 0)
        "present": features.present.copy(),
        "summary": features.summary[index],
        "pitch_classes": features.pitch_classes.copy(),
    }


def empty_window(name: str, config: FeatureConfig) -> dict[str, Any]:
    """The window a failure row travels as: no tokens, no frames, no branch present (a few bytes, not 0.2 MB)."""
    return {
        "name": name,
        "window_index": np.int64(0),
        "window_start": np.float64(0.0),
        "duration": np.float64(0.0),
        "tokens": np.zeros(0, dtype=token_dtype(config)),
        "token_length": np.int64(0),
        "chroma": np.zeros((12, 0), dtype=np.float32),
        "mfcc": np.zeros((config.n_mfcc, 0), dtype=np.float32),
        "present": np.zeros(len(BRANCHES), dtype=bool),
        "summary": np.zeros(SUMMARY_SIZE, dtype=np.float32),
        "pitch_classes": np.zeros(12, dtype=np.float64),
    }


def batch_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Window rows as a numpy batch, as Ray Data hands them to a predictor: a column whose values share one shape
    is stacked, one whose shapes differ (compact tokens, absent frames) is an object array of arrays."""
    batch = {}
    for key in rows[0]:
        values = [np.asarray(row[key]) for row in rows]
        if len({value.shape for value in values}) == 1:
            batch[key] = np.stack(values)
        else:
            batch[key] = np.empty(len(values), dtype=object)
            batch[key][:] = values
    return batch


@dataclass
class PreparedItem:
    """One item after reading and feature extraction: its windows for the model, or why it has none.

    ``features`` holds only the windows the model can use (``window_index`` keeps their place in the piece);
    ``failure`` is ``(stage, reason)`` when nothing usable is left; ``problems`` are what was wrong but did not
    stop tagging; ``features_from`` says whether the features were read from the cache or extracted. Seconds are
    wall time in this process.
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
    features_from: str = ""
    read_seconds: float = 0.0
    features_seconds: float = 0.0

    def window_rows(self, config: MerConfig) -> list[dict[str, Any]]:
        """The item's rows for the dataset: one :func:`window_row` per kept window, or a single
        :func:`empty_window` for a failure; each with :data:`WINDOW_COLUMNS` and :data:`ITEM_COLUMNS`."""
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
            "features_from": self.features_from if self.failure is None else "",
        }
        if self.failure is not None or self.features is None:
            return [{**empty_window(self.key, config.features), **meta, "n_windows": np.int64(1)}]
        kept = [window_row(self.features, int(i), config=config.features) for i in self.window_index]
        return [{**row, **meta, "n_windows": np.int64(len(kept))} for row in kept]


def failed_item_rows(row: Mapping[str, Any], *, config: MerConfig, stage: str, reason: str) -> list[dict[str, Any]]:
    """The failure row of an item row whose work could not even start (transient: not its content's fault)."""
    return PreparedItem(key=str(row["key"]), object_version=str(row["object_version"]),
                        modalities=str(row["modalities"]), failure=(stage, reason), transient=True).window_rows(config)


def describe_error(error: BaseException) -> str:
    """A one-line reason for an exception: our own errors' reason, else the type and message."""
    if isinstance(error, ItemError):
        return error.reason
    if isinstance(error, FileNotFoundError):
        return "the object disappeared from the store after it was listed"
    text = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def prepare_item(
    store: ObjectStore, row: Mapping[str, Any], *, config: MerConfig, render_missing_audio: bool = False,
    cache: FeatureCache | None = None,
) -> PreparedItem:
    """Read an item's objects and extract the windows the model can use. Never raises for a bad item.

    Args:
        store: where the objects are (picklable, so this runs inside Ray tasks).
        row: :func:`item_row` of the item.
        config: the model artifact's config: ``features`` says how to extract, ``model.branches`` which
            modalities are worth reading (MIDI for ``symbolic``; audio for ``harmony``/``tone``).
        render_missing_audio: an item without usable audio gets audio rendered from its MIDI with FluidSynth,
            so the acoustic branches run too (the way the model was trained on EMOPIA).
        cache: where features are looked up before any decoding, and stored after a clean extraction (see
            :func:`cache_key`); None: always extract.

    Returns:
        A :class:`PreparedItem`. Each modality that cannot be used adds a problem (e.g.
        ``"audio x.wav: audio is silent: ..."``); if none is left, ``failure`` is ``("read", problems)`` when
        reading/decoding failed, else ``("features", reason)``.
    """
    prepared = PreparedItem(key=str(row["key"]), object_version=str(row["object_version"]),
                            modalities=str(row["modalities"]))
    try:
        with ExitStack() as files:
            _prepare(store, row, prepared, config=config, render_missing_audio=render_missing_audio, cache=cache,
                     files=files)
    except ObjectChangedError as error:
        # An object changed since the listing: the item fails for this run (transient); the next run lists the
        # new version anyway.
        prepared.features, prepared.problems = None, []
        prepared.failure, prepared.transient = ("read", f"{error.item}: {error.reason}"), True
    except Exception as error:  # noqa: BLE001 — a bug or a library surprise on one item must not stop the run
        log.warning("%s: unexpected error while preparing: %s", prepared.key, describe_error(error), exc_info=True)
        prepared.features = None
        prepared.failure = ("features", f"unexpected error: {describe_error(error)}")
        prepared.transient = True
    return prepared


RENDERED = "no usable audio: harmony and tone branches read audio rendered from the MIDI"
"""The problem recorded on an item whose acoustic branches read its MIDI rendered with FluidSynth."""


def cache_key(*, midi: bytes | None, audio: BinaryIO | bytes | None, rendered: bytes | None,
              config: FeatureConfig) -> str:
    """The feature-cache key of what an item's features are extracted from (content hashes + feature config).

    ``midi``: the MIDI bytes the symbolic branch reads; ``audio``: the audio file the acoustic branches read, or
    ``rendered``: the MIDI bytes their audio is rendered from. The contents' order and count tell the cases
    apart: ``(midi, audio)``; ``(midi,)`` for MIDI with its rendering — training's key for an EMOPIA clip
    (:mod:`mer.train.dataset`), so tagging EMOPIA reuses what training extracted; ``(midi, b"")`` for MIDI
    alone; ``(b"", audio)`` for audio alone; ``(b"", b"", rendered)`` for a rendering without the symbolic
    branch.
    """
    if rendered is not None:
        if midi is not None:
            return FeatureCache.key(midi, config=config)
        return FeatureCache.key(b"", b"", rendered, config=config)
    return FeatureCache.key(b"" if midi is None else midi, b"" if audio is None else audio, config=config)


def _fetch(prepared: PreparedItem, what: str, key: str, read: Any) -> Any:
    """``read()``, or None with the problem recorded (a store error is not the content's fault: transient)."""
    try:
        return read()
    except ObjectChangedError:
        raise  # fails the whole item (prepare_item)
    except Exception as error:  # noqa: BLE001 — see prepare_item
        prepared.problems.append(f"{what} {key}: {describe_error(error)}")
        prepared.transient |= not isinstance(error, BadInputError)
        return None


def _prepare(
    store: ObjectStore, row: Mapping[str, Any], prepared: PreparedItem, *, config: MerConfig,
    render_missing_audio: bool, cache: FeatureCache | None, files: ExitStack,
) -> None:
    features_config, built = config.features, config.model.branches
    wants_midi = "symbolic" in built
    wants_audio = "harmony" in built or "tone" in built
    midi_key, audio_key = str(row["midi_key"]), str(row["audio_key"])
    problems = prepared.problems

    # Read each modality the model can use as the store holds it: MIDI bytes, the audio as a file. Every read is
    # pinned to the version the listing saw: an object that changed since fails the whole item (transient, see
    # prepare_item), so no label pairs the listed version with other bytes.
    start = time.perf_counter()
    audio_file = None
    if audio_key and wants_audio:
        audio_file = _fetch(prepared, "audio", audio_key, lambda: files.enter_context(open_listed(store, row, "audio")))
    render = render_missing_audio and wants_audio and not audio_key  # no recording: render the MIDI
    midi_data = None
    midi_fetched = bool(midi_key and (wants_midi or render))
    if midi_fetched:
        midi_data = _fetch(prepared, "MIDI", midi_key, lambda: read_listed(store, row, "midi"))

    # Features read back from the cache, when everything the model reads was fetched: no decoding at all.
    key = None
    if cache is not None and not problems and (midi_data is not None or audio_file is not None):
        key = cache_key(midi=midi_data if wants_midi else None, audio=audio_file,
                        rendered=midi_data if render else None, config=features_config)
        prepared.read_seconds = time.perf_counter() - start
        start = time.perf_counter()
        try:
            cached = cache.get(key, name=prepared.key)
        except Exception as error:  # noqa: BLE001 — an unreachable cache costs an extraction, not the item
            log.warning("%s: feature cache unreadable (%s); extracting", prepared.key, describe_error(error))
            cached = None
        if cached is not None:
            if render:
                problems.append(RENDERED)
            prepared.features_from = "cache"
            _keep_usable_windows(prepared, cached, built)
            prepared.features_seconds = time.perf_counter() - start
            return
        prepared.features_seconds = time.perf_counter() - start  # the miss
        start = time.perf_counter()

    # Decode: a bad modality is a problem, not yet a failure.
    audio = None
    if audio_file is not None:
        audio = _fetch(prepared, "audio", audio_key,
                       lambda: open_audio(audio_file, name=audio_key, config=features_config))
    renders = render_missing_audio and wants_audio and audio is None
    if midi_key and not midi_fetched and renders:  # the recording is unusable: render the MIDI instead
        midi_data = _fetch(prepared, "MIDI", midi_key, lambda: read_listed(store, row, "midi"))
    midi = None
    if midi_data is not None and (wants_midi or renders):
        midi = _fetch(prepared, "MIDI", midi_key, lambda: read_midi(midi_data, name=midi_key))
    prepared.read_seconds += time.perf_counter() - start

    start = time.perf_counter()
    try:
        if renders and midi is not None:
            try:
                audio = render_audio(midi, config=features_config, name=midi_key)
                problems.append(RENDERED)
            except BadInputError as error:
                problems.append(f"rendering {midi_key} to audio: {error.reason}")
        model_midi = midi if wants_midi else None
        if model_midi is None and audio is None:
            if problems:
                prepared.failure = ("read", "; ".join(problems))
            else:
                needs = " or ".join(
                    (["MIDI (symbolic branch)"] if wants_midi else [])
                    + (["audio (harmony/tone)"] if wants_audio else [])
                )
                prepared.failure = ("features", f"the model ({','.join(built)}) needs {needs}; "
                                                f"the item has only {prepared.modalities or 'nothing'}")
            return
        features = _extract(prepared, midi=model_midi, audio=audio, config=features_config)
        if features is None:
            return
        prepared.features_from = "extraction"
        if key is not None and problems == ([RENDERED] if render else []):  # extracted as the key says
            try:
                cache.put(key, features)
            except Exception as error:  # noqa: BLE001 — a full disk costs the next run an extraction, not this item
                log.warning("%s: could not store features in %r (%s)", prepared.key, cache, describe_error(error))
        _keep_usable_windows(prepared, features, built)
    finally:
        prepared.features_seconds += time.perf_counter() - start


def _extract(prepared: PreparedItem, *, midi: Any, audio: Any, config: Any) -> ItemFeatures | None:
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
    row: dict[str, Any], *, store: ObjectStore, config: MerConfig, render_missing_audio: bool,
    cache: FeatureCache | None = None,
) -> list[dict[str, Any]]:
    """The Ray Data ``flat_map`` step: one item row → its window rows (or one failure row). Never raises."""
    return prepare_item(store, row, config=config, render_missing_audio=render_missing_audio,
                        cache=cache).window_rows(config)
