"""Training on more than one piano timbre: each training window's audio features from a rendering of its MIDI
with one of several SoundFonts, drawn anew at every step (``TrainConfig.extra_soundfonts``).

The acoustic branches otherwise learn the one SoundFont they are trained with: a model trained on TimGM6mb
renderings loses most of its tone branch on FluidR3_GM's (README, "Another piano timbre"). The tokens, the
summary and the label come from the MIDI and are the same in every rendering; only the chromagram and the MFCCs
change. An epoch costs what it did with one SoundFont: every window is seen once, in one of its renderings.

:func:`rendering_table` adds the other renderings to a window table, aligned by clip and window (a rendering
whose clip failed, or that has fewer windows — a longer or shorter release tail — keeps the primary's frames
for the missing windows); :func:`extract_renderings` extracts them (refusing a SoundFont that does not load or
renders too few clips); :func:`pick_renderings` draws one rendering per window of a batch.

Transposition with re-rendered audio (``TrainConfig.transpose_audio = "rendered"``) is the same idea along
another axis: :func:`extract_transpositions` renders every training clip's MIDI moved by each k in [-n, n]
(n = ``transpose_semitones``, k ≠ 0), :func:`transposition_table` adds them to the window table (float16, as
``transposed_chroma`` / ``transposed_mfcc``), and :func:`mer.features.transpose_batch` takes a window's chroma and
MFCCs from the rendering of the k it draws. A window with no rendering for some k falls back to the rolled form
there (chroma rolled by k, MFCCs unchanged).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from mer.config import MerConfig
from mer.errors import MerError
from mer.features import (
    RENDERED_KEYS, FeatureCache, loaded_soundfont, rendered_shifts, rendered_slot, roll_chroma, soundfont_path,
)
from mer.train.dataset import ClipFeatures, extract_clips
from mer.train.emopia import Clip

RENDERED = ("chroma", "mfcc")
"""The window-table keys a rendering changes."""


MIN_COVERAGE = 0.95
"""Share of the training clips a second SoundFont must render: below it, training stops instead of quietly
seeing mostly the primary rendering while the artifact says it learnt from both."""


def extract_renderings(clips: Sequence[Clip], *, config: MerConfig, cache: FeatureCache, progress: bool = True
                       ) -> list[list[ClipFeatures]]:
    """The features of ``clips`` rendered with each of ``config.training.extra_soundfonts`` (Ray tasks, through
    the cache), one list per SoundFont.

    Raises:
        ConfigError: a SoundFont is missing or FluidSynth cannot load it (checked before any extraction).
        MerError: a SoundFont rendered fewer than :data:`MIN_COVERAGE` of the clips (its failures named).
    """
    configs = [dataclasses.replace(config.features, soundfont=sf) for sf in config.training.extra_soundfonts]
    for features in configs:
        loaded_soundfont(soundfont_path(features))
    out = []
    for features in configs:
        extraction = extract_clips(clips, config=features, cache=cache, progress=progress)
        if len(extraction.clips) < MIN_COVERAGE * len(clips):
            raise MerError(f"SoundFont {features.soundfont} rendered {len(extraction.clips)} of {len(clips)} "
                           f"training clips; failures: {extraction.failures[:5]}")
        out.append(extraction.clips)
    return out


def extract_transpositions(clips: Sequence[Clip], *, config: MerConfig, cache: FeatureCache, progress: bool = True
                           ) -> dict[int, list[ClipFeatures]]:
    """The features of ``clips`` with their MIDI moved by each k in [-n, n], k ≠ 0 (n =
    ``config.training.transpose_semitones``), rendered with the feature config's SoundFont (Ray tasks, through
    the cache): ``{k: clips}``.

    Raises:
        MerError: some k rendered fewer than :data:`MIN_COVERAGE` of the clips (its failures named).
    """
    out = {}
    for k in rendered_shifts(config.training.transpose_semitones):
        if progress:
            print(f"[transpose] rendering the training clips moved by {k:+d} semitones", flush=True)
        extraction = extract_clips(clips, config=config.features, cache=cache, progress=progress, semitones=k)
        if len(extraction.clips) < MIN_COVERAGE * len(clips):
            raise MerError(f"moved by {k:+d} semitones, {len(extraction.clips)} of {len(clips)} training clips "
                           f"rendered; failures: {extraction.failures[:5]}")
        out[k] = extraction.clips
    return out


def _aligned(table: Mapping[str, np.ndarray], clips: Sequence[ClipFeatures]) -> dict[str, list[np.ndarray | None]]:
    """For each :data:`RENDERED` key and each window of ``table``, its frames in ``clips`` (another rendering of the
    same clips, aligned by clip name and window index), or None where that rendering lacks the window or its frames
    differ in shape."""
    found = {(c.clip.name, w): c.features for c in clips for w in range(c.features.num_windows)}
    out: dict[str, list[np.ndarray | None]] = {key: [] for key in RENDERED}
    for i, (name, window) in enumerate(zip(table["name"], table["window_index"])):
        features = found.get((str(name), int(window)))
        for key in RENDERED:
            frames = None if features is None else getattr(features, key)[int(window)]
            out[key].append(frames if frames is not None and frames.shape == table[key][i].shape else None)
    return out


def transposition_table(table: Mapping[str, np.ndarray], by_shift: Mapping[int, Sequence[ClipFeatures]], *,
                        limit: int) -> dict[str, np.ndarray]:
    """``table`` (the primary rendering's windows) with ``transposed_chroma`` (N, 2·limit, 12, F) and
    ``transposed_mfcc`` (N, 2·limit, M, F), float16: window i's frames in the rendering moved by k at slot
    :func:`mer.features.transpose.rendered_slot` ``(k, limit)``. A window missing from some k's rendering gets
    the rolled form for that k (its chroma rolled by k, its MFCCs as they are)."""
    shifts = rendered_shifts(limit)
    if sorted(by_shift) != shifts:
        raise ValueError(f"need a rendering for every k in {shifts}, got {sorted(by_shift)}")
    frames = {key: np.empty((len(table[key]), len(shifts), *table[key].shape[1:]), dtype=np.float16)
              for key in RENDERED}
    for k in shifts:
        for key, column in _aligned(table, by_shift[k]).items():
            for i, found in enumerate(column):
                if found is None:
                    found = roll_chroma(table[key][i], k) if key == "chroma" else table[key][i]
                frames[key][i, rendered_slot(k, limit)] = found
    return {**table, **{name: frames[key] for key, name in zip(RENDERED, RENDERED_KEYS)}}


def rendering_table(table: Mapping[str, np.ndarray], alternatives: Sequence[Sequence[ClipFeatures]]
                    ) -> dict[str, np.ndarray]:
    """``table`` (:func:`mer.train.dataset.window_table` of the primary rendering) with ``renderings_chroma``
    (N, K, 12, F) and ``renderings_mfcc`` (N, K, M, F): window i's frames in each of the K ``alternatives`` (one
    list of extracted clips per other SoundFont, any order, failed clips absent)."""
    out = dict(table)
    stacked = {key: np.repeat(table[key][:, None], len(alternatives), axis=1) for key in RENDERED}  # (N, K, rows, F)
    for k, clips in enumerate(alternatives):
        for key, column in _aligned(table, clips).items():
            for i, frames in enumerate(column):
                if frames is not None:
                    stacked[key][i, k] = frames
    out.update({f"renderings_{key}": frames for key, frames in stacked.items()})
    return out


def pick_renderings(batch: Mapping[str, np.ndarray], *, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch whose windows each take their ``chroma`` and ``mfcc`` from one rendering drawn uniformly from the
    primary and the K others (the same rendering for both); the ``renderings_*`` keys are dropped and every other
    key passes through. A batch without them is returned as it is (as a new dict)."""
    out = {k: v for k, v in batch.items() if not k.startswith("renderings_")}
    if "renderings_chroma" not in batch:
        return out
    count = batch["renderings_chroma"].shape[1]
    choice = rng.integers(0, count + 1, size=len(batch["quadrant"]))  # 0: the primary rendering
    rows = np.flatnonzero(choice)
    for key in RENDERED:
        frames = np.array(batch[key], copy=True)
        frames[rows] = batch[f"renderings_{key}"][rows, choice[rows] - 1]
        out[key] = frames
    return out
