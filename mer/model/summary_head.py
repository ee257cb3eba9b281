"""A regression over a window's summary descriptors, blended with the network's quadrant probabilities.

Not in the paper. A logistic regression over the key/mode/note descriptors alone (mer.features.key) scores close
to the whole network on EMOPIA, and its errors differ from the network's; the network sees the same descriptors
(FiLM) but fits its training set far more tightly. So the model's quadrant probabilities are a mixture::

    p = (1 - w) * softmax(network logits) + w * softmax(W phi((summary - mean) / scale) + b)

``phi`` is the identity (a linear head), or with ``centres`` RBF kernel features: ``phi(z)_j = exp(-|z - c_j|^2 /
width)`` at up to ``centres`` standardised training windows ``c_j`` (a Nystroem approximation of a kernel logistic
regression, ``ModelConfig.summary_kernel_centres``): a regression that can say "minor *and* slow", which a linear
one cannot.

The head is fitted, not trained: after the network's best checkpoint is chosen, a multinomial logistic
regression is fitted on the training windows' descriptors and ``w`` is chosen on val (:mod:`mer.train.summary_head`).
Until then ``w`` is 0 and the network's logits pass through unchanged, so training never sees the head. Its
numbers are buffers: they travel in the model's state_dict (and in every member of an ensemble).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mer.config import SUMMARY_KEY_SIZE

N_QUADRANTS = 4
PROBABILITY_FLOOR = 1e-7  # keeps the log of a mixture probability finite


class SummaryHead(nn.Module):
    """Standardiser + (kernel features +) linear map to 4 logits, and the blend weight ``w`` (0: the head is off).
    ``width``: how many of the summary's first descriptors it reads (``ModelConfig.summary_width``); ``centres``:
    0 for a linear head, else how many RBF centres it holds (a fit with fewer leaves the rest at zero weight)."""

    def __init__(self, width: int = SUMMARY_KEY_SIZE, centres: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.kernel = centres > 0
        if self.kernel:
            self.register_buffer("centres", torch.zeros(centres, width))  # standardised training windows
        self.register_buffer("weight", torch.zeros(N_QUADRANTS, centres if self.kernel else width))
        self.register_buffer("bias", torch.zeros(N_QUADRANTS))
        self.register_buffer("blend", torch.zeros(()))
        self._active = False  # float(blend) > 0, kept on the host: reading the buffer each forward syncs a GPU

    def set(self, *, mean: np.ndarray, scale: np.ndarray, weight: np.ndarray, bias: np.ndarray, blend: float,
            centres: np.ndarray | None = None) -> None:
        """Install a fitted regression: mean, scale (width,), weight (4, width) — or for a kernel head the centres
        (centres, width) and weight (4, centres) — bias (4,), and the blend weight in [0, 1]."""
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be within [0, 1], got {blend}")
        if (centres is not None) != self.kernel:
            raise ValueError("a kernel head needs its centres" if self.kernel else "a linear head has no centres")
        values = [("mean", mean), ("scale", scale), ("weight", weight), ("bias", bias)]
        for name, value in values + ([("centres", centres)] if self.kernel else []):
            buffer = getattr(self, name)
            value = torch.as_tensor(np.asarray(value), dtype=buffer.dtype)
            if value.shape != buffer.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(buffer.shape)}")
            buffer.copy_(value)
        self.blend.fill_(blend)
        self._active = blend > 0.0

    def reset(self) -> None:
        """The head off and empty, as built: the network's own probabilities come through unchanged."""
        self.set(mean=np.zeros(self.mean.shape), scale=np.ones(self.scale.shape), weight=np.zeros(self.weight.shape),
                 bias=np.zeros(self.bias.shape), blend=0.0,
                 centres=np.zeros(self.centres.shape) if self.kernel else None)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001 — torch's hook
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._active = float(self.blend) > 0.0

    @property
    def active(self) -> bool:
        return self._active

    def logits(self, summary: torch.Tensor) -> torch.Tensor:
        """summary (B, width) -> the regression's quadrant logits (B, 4)."""
        z = (summary.float() - self.mean) / self.scale  # (B, width)
        if self.kernel:  # RBF features at the centres, gamma 1 / width (scikit-learn's default for the RBF kernel)
            z = torch.exp(-torch.cdist(z, self.centres).square() / z.shape[1])  # (B, centres)
        return z @ self.weight.T + self.bias

    def forward(self, quadrant_logits: torch.Tensor, summary: torch.Tensor | None, has_notes: torch.Tensor
                ) -> torch.Tensor:
        """The network's quadrant logits (B, 4) -> the mixture's log probabilities (B, 4); unchanged when w = 0.

        ``has_notes`` (B,) bool: the windows whose summary comes from MIDI notes. The regression is fitted on
        those; a window without notes (an audio-only item: key from the chromagram, note statistics zero) gets
        the network alone rather than a regression far outside what it was fitted on.
        """
        if not self.active:
            return quadrant_logits
        if summary is None:
            raise ValueError("this model blends a summary head (fitted summary_head): pass summary")
        w = self.blend * has_notes.to(torch.float32).unsqueeze(1)  # (B, 1)
        mixture = (1 - w) * torch.softmax(quadrant_logits.float(), dim=1) \
            + w * torch.softmax(self.logits(summary), dim=1)  # (B, 4)
        return mixture.clamp_min(PROBABILITY_FLOOR).log().to(quadrant_logits.dtype)
