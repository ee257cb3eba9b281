"""Reading MIDI files safely and turning them into one array of piano notes.

``read_midi`` is the only door from raw bytes to a :class:`pretty_midi.PrettyMIDI`: whatever is wrong with the
bytes (empty, truncated, random, another format, no notes, absurd timing) it raises
:class:`mer.errors.BadInputError` naming the file and the reason, never a mido/pretty_midi traceback.
``piano_notes`` merges the pitched instruments into one ``(N, 4)`` array and applies the sustain pedal, the
input of the MIDI-like tokens (paper, Sec. III-A; :mod:`mer.features.tokens`).
"""
from __future__ import annotations

import io
import warnings

import mido
import numpy as np
import pretty_midi

from mer.config import FeatureConfig
from mer.errors import BadInputError

MAX_MIDI_BYTES = 16 * 1024 * 1024
"""Larger files are rejected before parsing: mido parses in pure Python, and piano MIDI files are kilobytes
(EMOPIA's largest is ~5 kB, a long concert performance well under 1 MB)."""

MAX_MIDI_SECONDS = 3600.0
"""A MIDI file lasting longer than this is rejected: such lengths come from absurd tempos or corrupt delta
times, and every later stage (tokens, rendering, windows) grows with the duration."""

SUSTAIN_CC = 64
"""Control change number of the sustain (damper) pedal; values >= 64 mean pedal down (General MIDI)."""

# Leading bytes of formats people mistake for MIDI, so the reason can say what the file is instead.
_OTHER_FORMATS = (
    (b"RIFF", "a RIFF file (WAV audio?)"),
    (b"fLaC", "FLAC audio"),
    (b"OggS", "Ogg audio"),
    (b"ID3", "MP3 audio"),
    (b"\xff\xfb", "MP3 audio"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"%PDF", "a PDF document"),
)

NOTE_COLUMNS: tuple[str, ...] = ("start_s", "end_s", "pitch", "velocity")
"""Columns of the note arrays of :func:`piano_notes` and :mod:`mer.features.tokens`."""


def read_midi(data: bytes, *, name: str) -> pretty_midi.PrettyMIDI:
    """Parse a Standard MIDI File held in memory.

    Args:
        data: the file's bytes.
        name: how the file is named in errors (a path or object key).

    Returns:
        The parsed MIDI, guaranteed to hold at least one pitched (non-drum) note of positive duration and to
        last at most :data:`MAX_MIDI_SECONDS`.

    Raises:
        BadInputError: ``(name, reason)`` for an empty file, a file that is not MIDI (no ``MThd`` header), a
        truncated or corrupt file, an unsupported time division, a zero tempo, an absurd duration, or a file
        without pitched notes. pretty_midi's warnings (e.g. tempo events on non-zero tracks) are silenced.
    """
    if len(data) == 0:
        raise BadInputError(name, "empty file")
    if len(data) > MAX_MIDI_BYTES:
        raise BadInputError(name, f"file is {len(data) / 2**20:.1f} MiB, over the {MAX_MIDI_BYTES // 2**20} MiB "
                                  "limit for a MIDI file")
    if not data.startswith(b"MThd"):
        what = next((label for magic, label in _OTHER_FORMATS if data.startswith(magic)), None)
        raise BadInputError(name, "not a MIDI file (no MThd header" + (f"; looks like {what})" if what else ")"))

    # mido first, so file-level damage is told apart from what pretty_midi cannot interpret.
    try:
        midi_file = mido.MidiFile(file=io.BytesIO(data), charset="latin1")
    except EOFError:
        raise BadInputError(name, "truncated MIDI: unexpected end of file") from None
    except Exception as error:  # mido raises OSError/ValueError/KeyError/IndexError... on damaged bytes
        raise BadInputError(name, f"truncated or corrupt MIDI: {_short(error)}") from None

    if midi_file.ticks_per_beat <= 0:  # negative = SMPTE time code division, which pretty_midi misreads
        raise BadInputError(name, f"unsupported MIDI time division ({midi_file.ticks_per_beat} ticks per beat; "
                                  "SMPTE timing is not supported)")
    if any(msg.type == "set_tempo" and msg.tempo == 0 for track in midi_file.tracks for msg in track):
        raise BadInputError(name, "corrupt MIDI: a tempo of 0 microseconds per beat")
    # An empty track (no events at all, not even end-of-track) is malformed but harmless; pretty_midi would
    # fail on it with an unhelpful "max() arg is an empty sequence".
    midi_file.tracks = [track for track in midi_file.tracks if len(track) > 0]
    if not midi_file.tracks:
        raise BadInputError(name, "MIDI has no notes (no events in any track)")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            midi = pretty_midi.PrettyMIDI(mido_object=midi_file)
    except Exception as error:  # e.g. pretty_midi's "largest tick of ..., likely corrupt"
        raise BadInputError(name, f"corrupt MIDI: {_short(error)}") from None

    pitched = [note for inst in midi.instruments if not inst.is_drum for note in inst.notes]
    if not any(note.end > note.start for note in pitched):
        if pitched:
            raise BadInputError(name, "MIDI has no notes of positive duration")
        if any(inst.notes for inst in midi.instruments):
            raise BadInputError(name, "MIDI has only drum notes (no pitched notes)")
        raise BadInputError(name, "MIDI has no notes")
    end = midi.get_end_time()
    if not np.isfinite(end) or end > MAX_MIDI_SECONDS:
        raise BadInputError(name, f"MIDI lasts {end:.0f} s, over the {MAX_MIDI_SECONDS:.0f} s limit "
                                  "(absurd tempo or corrupt timing)")
    return midi


def piano_notes(midi: pretty_midi.PrettyMIDI, *, config: FeatureConfig) -> np.ndarray:
    """All pitched notes of a MIDI as one array, with the sustain pedal applied.

    Every non-drum instrument is merged (a piano part split over hands or channels is one piano). Notes of
    zero or negative duration (``end <= start``, possible only in hand-built MIDI objects: pretty_midi never
    reads one from a file) make no sound and are dropped.

    Sustain pedal (when ``config.sustain_pedal``; each instrument's own CC64): a note released while the pedal
    is down (CC64 >= 64; pedal events at the release time count first) is held until the pedal is released,
    but no later than the next onset of the same pitch in that instrument (the re-struck key damps the old
    string), as in Oore et al. 2018 / Magenta's ``apply_sustain_control_changes``. A pedal never released holds
    to ``midi.get_end_time()``. Unlike Magenta, the pedal only ever lengthens a note: a note still held by the
    finger when its pitch is struck again keeps its own end.

    Args:
        midi: a parsed MIDI (from :func:`read_midi`).
        config: uses ``sustain_pedal``.

    Returns:
        float64 ``(N, 4)``: columns ``start_s, end_s`` (seconds), ``pitch`` (MIDI 0..127), ``velocity``
        (1..127), sorted by start, then pitch (then end, velocity, for determinism).
    """
    piece_end = midi.get_end_time()
    parts = []
    for instrument in midi.instruments:
        if instrument.is_drum or not instrument.notes:
            continue
        notes = np.array([(n.start, n.end, n.pitch, n.velocity) for n in instrument.notes], dtype=np.float64)
        notes = notes[notes[:, 1] > notes[:, 0]]
        if config.sustain_pedal and len(notes):
            notes = _apply_sustain(notes, instrument.control_changes, piece_end=piece_end)
        parts.append(notes)
    if not parts:
        return np.zeros((0, 4), dtype=np.float64)
    notes = np.concatenate(parts)
    order = np.lexsort((notes[:, 3], notes[:, 1], notes[:, 2], notes[:, 0]))
    return notes[order]


def _apply_sustain(notes: np.ndarray, control_changes: list, *, piece_end: float) -> np.ndarray:
    """Lengthen the notes (``(N, 4)``, one instrument) released while that instrument's sustain pedal is down."""
    downs, ups = _pedal_intervals(control_changes, piece_end=piece_end)
    if len(downs) == 0:
        return notes
    start, end, pitch = notes[:, 0], notes[:, 1], notes[:, 2]
    # The pedal interval [down, up) holding each release time, if any.
    interval = np.searchsorted(downs, end, side="right") - 1
    held = interval >= 0
    held[held] = end[held] < ups[interval[held]]
    if not held.any():
        return notes
    release = np.where(held, ups[np.maximum(interval, 0)], end)
    # Next onset of the same pitch strictly after the note's own onset (inf when none).
    next_onset = np.full(len(notes), np.inf)
    for p in np.unique(pitch):
        index = np.flatnonzero(pitch == p)
        onsets = np.sort(start[index])
        following = np.searchsorted(onsets, start[index], side="right")
        has_next = following < len(onsets)
        next_onset[index[has_next]] = onsets[following[has_next]]
    extended = notes.copy()
    extended[:, 1] = np.where(held, np.maximum(end, np.minimum(release, next_onset)), end)
    return extended


def _pedal_intervals(control_changes: list, *, piece_end: float) -> tuple[np.ndarray, np.ndarray]:
    """Pedal-down intervals ``[down, up)`` in seconds, as two sorted float64 ``(K,)`` arrays.

    Repeated "down" values while already down (half-pedal values >= 64) do not start a new interval; a pedal
    still down at the end is released at ``piece_end``.
    """
    events = sorted(
        ((cc.time, cc.value >= 64) for cc in control_changes if cc.number == SUSTAIN_CC),
        key=lambda event: event[0],  # stable: same-time events keep file order, the last one wins
    )
    downs: list[float] = []
    ups: list[float] = []
    is_down = False
    for time, down in events:
        if down and not is_down:
            downs.append(time)
        elif not down and is_down:
            ups.append(time)
        is_down = down
    if is_down:
        ups.append(max(piece_end, downs[-1]))
    return np.asarray(downs, dtype=np.float64), np.asarray(ups, dtype=np.float64)


def _short(error: BaseException, limit: int = 120) -> str:
    """A one-line, bounded description of a library exception for an error reason."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
