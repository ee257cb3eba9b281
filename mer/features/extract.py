"""A piece → the three branches' inputs, window by window (paper, Sec. III-A/B/C).

The symbolic branch reads MIDI-like tokens (Sec. III-A), the harmony branch a chromagram (Sec. III-B) and the
tone-colour branch MFCCs (Sec. III-C), the last two from audio at 22.05 kHz with librosa. Every model input has
one size: a piece is cut into windows of ``config.window_seconds`` (hop ``config.hop_seconds``) and each window
becomes one row. Pure NumPy functions of their arguments: deterministic, no torch, no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pretty_midi

from mer.config import BRANCHES, SUMMARY_SIZE, FeatureConfig
from mer.errors import BadInputError
from mer.features.audio import DecodedAudio, check_audio
from mer.features.key import chroma_histogram, pitch_class_histogram
from mer.features.midi import piano_notes
from mer.features.spectral import spectral_features
from mer.features.summary import summary_descriptors
from mer.features.tokens import midi_like_tokens, pad_id

TRAILING_FRACTION = 0.25
"""A last window holding less than this fraction of ``window_seconds`` of the piece is dropped (unless it is
the only window): a few seconds of ringing-out would otherwise be a mostly-padding model input that still
counts as much as a full window when a piece's windows are averaged."""


def window_starts(duration_s: float, *, config: FeatureConfig) -> np.ndarray:
    """Start times of a piece's windows.

    Windows of ``window_seconds`` start every ``hop_seconds`` from 0. A window starts only while the piece has
    not ended and the previous window did not already reach the end (with overlapping windows, a later one
    would add nothing). The last window is dropped when it holds less than :data:`TRAILING_FRACTION` of a
    window of the piece, unless it is the only one — so a piece always has at least one window, and a short
    piece is one zero-padded window.

    Args:
        duration_s: the piece's length in seconds (<= 0 gives the single window at 0).
        config: ``window_seconds``, ``hop_seconds``.

    Returns:
        (W,) float64 seconds, W >= 1, ascending from 0.
    """
    window, hop = float(config.window_seconds), float(config.hop_seconds)
    if window <= 0 or hop <= 0:
        raise ValueError(f"window_seconds and hop_seconds must be positive, got {window} and {hop}")
    starts = [0.0]
    while starts[-1] + window < duration_s:
        start = len(starts) * hop  # multiplied, not summed: no drift over long pieces
        if start >= duration_s:
            break
        starts.append(start)
    if len(starts) > 1 and duration_s - starts[-1] < TRAILING_FRACTION * window:
        starts.pop()
    return np.asarray(starts, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class ItemFeatures:
    """One piece's model inputs, one row per window.

    Attributes:
        name: the item (file stem or EMOPIA clip name).
        duration: seconds, ``max(MIDI end time, audio length)``.
        window_starts: (W,) float64 seconds.
        tokens: (W, max_tokens) int64 MIDI-like tokens, padded with ``pad_id(config)``.
        token_lengths: (W,) int64 tokens before padding (0 when there is no MIDI or the window has no notes).
        chroma: (W, 12, F) float32 chromagram frames, zero-padded past the audio's end.
        mfcc: (W, n_mfcc, F) float32 MFCC frames, zero-padded past the audio's end.
        present: (3,) bool, in :data:`mer.config.BRANCHES` order: symbolic (MIDI given), harmony and tone
            (audio given). A missing modality's arrays are zeros.
        summary: (W, SUMMARY_SIZE) float32 per-window key, mode and note statistics
            (:func:`mer.features.summary.summary_descriptors`: from the window's notes, else its chromagram).
        pitch_classes: (12,) float64 the whole piece's pitch-class histogram (notes, else chromagram), from which
            :func:`mer.features.key.estimate_key` names the piece's key.

    ``F = config.frames_per_window``. Equality (``==``) compares every field exactly.
    """

    name: str
    duration: float
    window_starts: np.ndarray
    tokens: np.ndarray
    token_lengths: np.ndarray
    chroma: np.ndarray
    mfcc: np.ndarray
    present: np.ndarray
    summary: np.ndarray
    pitch_classes: np.ndarray

    def __post_init__(self) -> None:
        # Coerce dtypes once so every producer (extraction, cache, Ray rows) hands out the same types.
        for field_name, dtype in _DTYPES.items():
            object.__setattr__(self, field_name, np.ascontiguousarray(getattr(self, field_name), dtype=dtype))
        object.__setattr__(self, "duration", float(self.duration))
        windows = self.window_starts.shape[0]
        expected_ndim = {"window_starts": 1, "tokens": 2, "token_lengths": 1, "chroma": 3, "mfcc": 3, "summary": 2}
        for field_name, ndim in expected_ndim.items():
            array = getattr(self, field_name)
            if array.ndim != ndim or array.shape[0] != windows:
                raise ValueError(f"{field_name} has shape {array.shape}; expected {ndim} dims and {windows} windows")
        if windows < 1:
            raise ValueError("an item has at least one window")
        if self.chroma.shape[1] != 12 or self.chroma.shape[2] != self.mfcc.shape[2]:
            raise ValueError(f"chroma {self.chroma.shape} and mfcc {self.mfcc.shape} do not match")
        if self.present.shape != (len(BRANCHES),):
            raise ValueError(f"present has shape {self.present.shape}; expected ({len(BRANCHES)},)")
        if self.summary.shape[1] != SUMMARY_SIZE or self.pitch_classes.shape != (12,):
            raise ValueError(f"summary {self.summary.shape} or pitch_classes {self.pitch_classes.shape} malformed")

    @property
    def num_windows(self) -> int:
        return int(self.window_starts.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemFeatures):
            return NotImplemented
        return (
            self.name == other.name and self.duration == other.duration
            and all(np.array_equal(getattr(self, f), getattr(other, f)) for f in _DTYPES)
        )

    __hash__ = None  # mutable-by-content arrays: not hashable

    def window_rows(self) -> list[dict[str, Any]]:
        """One dict per window — the row format of the feature cache and of Ray Data datasets.

        Keys: ``name`` (str), ``window_index`` (int64), ``window_start`` (float64 s), ``duration`` (float64 s),
        ``tokens`` (max_tokens,) int64, ``token_length`` (int64), ``chroma`` (12, F) float32, ``mfcc``
        (n_mfcc, F) float32, ``present`` (3,) bool, ``summary`` (SUMMARY_SIZE,) float32, ``pitch_classes`` (12,)
        float64 (the item's ``present`` and ``pitch_classes`` repeated on every row).
        """
        return [
            {
                "name": self.name,
                "window_index": np.int64(index),
                "window_start": np.float64(self.window_starts[index]),
                "duration": np.float64(self.duration),
                "tokens": self.tokens[index],
                "token_length": np.int64(self.token_lengths[index]),
                "chroma": self.chroma[index],
                "mfcc": self.mfcc[index],
                "present": self.present.copy(),
                "summary": self.summary[index],
                "pitch_classes": self.pitch_classes.copy(),
            }
            for index in range(self.num_windows)
        ]

    @classmethod
    def from_window_rows(cls, rows: Sequence[dict[str, Any]]) -> "ItemFeatures":
        """Rebuild an item from its :meth:`window_rows` (any order).

        Raises:
            ValueError: no rows, rows of several items, or window indices that are not exactly 0..W-1.
        """
        if not rows:
            raise ValueError("no window rows")
        rows = sorted(rows, key=lambda row: int(row["window_index"]))
        names = {str(row["name"]) for row in rows}
        if len(names) != 1:
            raise ValueError(f"window rows of several items: {sorted(names)}")
        indices = [int(row["window_index"]) for row in rows]
        if indices != list(range(len(rows))):
            raise ValueError(f"window indices must be 0..{len(rows) - 1}, got {indices}")
        return cls(
            name=names.pop(),
            duration=float(rows[0]["duration"]),
            window_starts=np.array([row["window_start"] for row in rows]),
            tokens=np.stack([row["tokens"] for row in rows]),
            token_lengths=np.array([row["token_length"] for row in rows]),
            chroma=np.stack([row["chroma"] for row in rows]),
            mfcc=np.stack([row["mfcc"] for row in rows]),
            present=np.asarray(rows[0]["present"]),
            summary=np.stack([row["summary"] for row in rows]),
            pitch_classes=np.asarray(rows[0]["pitch_classes"]),
        )


_DTYPES = {
    "window_starts": np.float64,
    "tokens": np.int64,
    "token_lengths": np.int64,
    "chroma": np.float32,
    "mfcc": np.float32,
    "present": np.bool_,
    "summary": np.float32,
    "pitch_classes": np.float64,
}


def extract_features(
    *,
    name: str,
    midi: pretty_midi.PrettyMIDI | None,
    audio: np.ndarray | DecodedAudio | None,
    config: FeatureConfig,
) -> ItemFeatures:
    """Cut a piece into windows and compute every branch's input for each.

    Tokens: for each window, the notes sounding in it (:func:`mer.features.midi.piano_notes`) are shifted so the window
    starts at 0 s, clipped to the window (a note held over the window's start begins at 0, one running past its
    end stops there), tokenised (:func:`mer.features.tokens.midi_like_tokens`), truncated to ``config.max_tokens``
    (the window's beginning is kept) and padded with ``pad_id(config)``.
    Chroma/MFCC: computed once over the whole piece, from one STFT computed block by block
    (:func:`mer.features.spectral.spectral_features`), then sliced ``F = config.frames_per_window`` frames from
    the frame nearest each window's start, zero-padded past the audio's end.
    Summary (:func:`mer.features.summary.summary_descriptors`): each window's key, mode and note statistics from its
    notes (all of them, before the token cap), else from its chromagram; the piece's pitch-class histogram from
    all its notes, else its whole chromagram.

    Args:
        name: the item, for error messages and the result.
        midi: the parsed MIDI file, or None.
        audio: (samples,) mono float waveform at ``config.sample_rate`` Hz (rendered, or decoded), or a
            :class:`~mer.features.audio.DecodedAudio` (an audio file decoded block by block and already judged
            by :func:`check_audio`), or None.
        config: the feature configuration.

    Returns:
        The item's :class:`ItemFeatures`; ``duration = max(MIDI end time, audio seconds)``.

    Raises:
        BadInputError: neither MIDI nor audio; MIDI without notes; audio that fails :func:`check_audio`.
    """
    if midi is None and audio is None:
        raise BadInputError(name, "neither MIDI nor audio was given: nothing to extract features from")
    notes = None
    duration = 0.0
    if midi is not None:
        notes = piano_notes(midi, config=config)  # (N, 4) start_s, end_s, pitch, velocity
        if notes.shape[0] == 0:
            raise BadInputError(name, "MIDI file has no notes")
        duration = max(duration, float(midi.get_end_time()), float(notes[:, 1].max()))
    if audio is not None:
        if not isinstance(audio, DecodedAudio):
            audio = np.asarray(audio, dtype=np.float32)
            check_audio(audio, name=name, config=config)
            audio = DecodedAudio.from_waveform(audio, sample_rate=config.sample_rate, name=name)
        duration = max(duration, audio.samples / config.sample_rate)

    starts = window_starts(duration, config=config)
    windows, frames = starts.shape[0], config.frames_per_window
    tokens = np.full((windows, config.max_tokens), pad_id(config), dtype=np.int64)
    token_lengths = np.zeros(windows, dtype=np.int64)
    chroma = np.zeros((windows, 12, frames), dtype=np.float32)
    coefficients = np.zeros((windows, config.n_mfcc, frames), dtype=np.float32)
    summary = np.zeros((windows, SUMMARY_SIZE), dtype=np.float32)
    pitch_classes = np.zeros(12)

    if audio is not None:
        whole_chroma, whole_mfcc = spectral_features(audio, config=config)  # (12, T), (n_mfcc, T): one STFT
        pitch_classes = chroma_histogram(whole_chroma)
        for index, start in enumerate(starts):
            chroma[index] = frame_slice(whole_chroma, start, config=config)
            coefficients[index] = frame_slice(whole_mfcc, start, config=config)
            summary[index] = summary_descriptors(notes=None, chroma=chroma[index])
    if notes is not None:
        pitch_classes = pitch_class_histogram(notes)  # the score names the key better than a rendering
        for index, start in enumerate(starts):
            notes_in_window = window_notes(notes, start, config.window_seconds)
            window_tokens = midi_like_tokens(notes_in_window, config=config)
            length = min(window_tokens.shape[0], config.max_tokens)
            tokens[index, :length] = window_tokens[:length]
            token_lengths[index] = length
            if notes_in_window.shape[0]:
                summary[index] = summary_descriptors(notes=notes_in_window, chroma=None)

    return ItemFeatures(
        name=name,
        duration=duration,
        window_starts=starts,
        tokens=tokens,
        token_lengths=token_lengths,
        chroma=chroma,
        mfcc=coefficients,
        present=np.array([notes is not None, audio is not None, audio is not None]),
        summary=summary,
        pitch_classes=pitch_classes,
    )


def window_notes(notes: np.ndarray, start: float, length: float) -> np.ndarray:
    """The notes sounding in ``[start, start + length)``, in the window's own time.

    Args:
        notes: (N, 4) float64 ``start_s, end_s, pitch, velocity``.
        start, length: the window, seconds.

    Returns:
        (M, 4) float64, times shifted by ``-start`` and clipped to ``[0, length]``, sorted by start then pitch.
    """
    inside = (notes[:, 0] < start + length) & (notes[:, 1] > start)
    selected = notes[inside].copy()
    selected[:, :2] = np.clip(selected[:, :2] - start, 0.0, length)
    # Clipping moves held-over notes to 0 s, so restore the (start, pitch) order the tokenizer expects.
    order = np.lexsort((selected[:, 2], selected[:, 0]))
    return selected[order]


def frame_slice(frames: np.ndarray, start: float, *, config: FeatureConfig) -> np.ndarray:
    """The ``config.frames_per_window`` frames of a window starting at ``start`` seconds.

    Args:
        frames: (bins, T) a whole piece's chromagram or MFCCs (frame t is centred at ``t * hop_length /
            sample_rate`` s).
        start: the window's start, seconds.

    Returns:
        (bins, F) float32, zero-padded where the piece has no frames.
    """
    count = config.frames_per_window
    first = int(round(start * config.sample_rate / config.hop_length))
    out = np.zeros((frames.shape[0], count), dtype=np.float32)
    piece = frames[:, first:first + count]
    out[:, : piece.shape[1]] = piece
    return out
