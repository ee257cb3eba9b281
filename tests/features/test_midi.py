"""mer.features.midi: safe MIDI reading (every bad input is a BadInputError naming file and reason) and piano notes."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest

from mer.config import FeatureConfig
from mer.errors import BadInputError
from mer.features.midi import MAX_MIDI_BYTES, piano_notes, read_midi
from mer.train.emopia import load_split

PEDAL = FeatureConfig(sustain_pedal=True)
NO_PEDAL = FeatureConfig(sustain_pedal=False)


def midi_bytes(*tracks: list, ticks_per_beat: int = 480) -> bytes:
    """A type-1 MIDI file of the given tracks (lists of mido messages with delta times)."""
    midi = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    for messages in tracks:
        midi.tracks.append(mido.MidiTrack(messages))
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def one_note(channel: int = 0, *, pitch: int = 60, length: int = 480) -> list:
    return [mido.Message("note_on", channel=channel, note=pitch, velocity=80, time=0),
            mido.Message("note_off", channel=channel, note=pitch, velocity=0, time=length)]


def hand_built(notes: list[tuple[float, float, int]], pedal: list[tuple[float, int]] = (), *,
               extra: pretty_midi.Instrument | None = None) -> pretty_midi.PrettyMIDI:
    """A one-piano PrettyMIDI with ``(start, end, pitch)`` notes (velocity 80) and ``(time, value)`` CC64s."""
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(velocity=80, pitch=p, start=s, end=e) for s, e, p in notes]
    piano.control_changes = [pretty_midi.ControlChange(number=64, value=v, time=t) for t, v in pedal]
    midi.instruments.append(piano)
    if extra is not None:
        midi.instruments.append(extra)
    return midi


def ends_by_start_pitch(notes: np.ndarray) -> dict[tuple[float, int], float]:
    return {(float(s), int(p)): float(e) for s, e, p, _ in notes}


# --- reading real files ---------------------------------------------------------------------------------------

def raw_note_ons(data: bytes) -> list[tuple[int, int]]:
    """(pitch, velocity) of every sounding note-on in the file, read with mido (no pretty_midi)."""
    return [(m.note, m.velocity) for track in mido.MidiFile(file=io.BytesIO(data)).tracks for m in track
            if m.type == "note_on" and m.velocity > 0 and m.channel != 9]


def test_real_clips_give_sorted_piano_notes_one_per_note_on(emopia: Path) -> None:
    for clip in load_split(emopia, "test")[:5]:
        data = clip.midi_path.read_bytes()
        notes = piano_notes(read_midi(data, name=clip.name), config=NO_PEDAL)
        raw = raw_note_ons(data)
        assert notes.dtype == np.float64 and notes.shape == (len(raw), 4)
        # Every note-on of the file is one note, with its pitch and velocity (as a multiset: order aside).
        assert sorted(map(tuple, notes[:, [2, 3]].astype(int).tolist())) == sorted(raw)
        assert np.all(np.diff(notes[:, 0]) >= 0)
        same_start = np.diff(notes[:, 0]) == 0
        assert np.all(np.diff(notes[:, 2])[same_start] >= 0), "ties in start must be ordered by pitch"
        assert np.all(notes[:, 1] > notes[:, 0]) and notes[:, 0].min() >= 0
        # The notes lie within the file's own length.
        assert notes[:, 1].max() <= mido.MidiFile(file=io.BytesIO(data)).length + 1e-6


def test_sustain_pedal_lengthens_real_clip_notes(emopia: Path) -> None:
    clip = load_split(emopia, "val")[0]
    midi = read_midi(clip.midi_path.read_bytes(), name=clip.name)
    dry, wet = piano_notes(midi, config=NO_PEDAL), piano_notes(midi, config=PEDAL)
    np.testing.assert_array_equal(dry[:, [0, 2, 3]], wet[:, [0, 2, 3]])  # the pedal only moves note ends
    dry_ends, wet_ends = ends_by_start_pitch(dry), ends_by_start_pitch(wet)
    assert all(wet_ends[key] >= end for key, end in dry_ends.items())
    assert sum(wet_ends[key] > end + 0.05 for key, end in dry_ends.items()) > len(dry) // 10


# --- bad inputs -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty file"),
    ("truncated", "truncated MIDI: unexpected end of file"),
    ("random", "not a MIDI file (no MThd header)"),
    ("wav", "not a MIDI file (no MThd header; looks like a RIFF file (WAV audio?))"),
    ("no_notes", "MIDI has no notes"),
])
def test_bad_files_raise_bad_input_naming_file_and_reason(bad_midi_files: dict[str, Path], kind: str,
                                                          reason: str) -> None:
    path = bad_midi_files[kind]
    with pytest.raises(BadInputError) as caught:
        read_midi(path.read_bytes(), name=str(path))
    assert caught.value.item == str(path)
    assert caught.value.reason == reason
    assert str(caught.value) == f"{path}: {reason}"
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__), \
        "a library traceback is chained to the error"


HEADER_ONLY = b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0"  # type 1, one track announced, 480 ticks per beat
SMPTE = midi_bytes(one_note())[:12] + b"\xe7\x28" + midi_bytes(one_note())[14:]  # division: 25 fps x 40 ticks


@pytest.mark.parametrize("data, reason", [
    (midi_bytes(one_note(channel=9)), "MIDI has only drum notes (no pitched notes)"),
    (midi_bytes([mido.MetaMessage("set_tempo", tempo=0)], one_note()), "corrupt MIDI: a tempo of 0 microseconds"),
    (midi_bytes([mido.MetaMessage("set_tempo", tempo=0xFFFFFF)], one_note(length=1000), ticks_per_beat=1),
     "MIDI lasts 16777 s, over the 3600 s limit (absurd tempo or corrupt timing)"),
    (midi_bytes(one_note(length=20_000_000)), "corrupt MIDI: MIDI file has a largest tick of 20000001"),
    (SMPTE, "unsupported MIDI time division (-6360 ticks per beat"),
    (HEADER_ONLY, "truncated MIDI: unexpected end of file"),
    (HEADER_ONLY + b"MTrk\x00\x00\x00\x04\x00\x45\x10\x20", "truncated or corrupt MIDI: running status without"),
    (HEADER_ONLY + b"MTrk\x00\x00\x00\x00", "MIDI has no notes (no events in any track)"),
    (b"MThd" + b"\x00" * (MAX_MIDI_BYTES - 3), "file is 16.0 MiB, over the 16 MiB limit"),
    (b"fLaC\x00\x00\x00\x22", "not a MIDI file (no MThd header; looks like FLAC audio)"),
])
def test_malformed_midi_raises_bad_input(data: bytes, reason: str) -> None:
    with pytest.raises(BadInputError) as caught:
        read_midi(data, name="upload/piece.mid")
    assert caught.value.item == "upload/piece.mid"
    assert caught.value.reason.startswith(reason), caught.value.reason


def test_damaged_real_files_never_leak_library_errors(emopia: Path, rng: np.random.Generator) -> None:
    """Random byte edits of real clips either still read or raise BadInputError, and fast."""
    paths = sorted((emopia / "midis").glob("*.mid"))[:20]
    outcomes = {"read": 0, "rejected": 0}
    for trial in range(300):
        data = bytearray(paths[trial % len(paths)].read_bytes())
        for position in rng.integers(0, len(data), size=rng.integers(1, 6)):
            data[position] = rng.integers(0, 256)
        try:
            read_midi(bytes(data), name="damaged.mid")
            outcomes["read"] += 1
        except BadInputError as error:
            assert error.reason and error.item == "damaged.mid"
            outcomes["rejected"] += 1
    assert outcomes["read"] > 0 and outcomes["rejected"] > 0  # both paths were exercised


def test_pretty_midi_warnings_are_silenced() -> None:
    # Tempo on a non-zero track makes pretty_midi warn; a batch job would log that once per file.
    data = midi_bytes([mido.MetaMessage("track_name", name="x")],
                      [mido.MetaMessage("set_tempo", tempo=400_000)] + one_note())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        midi = read_midi(data, name="x.mid")
    assert [str(w.message) for w in caught] == []
    # pretty_midi reads tempo from track 0 only, so the note keeps the default 120 bpm: 480 ticks = 0.5 s.
    np.testing.assert_array_equal(piano_notes(midi, config=NO_PEDAL), [[0.0, 0.5, 60, 80]])


# --- piano notes and the sustain pedal --------------------------------------------------------------------------

@pytest.mark.parametrize("notes, pedal, expected_ends", [
    # Released while the pedal is down: held to the pedal release.
    ([(0.0, 0.5, 60)], [(0.2, 127), (2.0, 0)], [2.0]),
    # Released before the pedal goes down: unchanged.
    ([(0.0, 0.5, 60)], [(0.6, 127), (1.0, 0)], [0.5]),
    # Pedal released at the very moment of the key release: not held; pressed at that moment: held.
    ([(0.0, 0.5, 60)], [(0.2, 127), (0.5, 0)], [0.5]),
    ([(0.0, 0.5, 60)], [(0.5, 127), (1.0, 0)], [1.0]),
    # Values below 64 are "up", values >= 64 "down", repeated downs do not restart the hold.
    ([(0.0, 0.5, 60)], [(0.1, 63), (0.2, 64), (0.3, 100), (1.5, 10), (1.7, 0)], [1.5]),
    # Re-struck key: the held note ends at the next onset of its pitch; the new one is held to the release.
    ([(0.0, 0.5, 60), (1.0, 1.2, 60)], [(0.1, 127), (3.0, 0)], [1.0, 3.0]),
    # Another pitch's onset does not cut the hold.
    ([(0.0, 0.5, 60), (1.0, 1.2, 64)], [(0.1, 127), (3.0, 0)], [3.0, 3.0]),
    # A same-pitch note struck before the release (overlap) never shortens the earlier note.
    ([(0.0, 0.8, 60), (0.5, 0.9, 60)], [(0.1, 127), (3.0, 0)], [0.8, 3.0]),
    # Pedal never released: held to the end of the piece (the last event, here the other note's end).
    ([(0.0, 0.5, 60), (0.0, 4.0, 72)], [(0.1, 127)], [4.0, 4.0]),
])
def test_sustain_pedal_rule(notes, pedal, expected_ends) -> None:
    midi = hand_built(notes, pedal)
    result = piano_notes(midi, config=PEDAL)
    assert result[:, 1].tolist() == expected_ends
    assert piano_notes(midi, config=NO_PEDAL)[:, 1].tolist() == [e for _, e, _ in notes]


def test_merges_pitched_instruments_pedal_per_instrument_drops_drums_and_empty_notes() -> None:
    left = pretty_midi.Instrument(program=0)
    left.notes = [pretty_midi.Note(velocity=50, pitch=48, start=0.25, end=0.5),
                  pretty_midi.Note(velocity=50, pitch=40, start=0.25, end=0.25)]  # zero length: dropped
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes = [pretty_midi.Note(velocity=100, pitch=36, start=0.0, end=0.1)]
    midi = hand_built([(0.25, 0.5, 72), (0.0, 1.0, 60)], [(0.0, 127), (2.0, 0)], extra=left)
    midi.instruments.append(drums)
    notes = piano_notes(midi, config=PEDAL)
    # Sorted by start then pitch; the right hand's pedal holds its notes, not the left hand's.
    np.testing.assert_array_equal(notes, [[0.0, 2.0, 60, 80], [0.25, 0.5, 48, 50], [0.25, 2.0, 72, 80]])


def test_no_pitched_notes_gives_empty_array() -> None:
    midi = pretty_midi.PrettyMIDI()
    assert piano_notes(midi, config=PEDAL).shape == (0, 4)
