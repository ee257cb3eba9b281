"""Windows in, emotions out: the model on a batch of windows, and windows merged into pieces.

A piece is cut into windows (:class:`mer.features.ItemFeatures`); the model labels each window; a piece's label
is the mean of its windows' probabilities (:func:`aggregate_windows`), and the per-window values are kept as the
piece's timeline. A piece's arousal and valence follow from its quadrant (:func:`mer.labels.arousal_valence`).
Scoring predictions against true labels is training's and evaluation's (:mod:`mer.train.scores`).

:class:`EmotionPredictor` is the Ray Data form of :func:`predict_windows`: it loads a model artifact once per
actor and is applied with ``ds.map_batches(EmotionPredictor, fn_constructor_kwargs={"model": ...},
concurrency=..., num_gpus=..., batch_size=...)``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from mer.config import BRANCHES, QUADRANTS
from mer.labels import arousal_valence
from mer.model.artifact import Artifact, load_artifact
from mer.model.network import MerModel
from mer.model.quantization import Int8Unavailable, quantize_int8
from mer.model.tensors import model_inputs, pick_device, to_tensors


@torch.no_grad()
def predict_windows(model: MerModel, batch: Mapping[str, Any], *, device: str | torch.device) -> dict[str, np.ndarray]:
    """Run the model (eval mode, no gradients) on a batch of windows.

    Args:
        model: a :class:`~mer.model.network.MerModel` already on ``device``.
        batch: numpy arrays with the keys of :data:`~mer.model.tensors.MODEL_INPUTS` (shapes as in
            :func:`~mer.model.tensors.to_tensors`; ``token_length`` also accepted), plus any pass-through keys
            (``name``, ``window_index``, ``window_start``, ``quadrant`` ...).
        device: where the model lives.

    Returns:
        ``batch`` (a new dict, same arrays) plus ``quadrant_probs`` (N, 4) float32 (softmax of the logits divided
        by the model's ``quadrant_temperature``, the calibration fitted on val; rows sum to 1),
        ``arousal_prob`` (N,) and ``valence_prob`` (N,) float32 (sigmoid of the V/A head: P(high arousal),
        P(positive valence)), ``attention`` (N, heads, 3, 3) float32 in BRANCHES order (zeros for a model
        without self-attention).
    """
    model.eval()
    output = model(**model_inputs(to_tensors(batch, device=device)))
    temperature = getattr(model, "quadrant_temperature", 1.0)  # set by load_artifact from the artifact's meta
    va = torch.sigmoid(output.va_logits).float().cpu().numpy()  # (N, 2)
    if output.attention is not None:
        attention = output.attention.float().cpu().numpy()  # (N, h, 3, 3)
    else:
        heads = model.config.model.attention_heads
        attention = np.zeros((va.shape[0], heads, len(BRANCHES), len(BRANCHES)), dtype=np.float32)
    result = dict(batch)
    quadrant_logits = output.quadrant_logits.float() / temperature  # (N, 4)
    result["quadrant_probs"] = torch.softmax(quadrant_logits, dim=1).cpu().numpy()  # (N, 4)
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


def group_rows(names: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """Distinct names (N,) in order of first appearance, and each one's row indices: how window rows become
    pieces (or clips) wherever they are merged."""
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
    for name, rows in zip(*group_rows(names), strict=True):
        rows = rows[np.argsort(order_key[rows], kind="stable")]  # time order
        probs = quadrant_probs[rows].mean(axis=0)  # (4,)
        quadrant = int(np.argmax(probs))
        arousal_of, valence_of = arousal_valence(quadrant)  # as the paper scores them: from the quadrant
        pieces.append(
            PiecePrediction(
                name=name,
                quadrant=quadrant,
                quadrant_probs=probs,
                arousal=int(arousal_of),
                valence=int(valence_of),
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
        int8: bool = False,
    ) -> None:
        """``model``: an artifact path/URL, a version id (with ``storage``), or an already loaded
        :class:`mer.model.artifact.Artifact`. ``keep_inputs``: also return the feature arrays (normally dropped, so
        the output rows stay small). ``endpoint_url``: S3-compatible endpoint for ``s3://`` artifacts. ``int8``: on a
        CPU, run the Bi-GRU and the linear layers with int8 weights (:mod:`mer.model.quantization`; ignored on a
        GPU, and float32 with a warning where this torch cannot); :attr:`int8` says what runs."""
        self.device = pick_device(device)
        if isinstance(model, Artifact):
            artifact = model
        else:
            artifact = load_artifact(model, storage=storage, device=self.device, endpoint_url=endpoint_url)
        self.artifact = artifact
        self.model = artifact.model.to(self.device).eval()
        self.int8 = False
        if int8 and self.device.type == "cpu":
            try:
                self.model = quantize_int8(self.model)
                self.int8 = True
            except Int8Unavailable as error:
                warnings.warn(f"int8 inference unavailable, running float32: {error}", RuntimeWarning, stacklevel=2)
        self.keep_inputs = keep_inputs

    @classmethod
    def from_artifact(cls, model: str | Artifact, *, storage: str | None = None, device: str | None = None,
                      endpoint_url: str | None = None, int8: bool = False) -> "EmotionPredictor":
        """A predictor for local use (outside ``map_batches``), from an artifact path/URL/version or object."""
        return cls(model, storage=storage, device=device, endpoint_url=endpoint_url, int8=int8)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Window rows (numpy batch) -> the same rows plus the :func:`predict_windows` outputs."""
        result = predict_windows(self.model, batch, device=self.device)
        if not self.keep_inputs:
            for key in ("tokens", "chroma", "mfcc"):
                result.pop(key, None)
        return result
