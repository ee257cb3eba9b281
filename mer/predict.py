"""Windows in, emotions out: the model on a batch of windows, windows merged into pieces, per-clip accuracies.

A piece is cut into windows (:class:`mer.features.ItemFeatures`); the model labels each window; a piece's label
is the mean of its windows' probabilities (:func:`aggregate_windows`), and the per-window values are kept as the
piece's timeline. Accuracies are per clip, with arousal and valence derived from the predicted quadrant
(Q1/Q2 high arousal, Q1/Q4 positive valence), as the paper does (:func:`split_metrics`).

:class:`EmotionPredictor` is the Ray Data form of :func:`predict_windows`: it loads a model artifact once per
actor and is applied with ``ds.map_batches(EmotionPredictor, fn_constructor_kwargs={"model": ...},
concurrency=..., num_gpus=..., batch_size=...)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from mer.config import BRANCHES, QUADRANTS

if TYPE_CHECKING:
    from mer.artifact import Artifact
    from mer.model import MerModel

MODEL_INPUTS: tuple[str, ...] = ("tokens", "token_lengths", "chroma", "mfcc", "present")
"""Batch keys the model reads (the big feature arrays); everything else in a batch is passed through."""

_DTYPES = {
    "tokens": torch.long,
    "token_lengths": torch.long,
    "chroma": torch.float32,
    "mfcc": torch.float32,
    "present": torch.bool,
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
    present (B, 3), optionally quadrant (B,). ``token_length`` (the window-row key, singular) is accepted for
    ``token_lengths``. Other keys (names, window starts) are left out.
    """
    tensors = {}
    for key, dtype in _DTYPES.items():
        source = key if key in batch else "token_length" if key == "token_lengths" else None
        if source is not None and source in batch:
            value = batch[source]
            if not isinstance(value, torch.Tensor):
                value = torch.from_numpy(np.ascontiguousarray(np.asarray(value)))
            tensors[key] = value.to(device=device, dtype=dtype)
    return tensors


@torch.no_grad()
def predict_windows(model: MerModel, batch: Mapping[str, Any], *, device: str | torch.device) -> dict[str, np.ndarray]:
    """Run the model (eval mode, no gradients) on a batch of windows.

    Args:
        model: a :class:`mer.model.MerModel` already on ``device``.
        batch: numpy arrays with the keys of :data:`MODEL_INPUTS` (shapes as in :func:`to_tensors`;
            ``token_length`` also accepted), plus any pass-through keys (``name``, ``window_index``,
            ``window_start``, ``quadrant`` ...).
        device: where the model lives.

    Returns:
        ``batch`` (a new dict, same arrays) plus ``quadrant_probs`` (N, 4) float32 (softmax, rows sum to 1),
        ``arousal_prob`` (N,) and ``valence_prob`` (N,) float32 (sigmoid of the V/A head: P(high arousal),
        P(positive valence)), ``attention`` (N, heads, 3, 3) float32 in BRANCHES order (zeros for a model
        without self-attention).
    """
    model.eval()
    inputs = to_tensors(batch, device=device)
    missing = [k for k in MODEL_INPUTS if k not in inputs]
    if missing:
        raise KeyError(f"batch lacks the model inputs {missing}; it has {sorted(batch)}")
    inputs.pop("quadrant", None)
    output = model(**inputs)
    va = torch.sigmoid(output.va_logits).float().cpu().numpy()  # (N, 2)
    if output.attention is not None:
        attention = output.attention.float().cpu().numpy()  # (N, h, 3, 3)
    else:
        heads = model.config.model.attention_heads
        attention = np.zeros((va.shape[0], heads, len(BRANCHES), len(BRANCHES)), dtype=np.float32)
    result = dict(batch)
    result["quadrant_probs"] = torch.softmax(output.quadrant_logits.float(), dim=1).cpu().numpy()  # (N, 4)
    result["arousal_prob"] = va[:, 0]
    result["valence_prob"] = va[:, 1]
    result["attention"] = attention
    return result


@dataclass(frozen=True)
class PiecePrediction:
    """One piece's emotion: the mean over its windows, and the windows themselves as a timeline.

    ``quadrant`` is the argmax (0..3 = Q1..Q4) of ``quadrant_probs`` (4,), the mean of the windows' softmax
    probabilities; ``arousal``/``valence`` (0/1) follow from that quadrant (as the paper scores them);
    ``arousal_prob``/``valence_prob`` are the V/A head's mean probabilities; ``attention`` (heads, 3, 3) the
    mean attention weights. The timeline arrays have one row per window, in time order: ``window_starts`` (W,)
    seconds, ``window_quadrant_probs`` (W, 4), ``window_arousal_probs`` (W,), ``window_valence_probs`` (W,).
    """

    name: str
    quadrant: int
    quadrant_probs: np.ndarray
    arousal: int
    valence: int
    arousal_prob: float
    valence_prob: float
    attention: np.ndarray
    window_starts: np.ndarray
    window_quadrant_probs: np.ndarray
    window_arousal_probs: np.ndarray
    window_valence_probs: np.ndarray

    @property
    def label(self) -> str:
        """The quadrant's name, ``"Q1"`` .. ``"Q4"``."""
        return QUADRANTS[self.quadrant]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists instead of arrays; the timeline as one dict per window."""
        return {
            "name": self.name,
            "quadrant": self.label,
            "quadrant_probs": [float(p) for p in self.quadrant_probs],
            "arousal": self.arousal,
            "valence": self.valence,
            "arousal_prob": self.arousal_prob,
            "valence_prob": self.valence_prob,
            "attention": self.attention.tolist(),
            "timeline": [
                {
                    "start": float(start),
                    "quadrant": QUADRANTS[int(np.argmax(probs))],
                    "quadrant_probs": [float(p) for p in probs],
                    "arousal_prob": float(arousal),
                    "valence_prob": float(valence),
                }
                for start, probs, arousal, valence in zip(
                    self.window_starts, self.window_quadrant_probs, self.window_arousal_probs,
                    self.window_valence_probs, strict=True,
                )
            ],
        }


def _quadrant_av(quadrants: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary arousal (Q1/Q2) and valence (Q1/Q4) of quadrant indices (N,) -> two (N,) int64 arrays."""
    quadrants = np.asarray(quadrants)
    return np.isin(quadrants, (0, 1)).astype(np.int64), np.isin(quadrants, (0, 3)).astype(np.int64)


def _group(names: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """Distinct names in order of first appearance, and each one's row indices."""
    names = np.asarray(names).astype(str)
    unique, first, inverse = np.unique(names, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rows_of = [np.flatnonzero(inverse == u) for u in range(len(unique))]
    return [str(unique[u]) for u in order], [rows_of[u] for u in order]


def aggregate_windows(predictions: Mapping[str, np.ndarray]) -> list[PiecePrediction]:
    """Merge window predictions into one :class:`PiecePrediction` per piece.

    Args:
        predictions: window rows as stacked arrays (the output of :func:`predict_windows`, possibly concatenated
            over batches): ``name`` (N,), ``window_start`` (N,) seconds, ``quadrant_probs`` (N, 4),
            ``arousal_prob`` (N,), ``valence_prob`` (N,), ``attention`` (N, h, 3, 3). A piece's windows may
            be spread over the arrays in any order; ``window_index`` (N,) orders them when given, else
            ``window_start``.

    Returns:
        Pieces in order of first appearance. A piece's probabilities are the means over its windows.
    """
    names = np.asarray(predictions["name"])
    starts = np.asarray(predictions["window_start"], dtype=np.float64)
    order_key = np.asarray(predictions["window_index"]) if "window_index" in predictions else starts
    quadrant_probs = np.asarray(predictions["quadrant_probs"], dtype=np.float32)
    arousal = np.asarray(predictions["arousal_prob"], dtype=np.float32)
    valence = np.asarray(predictions["valence_prob"], dtype=np.float32)
    attention = np.asarray(predictions["attention"], dtype=np.float32)
    pieces = []
    for name, rows in zip(*_group(names), strict=True):
        rows = rows[np.argsort(order_key[rows], kind="stable")]  # time order
        probs = quadrant_probs[rows].mean(axis=0)  # (4,)
        quadrant = int(np.argmax(probs))
        a, v = _quadrant_av(np.array([quadrant]))
        pieces.append(
            PiecePrediction(
                name=name,
                quadrant=quadrant,
                quadrant_probs=probs,
                arousal=int(a[0]),
                valence=int(v[0]),
                arousal_prob=float(arousal[rows].mean()),
                valence_prob=float(valence[rows].mean()),
                attention=attention[rows].mean(axis=0),
                window_starts=starts[rows],
                window_quadrant_probs=quadrant_probs[rows],
                window_arousal_probs=arousal[rows],
                window_valence_probs=valence[rows],
            )
        )
    return pieces


def clip_quadrants(
    *, names: np.ndarray, quadrant_probs: np.ndarray, quadrants: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-clip predicted and true quadrants from window rows.

    ``names`` (N,), ``quadrant_probs`` (N, 4), ``quadrants`` (N,) the clip's true quadrant on each of its
    windows. Returns (clip names in first-appearance order, predicted (C,) = argmax of the mean window
    probabilities, true (C,)).
    """
    quadrant_probs = np.asarray(quadrant_probs, dtype=np.float64)
    quadrants = np.asarray(quadrants)
    clips, groups = _group(np.asarray(names))
    predicted = np.array([int(np.argmax(quadrant_probs[rows].mean(axis=0))) for rows in groups], dtype=np.int64)
    true = np.array([int(quadrants[rows[0]]) for rows in groups], dtype=np.int64)
    return clips, predicted, true


def split_metrics(*, names: np.ndarray, quadrant_probs: np.ndarray, quadrants: np.ndarray) -> dict[str, float]:
    """Per-clip accuracies of one split: ``{"4q", "arousal", "valence"}``, each in [0, 1].

    Windows are merged per clip by mean probability (:func:`clip_quadrants`); arousal and valence are binary
    accuracies derived from the predicted and true quadrants. Inputs as in :func:`clip_quadrants`.
    """
    _, predicted, true = clip_quadrants(names=names, quadrant_probs=quadrant_probs, quadrants=quadrants)
    if len(true) == 0:
        raise ValueError("split_metrics needs at least one window")
    pred_a, pred_v = _quadrant_av(predicted)
    true_a, true_v = _quadrant_av(true)
    return {
        "4q": float(np.mean(predicted == true)),
        "arousal": float(np.mean(pred_a == true_a)),
        "valence": float(np.mean(pred_v == true_v)),
    }


class EmotionPredictor:
    """Ray Data batch predictor: loads a model artifact once, then labels batches of window rows.

    Use as ``ds.map_batches(EmotionPredictor, fn_constructor_kwargs={"model": "<path, url or version>",
    "storage": ...}, concurrency=1, num_gpus=0, batch_size=8)``. Runs on CUDA when the actor has a GPU.
    """

    def __init__(
        self,
        model: str | Artifact,
        *,
        storage: str | None = None,
        device: str | None = None,
        keep_inputs: bool = False,
        endpoint_url: str | None = None,
    ) -> None:
        """``model``: an artifact path/URL, a version id (with ``storage``), or an already loaded
        :class:`mer.artifact.Artifact`. ``keep_inputs``: also return the feature arrays (normally dropped, so
        the output rows stay small). ``endpoint_url``: S3-compatible endpoint for ``s3://`` artifacts."""
        from mer.artifact import Artifact, load_artifact  # artifact imports this module's helpers

        self.device = pick_device(device)
        if isinstance(model, Artifact):
            artifact = model
        else:
            artifact = load_artifact(model, storage=storage, device=self.device, endpoint_url=endpoint_url)
        self.artifact = artifact
        self.model = artifact.model.to(self.device).eval()
        self.keep_inputs = keep_inputs

    @classmethod
    def from_artifact(cls, model: str | Artifact, *, storage: str | None = None, device: str | None = None,
                      endpoint_url: str | None = None) -> "EmotionPredictor":
        """A predictor for local use (outside ``map_batches``), from an artifact path/URL/version or object."""
        return cls(model, storage=storage, device=device, endpoint_url=endpoint_url)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Window rows (numpy batch) -> the same rows plus the :func:`predict_windows` outputs."""
        result = predict_windows(self.model, batch, device=self.device)
        if not self.keep_inputs:
            for key in ("tokens", "chroma", "mfcc"):
                result.pop(key, None)
        return result
