"""Model: the network of Zhao & Yoshii (torch), its saved artifact, and windows in → emotions out.
Imports torch and the configuration, never Ray, the training loop, the catalog or the tagger."""
from __future__ import annotations

from mer.model.artifact import (LATEST, MODELS_DIR, Artifact, ArtifactInfo, filesystem, is_url, join, latest_version,
                                load_artifact, read_artifact, save_artifact)
from mer.model.calibration import (clip_probabilities, expected_calibration_error, fit_temperature, nll,
                                   reliability)
from mer.model.ensemble import MerEnsemble
from mer.model.inference import (EmotionPredictor, PiecePrediction, aggregate_windows, group_rows,
                                 predict_windows)
from mer.model.network import MerModel, ModelOutput
from mer.model.tensors import MODEL_INPUTS, ROW_KEYS_TO_BATCH, model_inputs, pick_device, to_tensors

__all__ = [
    "Artifact", "ArtifactInfo", "EmotionPredictor", "MerEnsemble", "clip_probabilities", "expected_calibration_error",
    "fit_temperature", "nll", "reliability", "LATEST", "MODELS_DIR", "MODEL_INPUTS", "MerModel", "ModelOutput",
    "PiecePrediction", "ROW_KEYS_TO_BATCH", "aggregate_windows", "filesystem", "group_rows", "is_url", "join",
    "latest_version", "load_artifact", "model_inputs", "pick_device", "predict_windows", "read_artifact",
    "save_artifact", "to_tensors",
]
