"""Features: a piece (MIDI bytes, audio bytes) → the three branches' inputs, window by window, and their cache.
Pure NumPy/librosa/FluidSynth functions of their arguments; never imports torch, Ray or the later stages."""
from __future__ import annotations

from mer.features.audio import DecodedAudio, check_audio, decode_audio, open_audio, peak_normalise
from mer.features.cache import FeatureCache
from mer.features.crop import crop_batch
from mer.features.key import (
    PITCH_CLASS_NAMES, Key, distinct_onsets, estimate_key, key_correlations, pitch_class_histogram,
)
from mer.features.summary import SUMMARY_NAMES, SUMMARY_SIZE, summary_descriptors
from mer.features.extract import ItemFeatures, extract_features, window_starts
from mer.features.midi import piano_notes, read_midi
from mer.features.musicnn import MSD_TAGS, WEIGHTS as MUSICNN_WEIGHTS, window_patches
from mer.features.render import loaded_soundfont, render_audio, soundfont_path
from mer.features.spectral import chromagram, mfcc, spectral_features
from mer.features.tokens import midi_like_tokens, notes_from_tokens, pad_id, token_dtype
from mer.features.transpose import (
    RENDERED_KEYS, rendered_shifts, rendered_slot, roll_chroma, transpose_batch, transpose_midi,
)

__all__ = [
    "MSD_TAGS", "MUSICNN_WEIGHTS", "PITCH_CLASS_NAMES", "RENDERED_KEYS", "SUMMARY_NAMES", "SUMMARY_SIZE",
    "DecodedAudio", "FeatureCache",
    "ItemFeatures", "Key", "check_audio", "chromagram", "crop_batch", "decode_audio", "distinct_onsets",
    "estimate_key", "extract_features", "key_correlations", "loaded_soundfont", "mfcc", "midi_like_tokens",
    "notes_from_tokens", "open_audio", "pad_id",
    "peak_normalise", "piano_notes", "pitch_class_histogram", "read_midi", "render_audio", "rendered_shifts",
    "rendered_slot", "roll_chroma", "soundfont_path", "spectral_features", "summary_descriptors", "token_dtype",
    "transpose_batch", "transpose_midi", "window_patches", "window_starts",
]
