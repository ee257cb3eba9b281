"""EMOPIA clips → labelled feature windows, through the feature cache, extracted once in parallel Ray tasks.

For each clip: its MIDI bytes give the cache key (``FeatureCache.key(midi_bytes, config=features)``); a cache hit
is read back, a miss is parsed (:func:`mer.features.midi.read_midi`), rendered to audio with FluidSynth (EMOPIA has no
recordings, :func:`mer.features.render.render_audio`), turned into windows (:func:`mer.features.extract_features`) and
stored (``FeatureCache.put``). Every clip is one Ray task, so extraction spreads over the whole cluster; the
driver reads the MIDI bytes and ships them with the task, so only the cache folder need be shared between nodes
(and even that only saves work: a node that misses the cache recomputes). A clip that fails is reported (name
and reason) and skipped.

Rows and batches. A window row is :meth:`mer.features.ItemFeatures.window_rows`' dict plus ``quadrant`` (int64
0..3). A batch is a dict of stacked arrays with the model's key names (``token_lengths``, plural, as
:class:`mer.model.MerModel` takes it) — :func:`stack_rows`, :func:`window_table`; :func:`collate` turns either
into torch tensors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import ray
import torch

from mer.config import FeatureConfig
from mer.errors import MerError
from mer.features import FeatureCache, ItemFeatures, extract_features, read_midi, render_audio, transpose_midi
from mer.model import ROW_KEYS_TO_BATCH, to_tensors
from mer.train.emopia import Clip
from mer.train.progress import progress_bar, progress_line

@dataclass(frozen=True)
class ClipFeatures:
    """One EMOPIA clip with its cache key and extracted windows (``features.name`` is the clip's name)."""

    clip: Clip
    key: str
    features: ItemFeatures


@dataclass
class Extraction:
    """The outcome of :func:`extract_clips`: ``clips`` that worked (input order), ``failures`` as
    ``(clip name, reason)``, how many were ``cached`` (read back, not recomputed), and the wall ``seconds``."""

    clips: list[ClipFeatures]
    failures: list[tuple[str, str]]
    cached: int
    seconds: float

    @property
    def windows(self) -> int:
        return sum(c.features.num_windows for c in self.clips)


def clip_features(name: str, midi_bytes: bytes, *, config: FeatureConfig) -> ItemFeatures:
    """Features of one EMOPIA clip from its MIDI bytes: parse, render with FluidSynth, extract.

    Raises:
        BadInputError: unreadable MIDI, no notes, silent or too short rendering.
    """
    midi = read_midi(midi_bytes, name=name)
    audio = render_audio(midi, config=config, name=name)  # (samples,) float32 at config.sample_rate
    return extract_features(name=name, midi=midi, audio=audio, config=config)


def _extract_task(name: str, midi_bytes: bytes, key: str, cache: FeatureCache, config: FeatureConfig
                  ) -> tuple[str, Any]:
    """Ray task body: ``("cached" | "extracted", ItemFeatures)`` or ``("failed", reason)``. Never raises for a
    bad clip, so one broken file cannot stop the others."""
    try:
        features = cache.get(key, name=name)
        if features is not None:
            return "cached", features
        features = clip_features(name, midi_bytes, config=config)
        cache.put(key, features)
        return "extracted", features
    except MerError as error:
        return "failed", getattr(error, "reason", None) or str(error)
    except Exception as error:  # noqa: BLE001 - report any clip's failure by name instead of losing the run
        return "failed", f"{type(error).__name__}: {error}"


_extract_remote = ray.remote(num_cpus=1, max_retries=2)(_extract_task)


def ensure_ray() -> None:
    """Start a local Ray (or join ``RAY_ADDRESS``) unless one is running: extraction and training use Ray."""
    if not ray.is_initialized():
        ray.init()


def extract_clips(
    clips: Sequence[Clip],
    *,
    config: FeatureConfig,
    cache: FeatureCache,
    progress: bool = True,
    semitones: int = 0,
) -> Extraction:
    """Features of every clip, from the cache or computed in parallel Ray tasks (one task per clip).

    Ray must be initialised (``ray.init``). Failures are collected, printed (when ``progress``) and skipped.

    Args:
        clips: EMOPIA clips (:func:`mer.train.emopia.load_split`).
        config: the feature configuration (part of every cache key).
        cache: the feature cache; must be reachable at the same path from every node that runs a task.
        progress: a progress bar (:func:`mer.train.progress.progress_bar`), and the failures at the end.
        semitones: extract the clips' MIDI moved by this many semitones (:func:`mer.features.transpose_midi`;
            the moved bytes are what the cache is keyed by). Bytes mido cannot parse raise ``BadInputError``.

    Returns:
        An :class:`Extraction`; its ``clips`` keep the input order.
    """
    start = time.monotonic()
    keys, refs = [], []
    for clip in clips:
        data = clip.midi_path.read_bytes()
        if semitones:
            data = transpose_midi(data, semitones, name=clip.name)
        key = FeatureCache.key(data, config=config)
        keys.append(key)
        refs.append(_extract_remote.remote(clip.name, data, key, cache, config))
    index_of = {ref: i for i, ref in enumerate(refs)}
    results: list[tuple[str, Any] | None] = [None] * len(refs)
    bar = progress_bar(total=len(refs), desc="[features]", unit="clip", enabled=progress)
    counts = {"cached": 0, "extracted": 0, "failed": 0}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=min(len(pending), 8), timeout=5.0)
        for ref in ready:
            status, value = ray.get(ref)
            results[index_of[ref]] = (status, value)
            counts[status] += 1
        if ready:
            bar.set_postfix(counts, refresh=False)
            bar.update(len(ready))
    bar.close()

    done, failures = [], []
    for clip, key, (status, value) in zip(clips, keys, results, strict=True):  # type: ignore[misc]
        if status == "failed":
            failures.append((clip.name, str(value)))
            continue
        features: ItemFeatures = value
        if features.name != clip.name:  # a cache entry shared by two clips with identical bytes
            features = dataclasses.replace(features, name=clip.name)
        done.append(ClipFeatures(clip=clip, key=key, features=features))
    if failures:
        progress_line(f"[features] skipped {len(failures)} clip(s) that failed extraction:", enabled=progress)
        for name, reason in failures:
            progress_line(f"[features]   {name}: {reason}", enabled=progress)
    return Extraction(clips=done, failures=failures, cached=counts["cached"], seconds=time.monotonic() - start)


def labelled_rows(clips: Iterable[ClipFeatures]) -> list[dict[str, Any]]:
    """Window rows (:meth:`ItemFeatures.window_rows`) of labelled clips, each with ``quadrant`` (int64 0..3)."""
    rows = []
    for item in clips:
        for row in item.features.window_rows():
            row["quadrant"] = np.int64(item.clip.quadrant)
            rows.append(row)
    return rows


def emopia_windows(
    clips: Sequence[Clip],
    *,
    config: FeatureConfig,
    cache: FeatureCache,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Labelled window rows of EMOPIA clips (features via :func:`extract_clips`; failed clips skipped and
    printed). Use :func:`extract_clips` directly to get the failures as data."""
    return labelled_rows(extract_clips(clips, config=config, cache=cache, progress=progress).clips)


def window_dataset(rows: Sequence[Mapping[str, Any]]) -> "ray.data.Dataset":
    """A Ray Data dataset of window rows (one row per window; tensor columns for the arrays)."""
    return ray.data.from_items([dict(row) for row in rows])


def stack_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Window rows -> one batch: each key's values stacked along a new first axis (N, ...); ``token_length``
    becomes ``token_lengths``."""
    if not rows:
        raise ValueError("no rows to stack")
    return {ROW_KEYS_TO_BATCH.get(key, key): np.stack([np.asarray(row[key]) for row in rows]) for key in rows[0]}


def window_table(clips: Sequence[ClipFeatures]) -> dict[str, np.ndarray]:
    """All windows of labelled clips as one batch (stacked per clip, no per-row dicts).

    Keys and shapes (N windows): ``name`` (N,) str, ``window_index`` (N,) int64, ``window_start`` (N,) float64,
    ``tokens`` (N, L) int64, ``token_lengths`` (N,) int64, ``chroma`` (N, 12, F) float32, ``mfcc`` (N, M, F)
    float32, ``present`` (N, 3) bool, ``summary`` (N, SUMMARY_SIZE) float32, ``quadrant`` (N,) int64.
    """
    if not clips:
        raise ValueError("no clips: every clip failed extraction, or none were given")
    features = [c.features for c in clips]
    counts = [f.num_windows for f in features]
    return {
        "name": np.array([f.name for f, n in zip(features, counts, strict=True) for _ in range(n)]),
        "window_index": np.concatenate([np.arange(n, dtype=np.int64) for n in counts]),
        "window_start": np.concatenate([f.window_starts for f in features]),
        "tokens": np.concatenate([f.tokens for f in features]),
        "token_lengths": np.concatenate([f.token_lengths for f in features]),
        "chroma": np.concatenate([f.chroma for f in features]),
        "mfcc": np.concatenate([f.mfcc for f in features]),
        "present": np.stack([f.present for f, n in zip(features, counts, strict=True) for _ in range(n)]),
        "summary": np.concatenate([f.summary for f in features]),
        "quadrant": np.concatenate(
            [np.full(n, c.clip.quadrant, dtype=np.int64) for c, n in zip(clips, counts, strict=True)]
        ),
    }


def take(table: Mapping[str, np.ndarray], indices: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``indices`` (K,) of a batch, as a new batch."""
    return {key: value[indices] for key, value in table.items()}


def collate(rows_or_batch: Sequence[Mapping[str, Any]] | Mapping[str, Any], *, device: str | torch.device = "cpu"
            ) -> dict[str, torch.Tensor]:
    """Window rows (list of dicts) or a batch (dict of stacked arrays, e.g. from Ray Data) -> torch tensors.

    Returns the model inputs ``tokens`` (B, L) long, ``token_lengths`` (B,) long, ``chroma`` (B, 12, F) float32,
    ``mfcc`` (B, M, F) float32, ``present`` (B, 3) bool, and ``quadrant`` (B,) long when labelled. Names and
    window positions are left out (they are not tensors).
    """
    if isinstance(rows_or_batch, Mapping):
        batch = {ROW_KEYS_TO_BATCH.get(k, k): v for k, v in rows_or_batch.items()}
    else:
        batch = stack_rows(rows_or_batch)
    return to_tensors(batch, device=device)


def data_fingerprint(splits: Mapping[str, Sequence[ClipFeatures]]) -> str:
    """A hash of exactly what a model was trained and selected on: per split, each clip's name, label and
    feature-cache key (which covers the MIDI bytes and the feature config). 16 hex digits."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        for item in sorted(splits[split], key=lambda c: c.clip.name):
            digest.update(f"{split}\t{item.clip.name}\t{item.clip.quadrant}\t{item.key}\n".encode())
    return digest.hexdigest()[:16]
