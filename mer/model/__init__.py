"""Model: the network of Zhao & Yoshii (torch), its saved artifact, and windows in → emotions out.
Imports torch and the configuration, never Ray, the training loop, the catalog or the tagger.

Names are imported from their module on first use, so what needs no torch (reading an artifact's config.json and
meta.json, :func:`read_artifact`: what a tagging driver plans a run with; merging window predictions into pieces,
:func:`aggregate_windows`: what it records them with) does not pay for importing it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mer.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "artifact": ("LATEST", "MODELS_DIR", "Artifact", "ArtifactInfo", "is_url", "join", "latest_version",
                 "load_artifact", "read_artifact", "save_artifact"),
    "calibration": ("clip_probabilities", "expected_calibration_error", "fit_temperature", "nll", "reliability"),
    "ensemble": ("MerEnsemble",),
    "folding": ("fold_for_inference",),
    "musicnn": ("Musicnn", "musicnn", "window_embeddings"),
    "inference": ("EmotionPredictor", "predict_windows"),
    "network": ("MerModel", "ModelOutput"),
    "pieces": ("PiecePrediction", "aggregate_windows", "group_rows"),
    "quantization": ("Int8Unavailable", "quantize_int8"),
    "summary_head": ("SummaryHead",),
    "tensors": ("MODEL_INPUTS", "ROW_KEYS_TO_BATCH", "model_inputs", "pick_device", "to_tensors"),
})

if TYPE_CHECKING:  # what the names are, for readers and type checkers (and the layering test)
    from mer.model.artifact import (LATEST, MODELS_DIR, Artifact, ArtifactInfo, is_url, join,
                                    latest_version, load_artifact, read_artifact, save_artifact)
    from mer.model.calibration import (clip_probabilities, expected_calibration_error, fit_temperature, nll,
                                       reliability)
    from mer.model.ensemble import MerEnsemble
    from mer.model.folding import fold_for_inference
    from mer.model.inference import EmotionPredictor, predict_windows
    from mer.model.musicnn import Musicnn, musicnn, window_embeddings
    from mer.model.network import MerModel, ModelOutput
    from mer.model.pieces import PiecePrediction, aggregate_windows, group_rows
    from mer.model.quantization import Int8Unavailable, quantize_int8
    from mer.model.summary_head import SummaryHead
    from mer.model.tensors import MODEL_INPUTS, ROW_KEYS_TO_BATCH, model_inputs, pick_device, to_tensors
