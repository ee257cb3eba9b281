"""Where the model runs and what it reads: the device, and numpy batches turned into the model's tensors.

One home for both, below the artifact, inference and training that all need them, so none imports another for
them.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

MODEL_INPUTS: tuple[str, ...] = ("tokens", "token_lengths", "chroma", "mfcc", "present", "summary")
"""Batch keys the model reads (the big feature arrays); everything else in a batch is passed through."""

OPTIONAL_INPUTS: frozenset[str] = frozenset({"summary"})
"""Inputs a batch may lack: only a model built with ``summary_film`` needs the summary (and says so)."""

ROW_KEYS_TO_BATCH = {"token_length": "token_lengths"}
"""Row keys renamed in a batch (a window row holds one window's length, a batch the lengths of many)."""
_BATCH_KEYS_TO_ROW = {batch: row for row, batch in ROW_KEYS_TO_BATCH.items()}

_DTYPES = {
    "tokens": torch.long,
    "token_lengths": torch.long,
    "chroma": torch.float32,
    "mfcc": torch.float32,
    "present": torch.bool,
    "summary": torch.float32,
    "quadrant": torch.long,
}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when this process sees a GPU, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_tensors(batch: Mapping[str, Any], *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The model inputs (and ``quadrant`` when present) of a numpy batch as tensors of the model's dtypes.

    ``batch`` maps keys to stacked arrays: tokens (B, L), token_lengths (B,), chroma (B, 12, F), mfcc (B, M, F),
    present (B, 3), summary (B, S), optionally quadrant (B,). A window row's key is accepted for its batch key
    (:data:`ROW_KEYS_TO_BATCH`: ``token_length`` for ``token_lengths``). Other keys (names, window starts) are left out.
    """
    tensors = {}
    for key, dtype in _DTYPES.items():
        source = key if key in batch else _BATCH_KEYS_TO_ROW.get(key)
        if source is not None and source in batch:
            value = batch[source]
            if not isinstance(value, torch.Tensor):
                value = torch.from_numpy(np.ascontiguousarray(np.asarray(value)))
            tensors[key] = value.to(device=device, dtype=dtype)
    return tensors


def model_inputs(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The :data:`MODEL_INPUTS` of :func:`to_tensors`' output: the keyword arguments of ``MerModel.forward``.

    Raises KeyError naming the missing inputs (:data:`OPTIONAL_INPUTS` may be missing).
    """
    missing = [k for k in MODEL_INPUTS if k not in tensors and k not in OPTIONAL_INPUTS]
    if missing:
        raise KeyError(f"batch lacks the model inputs {missing}; it has {sorted(tensors)}")
    return {k: tensors[k] for k in MODEL_INPUTS if k in tensors}
