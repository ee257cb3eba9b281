"""Rendering MIDI to piano audio with FluidSynth: deterministic, audible, the right pitches, clear errors."""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from mer.config import FeatureConfig
from mer.errors import BadInputError, ConfigError
from mer.features import chromagram
from mer.features.audio import check_audio
from mer.features.midi import read_midi
from mer.features.render import render_audio, soundfont_path

CONFIG = FeatureConfig()
CLIP = "Q1_0vLPYiPN7qY_0"


@pytest.fixture(scope="module")
def clip_midi(emopia: Path) -> pretty_midi.PrettyMIDI:
    path = emopia / "midis" / f"{CLIP}.mid"
    return read_midi(path.read_bytes(), name=CLIP)


def make_midi(notes: list[tuple[float, float, int, int]], *, pedal: list[tuple[float, int]] = (),
              drums: bool = False) -> pretty_midi.PrettyMIDI:
    """A one-piano MIDI of ``(start_s, end_s, pitch, velocity)`` notes and ``(time_s, value)`` CC64 events."""
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=e) for s, e, p, v in notes]
    piano.control_changes = [pretty_midi.ControlChange(64, value, time) for time, value in pedal]
    midi.instruments.append(piano)
    if drums:
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        kit.notes = [pretty_midi.Note(velocity=120, pitch=38, start=0.25 * i, end=0.25 * i + 0.1) for i in range(8)]
        midi.instruments.append(kit)
    return midi


def test_rendering_a_clip_is_audible_mono_float32_and_as_long_as_the_midi(clip_midi) -> None:
    audio = render_audio(clip_midi, config=CONFIG, name=CLIP)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.shape[0] == math.ceil(clip_midi.get_end_time() * CONFIG.sample_rate)
    assert 5.0 < audio.shape[0] / CONFIG.sample_rate < 60.0  # EMOPIA clips are tens of seconds
    assert np.max(np.abs(audio)) == pytest.approx(1.0)  # peak-normalised
    assert np.sqrt(np.mean(audio**2)) > 0.02  # a piano playing, not near-silence
    check_audio(audio, name=CLIP, config=CONFIG)


def test_rendering_is_deterministic_within_and_across_processes(clip_midi, emopia: Path) -> None:
    first = render_audio(clip_midi, config=CONFIG, name=CLIP)
    second = render_audio(clip_midi, config=CONFIG, name=CLIP)
    np.testing.assert_array_equal(first, second)
    # Another interpreter: the feature cache relies on every Ray worker rendering the same samples.
    script = (
        "import hashlib; from pathlib import Path; from mer.config import FeatureConfig; "
        "from mer.features import read_midi, render_audio; "
        f"data = Path({str(emopia / 'midis' / f'{CLIP}.mid')!r}).read_bytes(); "
        "audio = render_audio(read_midi(data, name='x'), config=FeatureConfig(), name='x'); "
        "print(hashlib.sha256(audio.tobytes()).hexdigest())"
    )
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    # The last line: pyfluidsynth prints where it found the library when $CI is set.
    assert other.stdout.strip().splitlines()[-1] == hashlib.sha256(first.tobytes()).hexdigest()


def test_the_soundfont_is_loaded_once_per_process_and_no_render_depends_on_the_one_before(clip_midi,
                                                                                          monkeypatch) -> None:
    import fluidsynth

    import mer.features.render as render

    monkeypatch.setattr(render, "_LOADED", {})
    loads = []
    sfload = fluidsynth.Synth.sfload
    monkeypatch.setattr(fluidsynth.Synth, "sfload", lambda self, *a, **k: loads.append(a) or sfload(self, *a, **k))
    other = make_midi([(0.0, 2.0, 60, 90), (0.5, 3.0, 67, 127)], pedal=[(0.0, 127), (2.5, 0)])
    alone = render_audio(clip_midi, config=CONFIG, name=CLIP)
    render_audio(other, config=CONFIG, name="other")  # leaves reverb and chorus tails in a reused synthesizer
    after_another = render_audio(clip_midi, config=CONFIG, name=CLIP)
    assert len(loads) == 1
    np.testing.assert_array_equal(after_another, alone)


def test_a_rendered_a4_peaks_at_a_in_the_chromagram() -> None:
    audio = render_audio(make_midi([(0.0, 1.5, 69, 100)]), config=CONFIG, name="a4")
    profile = chromagram(audio, config=CONFIG).mean(axis=1)
    assert int(np.argmax(profile)) == 9  # C=0 ... A=9


def test_the_sustain_pedal_keeps_a_released_note_sounding() -> None:
    note = [(0.0, 0.2, 60, 100), (1.6, 1.7, 84, 1)]  # a very soft late note only sets the piece's end
    dry = render_audio(make_midi(note), config=CONFIG, name="dry")
    pedalled = render_audio(make_midi(note, pedal=[(0.0, 127), (1.5, 0)]), config=CONFIG, name="pedal")

    def level(audio: np.ndarray) -> float:  # RMS from 0.8 to 1.2 s, after the key was released
        segment = audio[int(0.8 * CONFIG.sample_rate):int(1.2 * CONFIG.sample_rate)]
        return float(np.sqrt(np.mean(segment**2)))

    assert level(pedalled) > 10 * level(dry)


def test_drum_tracks_are_not_rendered() -> None:
    notes = [(0.0, 1.0, 60, 90), (1.0, 2.0, 64, 90)]
    piano_only = render_audio(make_midi(notes), config=CONFIG, name="piano")
    with_drums = render_audio(make_midi(notes, drums=True), config=CONFIG, name="drums")
    np.testing.assert_array_equal(piano_only, with_drums)


def test_a_midi_with_only_drums_is_a_bad_input() -> None:
    midi = make_midi([], drums=True)
    with pytest.raises(BadInputError, match="no .*notes") as caught:
        render_audio(midi, config=CONFIG, name="kit.mid")
    assert caught.value.item == "kit.mid"


def test_a_missing_soundfont_is_a_config_error_naming_the_path(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "piano.sf2"
    config = replace(CONFIG, soundfont=str(missing))
    with pytest.raises(ConfigError, match=str(missing)):
        render_audio(make_midi([(0.0, 1.0, 60, 90)]), config=config, name="x")


def test_a_file_that_is_not_a_soundfont_is_a_config_error(tmp_path) -> None:
    fake = tmp_path / "fake.sf2"
    fake.write_bytes(b"RIFF" + bytes(64))
    with pytest.raises(ConfigError, match="fake.sf2"):
        render_audio(make_midi([(0.0, 1.0, 60, 90)]), config=replace(CONFIG, soundfont=str(fake)), name="x")


def test_the_default_soundfont_is_the_one_pretty_midi_ships() -> None:
    assert soundfont_path(CONFIG).name == "TimGM6mb.sf2" and soundfont_path(CONFIG).is_file()
