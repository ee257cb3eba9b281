"""Windows in, emotions out: the model on a batch of windows, and windows merged into pieces.

A piece is cut into windows (:class:`mer.features.ItemFeatures`); the model labels each window
(:func:`predict_windows`); a piece's label is the mean of its windows' probabilities
(:func:`mer.model.pieces.aggregate_windows`, NumPy only). Scoring predictions against true labels is training's
and evaluation's (:mod:`mer.train.scores`).

:class:`EmotionPredictor` is the Ray Data form of :func:`predict_windows`: it loads a model artifact once per
actor and is applied with ``ds.map_batches(EmotionPredictor, fn_constructor_kwargs={"model": ...},
concurrency=..., num_gpus=..., batch_size=...)``.
"""
from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import torch

from mer.config import BRANCHES
from mer.model.artifact import Artifact, load_artifact
from mer.model.folding import fold_for_inference
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
        fold: bool = True,
    ) -> None:
        """``model``: an artifact path/URL, a version id (with ``storage``), or an already loaded
        :class:`mer.model.artifact.Artifact`. ``keep_inputs``: also return the feature arrays (normally dropped, so
        the output rows stay small). ``endpoint_url``: S3-compatible endpoint for ``s3://`` artifacts. ``int8``: on a
        CPU, run the Bi-GRU and the linear layers with int8 weights (:mod:`mer.model.quantization`; ignored on a
        GPU, and float32 with a warning where this torch cannot); :attr:`int8` says what runs. ``fold``: BatchNorm
        folded into the convolutions (:mod:`mer.model.folding`; the same outputs, less work); False runs the model
        as trained, for comparison."""
        self.device = pick_device(device)
        if isinstance(model, Artifact):
            artifact = model
        else:
            artifact = load_artifact(model, storage=storage, device=self.device, endpoint_url=endpoint_url)
        self.artifact = artifact
        # BatchNorm folded into the convolutions, the harmony CNN channels-last: the same labels, less work. A model
        # loaded here has no other holder, so it is converted in place rather than copied once per step; a
        # caller's Artifact keeps its model as it was.
        loaded_here = not isinstance(model, Artifact)
        self.model = artifact.model.to(self.device).eval()
        if fold:
            self.model = fold_for_inference(self.model, inplace=loaded_here)
        self.int8 = False
        if int8 and self.device.type == "cpu":
            try:
                self.model = quantize_int8(self.model, inplace=loaded_here or fold)
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
