"""MIDI-like tokens (Oore et al. 2018, "This time with feeling"), the symbolic branch's input (paper, Sec. III-A).

A performance is a sequence of events: NOTE_ON(pitch), NOTE_OFF(pitch), TIME_SHIFT(k steps) and
VELOCITY(bin). Token ids (``S = config.max_shift_steps``, ``B = config.velocity_bins``)::

    0 .. 127                 note-on of pitch 0..127                     (NOTE_ON + pitch)
    128 .. 255               note-off of pitch 0..127                    (NOTE_OFF + pitch)
    256 .. 256+S-1           time shift of k+1 steps of time_shift_ms    (TIME_SHIFT + k)
    256+S .. 256+S+B-1       velocity bin 0..B-1                         (velocity_offset(config) + bin)
    256+S+B                  padding                                     (pad_id(config) = vocab_size - 1)

Choices (see the README): times are rounded to the nearest ``time_shift_ms`` step (10 ms), so each decoded
time is within half a step (5 ms) of the original and shifts never accumulate error; a gap longer than
``S`` steps (1 s) is several shifts. A velocity token precedes a note-on only when the velocity bin differs
from the previous note-on's (Oore et al.: a velocity event sets the velocity of all following notes), so the
first note-on of a sequence always has one. At one time step, note-offs come before note-ons (a re-struck
key ends the old note first), except the note-off of a note that starts at the same step (its duration
rounds to zero), which comes after its note-on.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from mer.config import NOTE_OFF, NOTE_ON, TIME_SHIFT, FeatureConfig  # noqa: F401 — the id layout, re-exported

DEFAULT_VELOCITY = 64
"""Velocity given by :func:`notes_from_tokens` to note-ons that come before any velocity token (its bin's
representative value, like every decoded velocity)."""


def velocity_offset(config: FeatureConfig) -> int:
    """Id of velocity bin 0: ``TIME_SHIFT + config.max_shift_steps``."""
    return TIME_SHIFT + config.max_shift_steps


def pad_id(config: FeatureConfig) -> int:
    """The padding token's id, the last of the vocabulary: ``config.vocab_size - 1``."""
    return config.vocab_size - 1


def token_dtype(config: FeatureConfig) -> np.dtype:
    """The smallest unsigned integer type holding every token id of ``config`` (uint16 for the 389 ids)."""
    return np.min_scalar_type(config.vocab_size - 1)


def velocity_bin(velocity: float | np.ndarray, *, config: FeatureConfig) -> int | np.ndarray:
    """The bin of a MIDI velocity: ``floor(velocity * B / 128)``, B = ``config.velocity_bins`` equal bins over
    0..127 (with 32 bins: 0-3, 4-7, ..., 124-127).

    Args:
        velocity: a velocity or an array of velocities, 0..127 (values outside are clipped; fractions floored).

    Returns:
        ``int`` for a scalar, else an int64 array of the input's shape, in ``0 .. B-1``.
    """
    bins = _check_bins(config)
    values = np.clip(np.floor(np.asarray(velocity, dtype=np.float64)), 0, 127).astype(np.int64)
    result = values * bins // 128
    return int(result) if result.ndim == 0 else result


def bin_velocity(bin_index: int | np.ndarray, *, config: FeatureConfig) -> int | np.ndarray:
    """A bin's representative velocity: the middle (rounded down) of the velocities it holds, so
    ``velocity_bin(bin_velocity(b)) == b`` (with 32 bins: bin b -> 4b + 1).

    Returns:
        ``int`` for a scalar, else an int64 array of the input's shape.
    """
    bins = _check_bins(config)
    b = np.asarray(bin_index, dtype=np.int64)
    if np.any((b < 0) | (b >= bins)):
        raise ValueError(f"velocity bin out of range 0..{bins - 1}: {bin_index!r}")
    low = (b * 128 + bins - 1) // bins  # smallest velocity v with v * bins // 128 == b
    high = ((b + 1) * 128 + bins - 1) // bins - 1
    result = (low + high) // 2
    return int(result) if result.ndim == 0 else result


def midi_like_tokens(notes: np.ndarray, *, config: FeatureConfig) -> np.ndarray:
    """Serialise notes as MIDI-like tokens, starting at time 0 (no padding, no truncation).

    Args:
        notes: float ``(N, 4)``, columns ``start_s, end_s, pitch, velocity`` (seconds >= 0, end >= start,
            integer pitch 0..127, velocity 0..127), in any order (e.g. :func:`mer.features.midi.piano_notes`).
        config: uses ``time_shift_ms``, ``max_shift_steps``, ``velocity_bins``.

    Returns:
        int64 ``(L,)`` token ids in ``0 .. config.vocab_size - 2`` (never PAD). Empty for no notes.

    Raises:
        ValueError: for a malformed note array (a caller's bug, not a bad input file).
    """
    notes = _check_notes(notes)
    if len(notes) == 0:
        return np.zeros(0, dtype=np.int64)
    max_shift = config.max_shift_steps
    if max_shift < 1:
        raise ValueError(f"max_shift_steps must be >= 1, got {max_shift}")
    start, end = quantise_times(notes[:, 0], config=config), quantise_times(notes[:, 1], config=config)
    pitch = notes[:, 2].astype(np.int64)
    vel_bin = velocity_bin(notes[:, 3], config=config)
    n = len(notes)

    # One row per event: time step, rank within the step, pitch, is-on, velocity bin, note index.
    # Rank: note-offs first (0), then note-ons (1), then note-offs of notes that started at this step (2).
    step = np.concatenate([start, end])
    rank = np.concatenate([np.ones(n, np.int64), np.where(end == start, 2, 0)])
    is_on = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    event_pitch = np.concatenate([pitch, pitch])
    event_bin = np.concatenate([vel_bin, vel_bin])
    # The decoder closes the earliest-opened note of a pitch first, so same-pitch events at one step are
    # ordered to make that right: note-ons by their end step (the shorter note opens first, is closed first),
    # note-offs by their start step; remaining ties by original onset order.
    partner = np.concatenate([end, start])
    onset_order = np.argsort(notes[:, 0], kind="stable")
    note_rank = np.empty(n, np.int64)
    note_rank[onset_order] = np.arange(n)
    tie = np.concatenate([note_rank, note_rank])
    order = np.lexsort((tie, partner, event_pitch, rank, step))

    offset_vel = velocity_offset(config)
    tokens: list[int] = []
    now = 0
    current_bin = -1
    for i in order:
        gap = int(step[i]) - now
        if gap > 0:
            full, rest = divmod(gap, max_shift)
            tokens.extend([TIME_SHIFT + max_shift - 1] * full)
            if rest:
                tokens.append(TIME_SHIFT + rest - 1)
            now = int(step[i])
        if is_on[i]:
            if event_bin[i] != current_bin:
                current_bin = int(event_bin[i])
                tokens.append(offset_vel + current_bin)
            tokens.append(NOTE_ON + int(event_pitch[i]))
        else:
            tokens.append(NOTE_OFF + int(event_pitch[i]))
    return np.asarray(tokens, dtype=np.int64)


def notes_from_tokens(tokens: np.ndarray, *, config: FeatureConfig) -> np.ndarray:
    """Decode MIDI-like tokens back into notes (the inverse of :func:`midi_like_tokens` up to quantisation).

    A note-on opens a note at the current time with the current velocity (the last velocity token's bin
    representative, :func:`bin_velocity`; :data:`DEFAULT_VELOCITY` before any); a note-off closes the
    earliest-opened note of its pitch (first in, first out, as Magenta does) and is ignored when none is open;
    notes still open at the end close at the final time. PAD tokens are skipped.

    Args:
        tokens: integer ``(L,)`` ids in ``0 .. config.vocab_size - 1``.

    Returns:
        float64 ``(N, 4)``: ``start_s, end_s, pitch, velocity``, times multiples of ``time_shift_ms``, sorted
        by start, then pitch (then end, velocity).

    Raises:
        ValueError: for ids outside the vocabulary or a non-1-D array.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
        raise ValueError(f"token ids must be in 0..{config.vocab_size - 1}, got {tokens.min()}..{tokens.max()}")
    offset_vel = velocity_offset(config)
    pad = pad_id(config)
    velocity = bin_velocity(velocity_bin(DEFAULT_VELOCITY, config=config), config=config)
    now = 0
    open_notes: dict[int, deque[tuple[int, int]]] = {}
    rows: list[tuple[int, int, int, int]] = []
    for token in tokens.tolist():
        if token < NOTE_OFF:
            open_notes.setdefault(token - NOTE_ON, deque()).append((now, velocity))
        elif token < TIME_SHIFT:
            queue = open_notes.get(token - NOTE_OFF)
            if queue:
                onset, onset_velocity = queue.popleft()
                rows.append((onset, now, token - NOTE_OFF, onset_velocity))
        elif token < offset_vel:
            now += token - TIME_SHIFT + 1
        elif token < pad:
            velocity = bin_velocity(token - offset_vel, config=config)
        # else: PAD, nothing to do.
    for pitch, queue in open_notes.items():
        rows.extend((onset, now, pitch, onset_velocity) for onset, onset_velocity in queue)
    if not rows:
        return np.zeros((0, 4), dtype=np.float64)
    notes = np.asarray(rows, dtype=np.float64)
    notes[:, :2] *= config.time_shift_ms / 1000.0
    order = np.lexsort((notes[:, 3], notes[:, 1], notes[:, 2], notes[:, 0]))
    return notes[order]


def quantise_times(seconds: np.ndarray, *, config: FeatureConfig) -> np.ndarray:
    """Times in seconds -> int64 steps of ``time_shift_ms``, rounded to the nearest step (half to even), so
    ``|steps * time_shift_ms / 1000 - seconds| <= time_shift_ms / 2000`` (5 ms), up to float rounding."""
    return np.rint(np.asarray(seconds, dtype=np.float64) * (1000.0 / config.time_shift_ms)).astype(np.int64)


def _check_notes(notes: np.ndarray) -> np.ndarray:
    """Validate an ``(N, 4)`` note array; returns it as float64."""
    notes = np.asarray(notes, dtype=np.float64)
    if notes.ndim != 2 or notes.shape[1] != 4:
        raise ValueError(f"notes must have shape (N, 4) [start_s, end_s, pitch, velocity], got {notes.shape}")
    if len(notes) == 0:
        return notes
    if not np.isfinite(notes).all():
        raise ValueError("notes must be finite")
    start, end, pitch, velocity = notes.T
    if (start < 0).any():
        raise ValueError(f"note times must be >= 0 s, got a start of {start.min()}")
    if (end < start).any():
        raise ValueError("every note must end at or after its start")
    if (pitch < 0).any() or (pitch > 127).any() or (pitch != np.round(pitch)).any():
        raise ValueError("pitches must be integers in 0..127")
    if (velocity < 0).any() or (velocity > 127).any():
        raise ValueError("velocities must be in 0..127")
    return notes


def _check_bins(config: FeatureConfig) -> int:
    bins = config.velocity_bins
    if not 1 <= bins <= 128:
        raise ValueError(f"velocity_bins must be in 1..128, got {bins}")
    return bins
