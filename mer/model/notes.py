"""Notes read back from MIDI-like tokens inside the model: one step per note instead of one per event.

The symbolic branch's input is MIDI-like tokens (mer.features.tokens). A note costs a Bi-GRU over them two to
four steps (velocity, note-on, time shifts, note-off), and the step that says a note began does not say how long
it lasts or how loud it is: the recurrence has to carry that. With ``ModelConfig.symbolic_input = "notes"`` the
encoder first turns each window's tokens into its notes — pitch, velocity bin, the time since the previous note's
onset, the duration — and reads one step per note (compound words, after Hsiao et al. 2021 and EMOPIA's CP
representation). On EMOPIA's 1,737 windows (median 520 tokens, 16 % at the cap of 1,024) that is a median of 134
steps and at most 319, so the Bi-GRU reads the whole window in fewer steps than the default's first 512 tokens.

Batched torch only (no Python loop over notes), so it runs where the model runs, GPUs included, and every path that
feeds the model tokens (training, evaluation, tagging) needs no change. The decoding rules are
:func:`mer.features.tokens.notes_from_tokens`'s: a note-off closes the earliest-opened note of its pitch, a note
still open at the end lasts until the final time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mer.config import NOTE_OFF, TIME_SHIFT, FeatureConfig

PITCHES = 128
MAX_INTERVAL = 24
"""Intervals between consecutive notes are capped at two octaves either way (:meth:`NoteSteps.intervals`)."""
TIME_BUCKETS = 48
"""Onset gaps and durations (in time steps of 10 ms) become ``round(4 log2(1 + steps))``, capped at 47: a quarter
octave of resolution, from one step to some 40 s."""


@dataclass
class NoteSteps:
    """A batch of windows as note sequences, each padded to the longest (``S`` notes).

    pitch (N, S) in 0..127, or :data:`PITCHES` on padding and for a window without a note-on; velocity (N, S)
    velocity bins; onset and duration (N, S) in time steps from the window's start; counts (N,) notes per window,
    at least 1 (a window without a note-on is one padding step). Padding steps hold 0 but for the pitch.
    """

    pitch: torch.Tensor
    velocity: torch.Tensor
    onset: torch.Tensor
    duration: torch.Tensor
    counts: torch.Tensor

    def onset_gaps(self) -> torch.Tensor:
        """(N, S) time steps since the previous note's onset (the first note's: since the window's start)."""
        previous = torch.cat([torch.zeros_like(self.onset[:, :1]), self.onset[:, :-1]], dim=1)
        return (self.onset - previous) * (self.pitch < PITCHES)

    def intervals(self) -> torch.Tensor:
        """(N, S) the semitones from the previous note's pitch, capped at ±MAX_INTERVAL and moved to
        0..2 MAX_INTERVAL; the first note and padding get 2 MAX_INTERVAL + 1. Unchanged by transposition."""
        previous = torch.cat([torch.full_like(self.pitch[:, :1], PITCHES), self.pitch[:, :-1]], dim=1)
        steps = (self.pitch - previous).clamp(-MAX_INTERVAL, MAX_INTERVAL) + MAX_INTERVAL
        return torch.where((self.pitch < PITCHES) & (previous < PITCHES), steps, 2 * MAX_INTERVAL + 1)


def time_bucket(steps: torch.Tensor) -> torch.Tensor:
    """Time steps (>= 0) -> log-spaced bucket ids in 0..TIME_BUCKETS-1."""
    buckets = torch.round(4.0 * torch.log2(1.0 + steps.clamp(min=0).to(torch.float32)))
    return buckets.clamp(max=TIME_BUCKETS - 1).to(torch.long)


def note_steps(tokens: torch.Tensor, lengths: torch.Tensor, *, config: FeatureConfig) -> NoteSteps:
    """The notes of each window's first ``lengths[i]`` tokens, in the order of their note-ons.

    tokens (N, L) long, lengths (N,) in 0..L. Durations follow :func:`~mer.features.tokens.notes_from_tokens`
    (first in, first out per pitch; open at the end: until the final time). Tokens where a note-off comes while no
    note of its pitch is open (never in ``midi_like_tokens``' output) give that pitch's later notes other durations
    than the decoder's.
    """
    n, length = tokens.shape
    device = tokens.device
    position = torch.arange(length, device=device).expand(n, length)  # (N, L)
    valid = position < lengths.to(device).unsqueeze(1)  # (N, L)
    velocity_offset = TIME_SHIFT + config.max_shift_steps
    is_on = valid & (tokens < NOTE_OFF)  # (N, L)
    is_off = valid & (tokens >= NOTE_OFF) & (tokens < TIME_SHIFT)
    is_shift = valid & (tokens >= TIME_SHIFT) & (tokens < velocity_offset)
    is_velocity = valid & (tokens >= velocity_offset) & (tokens < velocity_offset + config.velocity_bins)
    time = torch.cumsum(torch.where(is_shift, tokens - TIME_SHIFT + 1, 0), dim=1)  # (N, L): time step of each token
    end_time = time[:, -1:]  # (N, 1): shifts past the length are 0, so this is the final time

    # Velocity: the bin of the last velocity token at or before each token (the default velocity's before any).
    last_velocity = torch.cummax(torch.where(is_velocity, position, -1), dim=1).values  # (N, L)
    default_bin = 64 * config.velocity_bins // 128  # mer.features.tokens.DEFAULT_VELOCITY's bin, as the decoder
    velocity = torch.where(last_velocity >= 0, tokens.gather(1, last_velocity.clamp(min=0)) - velocity_offset,
                           default_bin)  # (N, L)

    # Durations, first in first out per pitch: the k-th note-on of a pitch ends at the k-th note-off of that pitch.
    pitch = torch.where(is_on, tokens, torch.where(is_off, tokens - NOTE_OFF, PITCHES))  # (N, L); PITCHES: no event
    by_pitch = torch.argsort(pitch * length + position, dim=1)  # (N, L): events grouped by pitch, in time order
    sorted_pitch, sorted_on, sorted_off = (x.gather(1, by_pitch) for x in (pitch, is_on.long(), is_off.long()))
    group_start = torch.ones_like(sorted_pitch, dtype=torch.bool)
    group_start[:, 1:] = sorted_pitch[:, 1:] != sorted_pitch[:, :-1]
    first_of_group = torch.cummax(torch.where(group_start, position, 0), dim=1).values  # (N, L)
    ons_before, offs_before = torch.cumsum(sorted_on, 1) - sorted_on, torch.cumsum(sorted_off, 1) - sorted_off
    rank = torch.where(sorted_on.bool(), ons_before - ons_before.gather(1, first_of_group),
                       offs_before - offs_before.gather(1, first_of_group))  # (N, L): k-th on / off of its pitch
    pair_key = (sorted_pitch * (length + 1) + rank) * 2 + sorted_off  # an on sorts just before its off
    by_pair = torch.argsort(pair_key, dim=1)
    original = by_pitch.gather(1, by_pair)  # (N, L): token positions, each note-on followed by its note-off if any
    on_here, off_next = is_on.gather(1, original), is_off.gather(1, original).roll(-1, dims=1)
    same_note = (pair_key.gather(1, by_pair) // 2).roll(-1, dims=1) == pair_key.gather(1, by_pair) // 2
    next_position = original.roll(-1, dims=1)
    closed = on_here & off_next & same_note & (next_position > original)  # (N, L) in pair order
    closed[:, -1] = False  # roll wrapped around
    end_of_note = torch.where(closed, time.gather(1, next_position), end_time)  # (N, L) in pair order
    note_end = torch.empty_like(end_of_note).scatter_(1, original, end_of_note)  # (N, L) in token order
    duration = note_end - time  # (N, L): meaningful at note-ons

    # Compact: the note-ons of each window, in token order, padded to the longest window's count.
    counts = is_on.sum(dim=1)  # (N,)
    steps = max(int(counts.max()) if n else 0, 1)
    ons_first = torch.argsort(torch.where(is_on, position, length + position), dim=1)[:, :steps]  # (N, S)
    real = torch.arange(steps, device=device).unsqueeze(0) < counts.unsqueeze(1)  # (N, S)

    def compact(values: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.where(real, values.gather(1, ons_first), fill)  # (N, S)

    return NoteSteps(pitch=compact(pitch, PITCHES), velocity=compact(velocity, 0), onset=compact(time, 0),
                     duration=compact(duration, 0), counts=counts.clamp(min=1))
