"""What the tagger hands the catalog, checked on the way in: one piece's label, one item's failure.

:class:`LabelRecord` and :class:`FailureRecord` accept NumPy values and convert them to plain Python, so records
serialise as JSON on any driver; an invalid value raises ValueError naming the item, before any SQL runs.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from mer.catalog.schema import AV_TOLERANCE, MODALITIES, TIMELINE_HEAD_KEYS, TIMELINE_KEYS
from mer.config import BRANCHES, QUADRANTS
from mer.labels import arousal_valence_probs, attention_received

_DERIVED_KEYS = ("arousal_prob", "valence_prob")

def _plain(value: Any) -> Any:
    """NumPy arrays/scalars and tuples → plain lists/floats/ints, so records serialise as JSON on any driver."""
    if hasattr(value, "tolist"):  # numpy array or scalar, without importing numpy here
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _probability(value: Any, what: str) -> float:
    p = float(value)
    if not (math.isfinite(p) and -1e-6 <= p <= 1 + 1e-6):
        raise ValueError(f"{what} must be a probability in [0, 1], got {value!r}")
    return min(max(p, 0.0), 1.0)


def _distribution(values: Any, what: str) -> tuple[float, ...]:
    """Four quadrant probabilities, checked to sum to 1 (within float32 softmax rounding); scaled down when their
    sum exceeds 1, so that sums of them (the arousal/valence probabilities) are probabilities too."""
    probs = [_probability(p, what) for p in values]
    if len(probs) != len(QUADRANTS):
        raise ValueError(f"{what} must have 4 values, got {len(probs)}")
    total = sum(probs)
    if abs(total - 1.0) > 1e-3:
        raise ValueError(f"{what} must sum to 1, got {total!r}")
    return tuple(p / total for p in probs) if total > 1.0 else tuple(probs)


def _names(value: str | Iterable[str], allowed: Sequence[str], what: str) -> str:
    """A set of names as canonical comma-separated text in ``allowed`` order (e.g. 'symbolic,tone')."""
    given = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    unknown = sorted(set(given) - set(allowed))
    if unknown or not given:
        raise ValueError(f"{what} must be a non-empty subset of {allowed}, got {value!r}")
    return ",".join(name for name in allowed if name in given)


def branch_attention(attention: Sequence[Sequence[Sequence[float]]] | None) -> dict[str, float] | None:
    """Mean attention each branch *receives* (:func:`mer.labels.attention_received`): ``{branch: value}`` in
    BRANCHES order — the ``attn_*`` columns — from ``attention`` (heads, 3, 3) [head][query branch][key branch].
    The three values sum to 1. None when there is no attention (None, or all zeros as ``predict_windows`` emits
    for a model without attention).
    """
    if attention is None:
        return None
    received = attention_received(np.asarray(attention, dtype=np.float64))  # (3,)
    if not received.any():
        return None
    return {branch: float(received[b]) for b, branch in enumerate(BRANCHES)}


@dataclass(frozen=True)
class LabelRecord:
    """One piece's label from one model version, as the tagger hands it to
    :meth:`~mer.catalog.writer.CatalogWriter.write_batch`.

    NumPy values are accepted and converted to plain Python on construction; invalid values raise ValueError.

    - ``key``: the item key (``Item.stem``); ``object_version``: ``Item.version`` of the objects as listed — the
      version the bytes that were read have (reads are pinned to it), also for a partial label.
    - ``modalities``: ``Item.modalities`` (subset of ``("midi", "audio")``), tuple or comma-separated text.
    - ``duration_s``: the piece's duration in seconds.
    - ``quadrant``: ``"Q1".."Q4"``; ``quadrant_probs``: (4,) P(Q1..Q4), the mean over windows.
    - ``va_head_arousal_prob``, ``va_head_valence_prob``: the binary V/A head's P(high arousal), P(positive
      valence) (mean over windows), or None. Stored under these names only: the label's ``arousal_prob`` and
      ``valence_prob`` are implied by ``quadrant_probs`` (:attr:`arousal_valence`).
    - ``branches_used``: the branches that saw input (subset of BRANCHES).
    - ``attention``: (heads, 3, 3) mean attention over windows, BRANCHES order; None without attention.
    - ``timeline``: one dict per window with ``start_s`` (seconds), ``quadrant`` and ``p_q1..p_q4``, optionally
      :data:`TIMELINE_HEAD_KEYS`; stored with :data:`TIMELINE_KEYS` (each window's ``arousal_prob``/``valence_prob``
      derived as the label's). A window that brings its own ``arousal_prob``/``valence_prob`` must agree.
    - ``problems``: what was wrong but did not stop tagging (e.g. "audio: silent; tagged from MIDI only").
    - ``partial``: made from one modality because reading the other failed for a reason that is not the
      content's (store or network error): provisional; the next run tags the item again.
    - ``musical_key`` (the ``key`` column: the tonic's name), ``mode`` and ``key_confidence``: the piece's
      estimated key (:func:`mer.features.estimate_key`); None when unknown.
    """

    key: str
    object_version: str
    modalities: str | Sequence[str]
    duration_s: float
    quadrant: str
    quadrant_probs: Sequence[float]
    branches_used: str | Sequence[str]
    va_head_arousal_prob: float | None = None
    va_head_valence_prob: float | None = None
    attention: Sequence[Any] | None = None
    timeline: Sequence[Mapping[str, Any]] = field(default_factory=list)
    problems: str | None = None
    partial: bool = False
    musical_key: str | None = None
    mode: str | None = None
    key_confidence: float | None = None

    def __post_init__(self) -> None:
        fix = functools.partial(object.__setattr__, self)  # normalise fields of a frozen dataclass
        if not self.key or not isinstance(self.key, str):
            raise ValueError(f"label key must be a non-empty string, got {self.key!r}")
        fix("object_version", str(self.object_version))
        fix("modalities", _names(self.modalities, MODALITIES, "modalities"))
        fix("branches_used", _names(self.branches_used, BRANCHES, "branches_used"))
        duration = float(self.duration_s)
        if not (math.isfinite(duration) and duration >= 0):
            raise ValueError(f"{self.key}: duration_s must be a finite number of seconds >= 0, got {self.duration_s!r}")
        fix("duration_s", duration)
        if self.quadrant not in QUADRANTS:
            raise ValueError(f"{self.key}: quadrant must be one of {QUADRANTS}, got {self.quadrant!r}")
        fix("quadrant_probs", _distribution(_plain(self.quadrant_probs), f"{self.key}: quadrant_probs"))
        for name in TIMELINE_HEAD_KEYS:
            value = getattr(self, name)
            if value is not None:
                fix(name, _probability(value, f"{self.key}: {name}"))
        fix("partial", bool(self.partial))
        if self.mode not in (None, "major", "minor"):
            raise ValueError(f"{self.key}: mode must be 'major', 'minor' or None, got {self.mode!r}")
        if self.attention is not None:
            attention = _plain(self.attention)
            if not all(len(head) == len(BRANCHES) and all(len(row) == len(BRANCHES) for row in head)
                       for head in attention):
                raise ValueError(f"{self.key}: attention must have shape (heads, 3, 3)")
            fix("attention", [[[float(w) for w in row] for row in head] for head in attention])
        fix("timeline", [_timeline_window(self.key, window) for window in _plain(list(self.timeline))])

    @property
    def arousal_valence(self) -> tuple[float, float]:
        """(P(high arousal), P(positive valence)) = (p_q1 + p_q2, p_q1 + p_q4): the ``arousal_prob`` and
        ``valence_prob`` columns."""
        arousal, valence = arousal_valence_probs(self.quadrant_probs)
        return float(arousal), float(valence)

    def row(self, *, run_id: int, model_version: str, now: datetime) -> dict[str, Any]:
        """The ``labels`` row."""
        attn = branch_attention(self.attention)
        p_q1, p_q2, p_q3, p_q4 = self.quadrant_probs
        arousal, valence = self.arousal_valence
        return {
            "item_key": self.key,
            "model_version": model_version,
            "run_id": run_id,
            "object_version": self.object_version,
            "quadrant": self.quadrant,
            "p_q1": p_q1,
            "p_q2": p_q2,
            "p_q3": p_q3,
            "p_q4": p_q4,
            "arousal_prob": arousal,
            "valence_prob": valence,
            "va_head_arousal_prob": self.va_head_arousal_prob,
            "va_head_valence_prob": self.va_head_valence_prob,
            "partial": self.partial,
            "branches_used": self.branches_used,
            "attn_symbolic": attn["symbolic"] if attn else None,
            "attn_harmony": attn["harmony"] if attn else None,
            "attn_tone": attn["tone"] if attn else None,
            "attention": self.attention if attn else None,
            "n_windows": len(self.timeline),
            "timeline": self.timeline,
            "problems": self.problems,
            "key": self.musical_key,
            "mode": self.mode,
            "key_confidence": None if self.key_confidence is None else float(self.key_confidence),
            "tagged_at": now,
        }


def _timeline_window(key: str, window: Mapping[str, Any]) -> dict[str, Any]:
    """One timeline window as stored: TIMELINE_KEYS (arousal/valence derived), then any TIMELINE_HEAD_KEYS."""
    given = [k for k in TIMELINE_KEYS if k not in _DERIVED_KEYS]
    missing = [k for k in given if k not in window]
    if missing:
        raise ValueError(f"{key}: timeline window lacks {missing}")
    entry: dict[str, Any] = {k: (window[k] if k == "quadrant" else float(window[k])) for k in given}
    if entry["quadrant"] not in QUADRANTS:
        raise ValueError(f"{key}: timeline quadrant must be one of {QUADRANTS}, got {entry['quadrant']!r}")
    probs = _distribution([entry[f"p_q{q}"] for q in range(1, 5)], f"{key}: timeline quadrant probabilities")
    entry.update({f"p_q{q}": p for q, p in enumerate(probs, start=1)})
    for name, value in zip(_DERIVED_KEYS, arousal_valence_probs(probs)):
        if name in window and abs(float(window[name]) - value) > AV_TOLERANCE:
            raise ValueError(f"{key}: a timeline window's {name} must be implied by its quadrant probabilities "
                             f"({value:.6f}), got {window[name]!r}; the binary head's goes under va_head_{name}")
        entry[name] = float(value)
    for name in TIMELINE_HEAD_KEYS:
        if window.get(name) is not None:
            entry[name] = _probability(window[name], f"{key}: timeline {name}")
    return entry


@dataclass(frozen=True)
class FailureRecord:
    """Why an item (or an object that made no item) could not be tagged in a run.

    - ``key``: the item key, or for a listing reject the object key.
    - ``object_version``: the version that failed (None if unknown).
    - ``stage``: where it failed: ``list``, ``read``, ``features``, ``inference`` or ``write`` (the metrics stages).
    - ``reason``: words a user can act on (``BadInputError.reason``).
    - ``modalities``: the item's modalities when the failure concerns a listed item — the item then gets an
      ``items`` row (duration NULL); None for listing rejects, which are objects rather than items.
    """

    key: str
    object_version: str | None
    stage: str
    reason: str
    modalities: str | Sequence[str] | None = None

    def __post_init__(self) -> None:
        if not self.key or not isinstance(self.key, str):
            raise ValueError(f"failure key must be a non-empty string, got {self.key!r}")
        if not self.stage or not self.reason:
            raise ValueError(f"{self.key}: a failure needs a stage and a reason")
        if self.object_version is not None:
            object.__setattr__(self, "object_version", str(self.object_version))
        if self.modalities is not None:
            object.__setattr__(self, "modalities", _names(self.modalities, MODALITIES, "modalities"))


@dataclass(frozen=True)
class ListedItem:
    """An item a listing found (for :meth:`~mer.catalog.writer.CatalogWriter.see_items`): its key (``Item.stem``),
    object version (``Item.version``) and modalities (``Item.modalities``, tuple or comma-separated text)."""

    key: str
    object_version: str
    modalities: str | Sequence[str]

    def __post_init__(self) -> None:
        if not self.key or not isinstance(self.key, str):
            raise ValueError(f"item key must be a non-empty string, got {self.key!r}")
        object.__setattr__(self, "object_version", str(self.object_version))
        object.__setattr__(self, "modalities", _names(self.modalities, MODALITIES, "modalities"))
