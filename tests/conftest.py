"""Shared fixtures: the real EMOPIA folder, a seeded RNG, and a folder of broken MIDI inputs."""
from __future__ import annotations

import io
import wave
from pathlib import Path

import mido
import numpy as np
import pytest

from mer.train.emopia import emopia_root

# moto S3 server, PostgreSQL and SQLite catalog fixtures, shared by every test module.
pytest_plugins = ["fixtures_services"]


@pytest.fixture(scope="session")
def emopia() -> Path:
    """The EMOPIA folder (``midis/``, ``split/``); fails loudly, never skips, when it is missing."""
    return emopia_root()


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator, so every random test input is the same on every run."""
    return np.random.default_rng(0)


def write_bad_midi_files(folder: Path, emopia: Path) -> dict[str, Path]:
    """Write one broken input of each kind into ``folder``, all named ``*.mid``.

    Returns ``{kind: path}`` with kinds ``empty`` (0 bytes), ``truncated`` (the first half of a real EMOPIA
    clip), ``random`` (4 kB of seeded random bytes), ``wav`` (a WAV recording named .mid) and ``no_notes`` (a
    valid MIDI file with a tempo, a program change and no note).
    """
    folder.mkdir(parents=True, exist_ok=True)
    real = (emopia / "midis" / "Q1_0vLPYiPN7qY_0.mid").read_bytes()
    contents = {
        "empty": b"",
        "truncated": real[: len(real) // 2],
        "random": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "wav": _wav_bytes(),
        "no_notes": _midi_without_notes(),
    }
    paths = {}
    for kind, data in contents.items():
        paths[kind] = folder / f"{kind}.mid"
        paths[kind].write_bytes(data)
    return paths


@pytest.fixture
def bad_midi_files(tmp_path: Path, emopia: Path) -> dict[str, Path]:
    """``{kind: path}`` of broken ``.mid`` files in a fresh folder (see :func:`write_bad_midi_files`)."""
    return write_bad_midi_files(tmp_path / "bad_midi", emopia)


def _wav_bytes(seconds: float = 0.25, sample_rate: int = 22_050) -> bytes:
    """A mono 16-bit WAV of a 440 Hz sine."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    samples = (0.5 * np.sin(2 * np.pi * 440.0 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(samples.tobytes())
    return buffer.getvalue()


def _midi_without_notes() -> bytes:
    """A well-formed type-1 MIDI file: a tempo track and a piano track with a program change, no notes."""
    midi = mido.MidiFile(type=1, ticks_per_beat=480)
    midi.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0),
                                       mido.MetaMessage("end_of_track", time=0)]))
    midi.tracks.append(mido.MidiTrack([mido.Message("program_change", program=0, time=0),
                                       mido.MetaMessage("end_of_track", time=960)]))
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()
