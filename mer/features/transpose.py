"""Transposition: a piece moved by k semitones, consistently in every input (issue: transposition augmentation).

Every interval is kept and only the key moves, so the emotion label stays. Tokens: note-on and note-off ids
shift by k (time shifts, velocities and padding stay). Chromagram: the 12 pitch-class rows roll by k (C's energy
moves to the pitch class k above). Summary descriptors (:mod:`mer.features.key`): key-invariant by design,
except the mean pitch, which moves by k semitones. MFCCs (tone colour) are left as they are: a piano's timbre
barely changes over a few semitones, and re-rendering every transposition would multiply the feature cost.
That is the cheap form; :func:`transpose_midi` moves the MIDI file itself, so its rendering gives the chromagram
and MFCCs of the transposed performance (``TrainConfig.transpose_audio = "rendered"``, mer.train.renderings).
NumPy, and mido for the MIDI bytes.
"""
from __future__ import annotations

import io

import mido
import numpy as np

from mer.errors import BadInputError
from mer.features.summary import PITCH_INDICES, PITCH_MEAN_SCALE
from mer.features.tokens import NOTE_OFF, NOTE_ON, TIME_SHIFT


def _note_mask(tokens: np.ndarray) -> np.ndarray:
    return tokens < TIME_SHIFT  # note-on (0..127) and note-off (128..255) ids


def pitch_span(tokens: np.ndarray) -> tuple[int, int] | None:
    """Lowest and highest pitch named by note tokens in ``tokens`` (L,), or None when there is none."""
    tokens = np.asarray(tokens)
    notes = tokens[_note_mask(tokens)]
    if notes.size == 0:
        return None
    pitches = np.where(notes < NOTE_OFF, notes - NOTE_ON, notes - NOTE_OFF)
    return int(pitches.min()), int(pitches.max())


def allowed_shifts(tokens: np.ndarray, limit: int) -> tuple[int, int]:
    """The range ``(low, high)`` of shifts within ``[-limit, limit]`` that keep every pitch in 0..127."""
    span = pitch_span(tokens)
    if span is None:
        return -limit, limit
    return max(-limit, -span[0]), min(limit, 127 - span[1])


def transpose_tokens(tokens: np.ndarray, k: int) -> np.ndarray:
    """MIDI-like tokens (..., L) moved by ``k`` semitones: note-on/off ids + k, every other id unchanged.

    Raises:
        ValueError: a pitch would leave 0..127.
    """
    tokens = np.asarray(tokens)
    out = tokens.copy()
    mask = _note_mask(tokens)
    if k == 0 or not mask.any():
        return out
    pitches = np.where(tokens < NOTE_OFF, tokens - NOTE_ON, tokens - NOTE_OFF)[mask]
    if pitches.min() + k < 0 or pitches.max() + k > 127:
        raise ValueError(f"transposing by {k} moves pitches {pitches.min()}..{pitches.max()} outside 0..127")
    out[mask] = tokens[mask] + k
    return out


DRUM_CHANNEL = 9
"""General MIDI's percussion channel (10, counted from 1): its note numbers name drums, not pitches."""

_PITCHED = ("note_on", "note_off", "polytouch")


def transpose_midi(data: bytes, k: int, *, name: str) -> bytes:
    """A Standard MIDI File (bytes) with every pitched note moved by ``k`` semitones; timing, velocities,
    pedals, tempo and the drum channel unchanged. A note that ``k`` would move off 0..127 is dropped (its delta
    time carried to the next event), as a transposed piano could not play it.

    Raises:
        BadInputError: ``(name, reason)`` when mido cannot parse the bytes.
    """
    try:
        midi = mido.MidiFile(file=io.BytesIO(data))
    except Exception as error:  # mido raises OSError, EOFError, KeyError, ValueError... on corrupt bytes
        raise BadInputError(name, f"not a readable MIDI file ({type(error).__name__}: {error})") from error
    for track in midi.tracks:
        kept, carried = [], 0
        for message in track:
            if message.type in _PITCHED and message.channel != DRUM_CHANNEL:
                pitch = message.note + k
                if not 0 <= pitch <= 127:
                    carried += message.time
                    continue
                message = message.copy(note=pitch)
            kept.append(message.copy(time=message.time + carried) if carried else message)
            carried = 0
        track[:] = kept
    out = io.BytesIO()
    midi.save(file=out)
    return out.getvalue()


def roll_chroma(chroma: np.ndarray, k: int) -> np.ndarray:
    """A chromagram (..., 12, F) moved by ``k`` semitones: pitch-class row c goes to row (c + k) mod 12."""
    return np.roll(chroma, k, axis=-2)


def transpose_summary(summary: np.ndarray, k: int) -> np.ndarray:
    """Summary descriptors (..., SUMMARY_SIZE) of the piece moved by ``k`` semitones (only the mean pitch and the
    register of the bass and the top line move)."""
    out = np.array(summary, dtype=np.float32, copy=True)
    out[..., list(PITCH_INDICES)] += k / PITCH_MEAN_SCALE
    return out


RENDERED_KEYS = ("transposed_chroma", "transposed_mfcc")
"""Batch keys holding each window's renderings of its transposed MIDI, (B, 2·limit, rows, F): slot
:func:`rendered_slot` ``(k, limit)`` for k in [-limit, limit] without 0 (mer.train.renderings)."""


def rendered_shifts(limit: int) -> list[int]:
    """The shifts a ``transposed_*`` array holds, in slot order: every k in [-limit, limit] but 0."""
    return [k for k in range(-limit, limit + 1) if k]


def rendered_slot(k: int, limit: int) -> int:
    """Where the rendering moved by ``k`` (nonzero, in [-limit, limit]) lies in a ``transposed_*`` array: its index
    in :func:`rendered_shifts` ``(limit)``."""
    return k + limit if k < 0 else k + limit - 1


def transpose_batch(batch: dict[str, np.ndarray], *, limit: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch of windows, each moved by its own random k in ``[-limit, limit]`` (narrowed so every pitch stays
    on the keyboard): ``tokens`` (B, L), ``chroma`` (B, 12, F) and ``summary`` (B, S) move; every other key
    (labels included) is passed through unchanged. Returns a new dict; the input is not modified.

    With :data:`RENDERED_KEYS` in the batch, a window moved by k takes its ``chroma`` and ``mfcc`` from its
    rendering of the transposed MIDI instead of rolling the chroma (the same k is drawn either way); those keys
    are dropped from the result."""
    out = {key: value for key, value in batch.items() if key not in RENDERED_KEYS}
    rendered = all(key in batch for key in RENDERED_KEYS)
    tokens = np.array(batch["tokens"], copy=True)
    chroma = np.array(batch["chroma"], copy=True)
    mfcc = np.array(batch["mfcc"], copy=True) if rendered else None
    summary = np.array(batch["summary"], copy=True)
    lengths = np.asarray(batch["token_lengths"])
    for row in range(tokens.shape[0]):
        valid = tokens[row, : int(lengths[row])]
        low, high = allowed_shifts(valid, limit)
        k = int(rng.integers(low, high + 1))
        tokens[row, : int(lengths[row])] = transpose_tokens(valid, k)
        summary[row] = transpose_summary(summary[row], k)
        if rendered and k:
            chroma[row] = batch["transposed_chroma"][row, rendered_slot(k, limit)]
            mfcc[row] = batch["transposed_mfcc"][row, rendered_slot(k, limit)]
        else:
            chroma[row] = roll_chroma(chroma[row], k)
    out.update(tokens=tokens, chroma=chroma, summary=summary)
    if rendered:
        out["mfcc"] = mfcc
    return out
