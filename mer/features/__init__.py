"""Features: a piece (MIDI bytes, audio bytes) → the three branches' inputs, window by window, and their cache.
Pure NumPy/librosa/FluidSynth functions of their arguments; never imports torch, Ray or the later stages."""
from __future__ import annotations

from mer.features.audio import check_audio, decode_audio, peak_normalise
from mer.features.cache import FeatureCache
from mer.features.key import (
    SUMMARY_SIZE, Key, estimate_key, key_correlations, pitch_class_histogram, summary_descriptors,
)
from mer.features.extract import ItemFeatures, chromagram, extract_features, mfcc, window_starts
from mer.features.midi import piano_notes, read_midi
from mer.features.render import render_audio, soundfont_path
from mer.features.tokens import midi_like_tokens, notes_from_tokens, pad_id, token_dtype
from mer.features.transpose import transpose_batch

__all__ = [
    "SUMMARY_SIZE", "FeatureCache", "ItemFeatures", "Key", "estimate_key", "key_correlations", "pitch_class_histogram",
    "summary_descriptors", "check_audio", "chromagram", "decode_audio", "extract_features", "mfcc",
    "midi_like_tokens", "notes_from_tokens", "pad_id", "peak_normalise", "piano_notes", "read_midi", "render_audio",
    "soundfont_path", "token_dtype", "transpose_batch", "window_starts",
]
