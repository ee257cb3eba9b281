"""MIDI → audio with FluidSynth, so a piece given as MIDI alone (all of EMOPIA) still feeds the acoustic branches.

The paper's chromagram and MFCC branches read recordings; EMOPIA's recordings are not distributed, so mer
renders each MIDI file with a General MIDI piano. Rendering drives the FluidSynth C library (pyfluidsynth) event
by event, writing float samples directly, rather than through ``PrettyMIDI.fluidsynth``: that path goes through
FluidSynth's 16-bit output, which adds dither noise, and renders a second of silence after the last event.

The SoundFont is loaded once per process (:func:`loaded_soundfont`; parsing TimGM6mb.sf2 took 30 of the 33 ms a
fresh synthesizer cost per render) and lent to a new synthesizer for each render, which costs 3 ms. The
synthesizer itself is not reused: FluidSynth's reverb and chorus keep state (their delay lines, the chorus LFO
phase) that ``fluid_synth_system_reset`` does not clear, so a reused synthesizer renders a piece differently
depending on what it rendered before (by up to 2e-3 of full scale, measured), and a rendering must be a function
of the MIDI alone.
"""
from __future__ import annotations

import math
from ctypes import c_int, c_void_p
from pathlib import Path

import fluidsynth
import numpy as np
import pretty_midi

from mer.config import FeatureConfig
from mer.errors import BadInputError, ConfigError
from mer.features.audio import check_audio, peak_normalise

PIANO_PROGRAM = 0  # General MIDI "Acoustic Grand Piano"
_CHANNELS = tuple(c for c in range(16) if c != 9)  # channel 10 (index 9) is General MIDI percussion
_BLOCK = 8192  # samples synthesized per call into the stereo scratch buffer

# fluid_synth_write_float(synth, len, lbuf, loff, lincr, rbuf, roff, rincr): float output, no dither.
_write_float = fluidsynth.cfunc(
    "fluid_synth_write_float", c_int,
    ("synth", c_void_p, 1), ("len", c_int, 1),
    ("lbuf", c_void_p, 1), ("loff", c_int, 1), ("lincr", c_int, 1),
    ("rbuf", c_void_p, 1), ("roff", c_int, 1), ("rincr", c_int, 1),
)

# Lending one loaded SoundFont to many synthesizers (the synthesizer does not own it while it is lent).
_get_sfont = fluidsynth.cfunc("fluid_synth_get_sfont_by_id", c_void_p, ("synth", c_void_p, 1), ("id", c_int, 1))
_add_sfont = fluidsynth.cfunc("fluid_synth_add_sfont", c_int, ("synth", c_void_p, 1), ("sfont", c_void_p, 1))
_remove_sfont = fluidsynth.cfunc("fluid_synth_remove_sfont", c_int, ("synth", c_void_p, 1), ("sfont", c_void_p, 1))
_set_log_function = fluidsynth.cfunc("fluid_set_log_function", c_void_p, ("level", c_int, 1), ("fun", c_void_p, 1),
                                     ("data", c_void_p, 1))
_FLUID_WARN = 2

_LOADED: dict[str, tuple[fluidsynth.Synth, int]] = {}  # SoundFont path -> (the synthesizer holding it, the sfont)

# Event order among events at the same sample: releases first (so a re-struck key sounds), then controllers
# (a pedal pressed with a chord catches it), then new notes.
_NOTE_OFF, _CONTROL, _NOTE_ON = 0, 1, 2


def soundfont_path(config: FeatureConfig) -> Path:
    """The SoundFont rendering uses: ``config.soundfont``, else pretty_midi's bundled TimGM6mb.sf2.

    Raises:
        ConfigError: the file does not exist (the message names the path).
    """
    if config.soundfont is not None:
        path = Path(config.soundfont).expanduser()
    else:
        path = Path(pretty_midi.__file__).resolve().parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise ConfigError(f"SoundFont not found: {path} (set FeatureConfig.soundfont to an existing .sf2 file)")
    return path


def loaded_soundfont(sf2: Path) -> int:
    """The FluidSynth SoundFont object of ``sf2``, loaded on first use in this process and kept for its life.

    Raises:
        ConfigError: FluidSynth cannot load the file (not a valid .sf2 file?).
    """
    key = str(sf2)
    if key not in _LOADED:
        holder = fluidsynth.Synth(**{"synth.cpu-cores": 1})
        sfid = holder.sfload(key)
        if sfid == -1:
            holder.delete()
            raise ConfigError(f"FluidSynth cannot load the SoundFont {sf2} (not a valid .sf2 file?)")
        _LOADED[key] = (holder, _get_sfont(holder.synth, sfid))
    return _LOADED[key][1]


def render_audio(midi: pretty_midi.PrettyMIDI, *, config: FeatureConfig, name: str) -> np.ndarray:
    """Synthesize a MIDI file as piano audio.

    Every non-drum instrument is played on its own channel (15 of them, reused beyond 15 instruments) with the
    General MIDI acoustic grand piano — the same notes the symbolic branch sees (:func:`mer.features.midi.piano_notes`
    merges them) — and its control changes (sustain/soft pedal, volume) and pitch bends are sent as recorded;
    drum tracks are left out. FluidSynth's
    default reverb and chorus stay on (a dry synth is further from a recording): they are deterministic, and
    so is the whole render — the same MIDI and config give bit-identical samples, in any process.

    The waveform covers ``[0, midi.get_end_time()]`` exactly (no release tail), so a piece's duration is the
    same whether it arrives as MIDI alone or as MIDI plus this rendering. It is then peak-normalised to 1.0
    (:func:`mer.features.audio.peak_normalise`), as decoded audio files are: loudness is relative to the piece's own
    peak, not to the synthesizer's gain.

    Args:
        midi: the parsed MIDI file.
        config: ``sample_rate`` (Hz), ``soundfont`` (None: pretty_midi's bundled General MIDI soundfont) and the
            :func:`mer.features.audio.check_audio` limits.
        name: the item, for error messages.

    Returns:
        (samples,) float32 mono at ``config.sample_rate`` Hz, ``samples = ceil(end_time * sample_rate)``.

    Raises:
        ConfigError: the SoundFont is missing or FluidSynth cannot load it.
        BadInputError: no non-drum notes, or the rendering is silent or too short (:func:`check_audio`).
    """
    sf2 = soundfont_path(config)  # first: a wrong config must not pass for a bad item
    instruments = [inst for inst in midi.instruments if not inst.is_drum and inst.notes]
    if not instruments:
        raise BadInputError(name, "MIDI file has no (non-drum) notes to render")
    rate = config.sample_rate
    total = int(math.ceil(midi.get_end_time() * rate))
    events = _events(instruments, rate=rate)

    sfont = loaded_soundfont(sf2)
    synth = fluidsynth.Synth(samplerate=float(rate), **{"synth.cpu-cores": 1})
    sfid = _add_sfont(synth.synth, sfont)
    try:
        for index in range(len(instruments)):
            synth.program_select(_CHANNELS[index % len(_CHANNELS)], sfid, 0, PIANO_PROGRAM)
        audio = np.zeros(total, dtype=np.float32)  # (samples,) mono
        position = 0
        for sample, _, kind, channel, a, b in events:
            sample = min(sample, total)
            if sample > position:
                _synthesize(synth, audio, position, sample)
                position = sample
            if kind == "on":
                synth.noteon(channel, a, b)
            elif kind == "off":
                synth.noteoff(channel, a)
            elif kind == "cc":
                synth.cc(channel, a, b)
            else:
                synth.pitch_bend(channel, a)
        _synthesize(synth, audio, position, total)
    finally:
        # Take the SoundFont back before the synthesizer is deleted (which would free it). Its channels then
        # have no preset left, which FluidSynth reports once per channel: expected here, so not shown.
        previous = _set_log_function(_FLUID_WARN, None, None)
        _remove_sfont(synth.synth, sfont)
        _set_log_function(_FLUID_WARN, previous, None)
        synth.delete()

    check_audio(audio, name=name, config=config)  # on the synthesizer's level, before normalising
    return peak_normalise(audio)


def _events(instruments: list[pretty_midi.Instrument], *, rate: int) -> list[tuple]:
    """All instruments' events as ``(sample, order, kind, channel, a, b)``, in playing order."""
    events: list[tuple] = []
    for index, inst in enumerate(instruments):
        channel = _CHANNELS[index % len(_CHANNELS)]
        for note in inst.notes:
            if note.end <= note.start:  # silent, as in piano_notes; its release would precede its onset
                continue
            velocity = int(np.clip(note.velocity, 0, 127))
            pitch = int(note.pitch)
            on = round(note.start * rate)
            events.append((on, _NOTE_ON, "on", channel, pitch, velocity))
            # At least one sample later: releases sort before onsets at the same sample.
            events.append((max(round(note.end * rate), on + 1), _NOTE_OFF, "off", channel, pitch, 0))
        for change in inst.control_changes:
            events.append((round(change.time * rate), _CONTROL, "cc", channel, int(change.number), int(change.value)))
        for bend in inst.pitch_bends:
            events.append((round(bend.time * rate), _CONTROL, "bend", channel, int(bend.pitch), 0))
    # Python's sort is stable, so same-time events of one kind keep the file's order.
    events.sort(key=lambda event: (event[0], event[1]))
    return events


def _synthesize(synth: fluidsynth.Synth, audio: np.ndarray, start: int, stop: int) -> None:
    """Run the synthesizer for samples ``[start, stop)``, writing the mean of its stereo output into ``audio``.

    Blocks of :data:`_BLOCK` samples go through a small stereo buffer, so a long piece never holds a full-length
    stereo copy (an hour at 22.05 kHz would be 635 MB).
    """
    if _write_float is None:  # pragma: no cover - every FluidSynth since 1.0 has it
        raise ConfigError("this FluidSynth library lacks fluid_synth_write_float")
    stereo = np.empty((_BLOCK, 2), dtype=np.float32)  # (samples, [left, right])
    base = stereo.ctypes.data
    for block_start in range(start, stop, _BLOCK):
        count = min(_BLOCK, stop - block_start)
        if _write_float(synth.synth, count, base, 0, 2, base, 1, 2) != 0:
            raise ConfigError(f"FluidSynth failed to synthesize samples {block_start}..{block_start + count}")
        audio[block_start:block_start + count] = stereo[:count].mean(axis=1, dtype=np.float32)
