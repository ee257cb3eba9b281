"""The model on batches of window rows, as a Ray Data actor (or called directly by the local loop).

:class:`WindowPredictor` wraps :class:`mer.model.EmotionPredictor` with the tagger's failure handling and its
batching. torch and the model are imported when a predictor is built, not with this module: the feature tasks
import the tagger's modules and need neither.

Batches are bucketed by token length. The Bi-GRU runs every window of a model batch to the batch's longest
window, and a sixth of EMOPIA's windows reach the 1,024-token cap while many hold a few hundred: a batch of 16 in
arrival order almost always holds one capped window, so most of its GRU steps would run over padding. The actor
therefore takes :data:`BUCKET_POOL` model batches' worth of windows per call, sorts them by token length and
runs the model on consecutive runs of ``batch_size``: each model batch pads only to the longest of windows of
about the same length. In eval mode a window's output does not depend on the other windows of its batch
(BatchNorm uses its running statistics; padding never reaches a valid step), so bucketing changes no label
beyond float rounding (tested).
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from mer.config import BRANCHES, QUADRANTS, MerConfig
from mer.tagging.prepare import ITEM_COLUMNS, WINDOW_COLUMNS, describe_error

PREDICTION_COLUMNS: tuple[str, ...] = ("quadrant_probs", "arousal_prob", "valence_prob", "attention",
                                       "inference_seconds", "int8")
"""Columns :class:`WindowPredictor` adds (``int8``: whether the actor's model ran with int8 weights, which the driver
records as the run's ``inference``); it drops the feature arrays so the rows coming back stay small."""

BUCKET_POOL = 4
"""Model batches' worth of windows an inference actor receives per call and sorts by token length (Ray Data's
``batch_size`` is ``BUCKET_POOL * TagConfig.batch_size`` windows)."""


def model_batch(batch: Mapping[str, np.ndarray], rows: np.ndarray, *, config: MerConfig) -> dict[str, np.ndarray]:
    """Dense model inputs for ``rows`` of a batch of compact window rows (:func:`mer.tagging.prepare.window_row`).

    Tokens are padded with the padding id to the longest token row among ``rows`` only; absent chroma/MFCC
    (zero frames) become zeros, which the model never reads (the branch is not present).

    Returns:
        ``tokens`` (B, L) int64, ``token_length`` (B,) int64, ``chroma`` (B, 12, F) and ``mfcc`` (B, n_mfcc, F)
        float32, ``present`` (B, 3) bool, ``summary`` (B, S) float32; ``F = config.features.frames_per_window``.
    """
    features = config.features
    frames = features.frames_per_window
    tokens = [np.asarray(batch["tokens"][row]) for row in rows]
    dense = np.full((len(rows), max([1, *(t.shape[0] for t in tokens)])), features.vocab_size - 1, dtype=np.int64)
    chroma = np.zeros((len(rows), 12, frames), dtype=np.float32)
    mfcc = np.zeros((len(rows), features.n_mfcc, frames), dtype=np.float32)
    for j, row in enumerate(rows):
        dense[j, : tokens[j].shape[0]] = tokens[j]
        window_chroma, window_mfcc = np.asarray(batch["chroma"][row]), np.asarray(batch["mfcc"][row])
        if window_chroma.shape[-1]:  # zero frames: the item has no audio
            chroma[j], mfcc[j] = window_chroma, window_mfcc
    return {
        "tokens": dense,
        "token_length": np.asarray(batch["token_length"], dtype=np.int64)[rows],
        "chroma": chroma,
        "mfcc": mfcc,
        "present": np.stack([np.asarray(batch["present"][row], dtype=bool) for row in rows]),
        "summary": np.stack([np.asarray(batch["summary"][row], dtype=np.float32) for row in rows]),
    }


def length_buckets(lengths: np.ndarray, rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``rows`` cut into model batches of at most ``batch_size``, each of windows of similar token length
    (``rows`` sorted by ``lengths[rows]``, stable, then cut into consecutive runs)."""
    ordered = rows[np.argsort(np.asarray(lengths)[rows], kind="stable")]
    return [ordered[start:start + batch_size] for start in range(0, ordered.shape[0], max(1, batch_size))]


class WindowPredictor:
    """Labels batches of window rows with the model: :class:`mer.model.EmotionPredictor` plus failure handling.

    Failure rows (``failed_stage`` set) pass through with zero probabilities and never reach the model. The
    other windows are bucketed by token length into model batches of ``batch_size`` (see the module docstring;
    ``bucket=False`` keeps their arrival order, for comparison). If the model raises on a model batch, its
    windows are retried one by one and only those that still fail become ``inference`` failures, so one item
    never takes a batch down. Returns the rows without the feature arrays, plus :data:`PREDICTION_COLUMNS`
    (``inference_seconds``: each window's share of its model batch's time). Applied with
    ``map_batches(WindowPredictor, fn_constructor_kwargs=..., concurrency=..., num_gpus=...)``; the weights are
    loaded once, when the actor starts.
    """

    def __init__(self, model: str, *, storage: str | None = None, endpoint_url: str | None = None,
                 device: str | None = None, num_threads: int | None = None, batch_size: int = 16,
                 bucket: bool = True, int8: bool = False) -> None:
        """``model``: artifact path/URL or version id (with ``storage``; ``endpoint_url`` for an S3-compatible
        server other than AWS, passed explicitly: an actor sees nothing of the driver's flags). ``num_threads``:
        torch intra-op threads (None: leave torch's default; an actor gets as many as the CPUs it reserves). ``batch_size``: windows per
        model call. ``int8``: int8 weights for the Bi-GRU and linear layers on a CPU (:mod:`mer.model.quantization`;
        GPUs run float32)."""
        import torch

        from mer.model import EmotionPredictor

        if num_threads is not None:
            # Many threads on a small batch contend with the feature tasks on the same cores for no gain.
            torch.set_num_threads(max(1, int(num_threads)))
        self.predictor = EmotionPredictor(model, storage=storage, device=device, endpoint_url=endpoint_url,
                                          int8=int8)
        self.config = self.predictor.artifact.config
        self.heads = self.config.model.attention_heads
        self.batch_size = max(1, int(batch_size))
        self.bucket = bucket

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["name"])
        stage = np.asarray(batch["failed_stage"]).astype(object)
        reason = np.asarray(batch["failed_reason"]).astype(object)
        transient = np.asarray(batch["failed_transient"]).astype(bool)
        out: dict[str, np.ndarray] = {k: np.asarray(batch[k]) for k in (*WINDOW_COLUMNS[:4], *ITEM_COLUMNS)}
        quadrant_probs = np.zeros((n, len(QUADRANTS)), dtype=np.float32)
        arousal = np.zeros(n, dtype=np.float32)
        valence = np.zeros(n, dtype=np.float32)
        attention = np.zeros((n, self.heads, len(BRANCHES), len(BRANCHES)), dtype=np.float32)
        seconds = np.zeros(n, dtype=np.float64)

        def run(rows: np.ndarray) -> None:
            start = time.perf_counter()
            result = self.predictor(model_batch(batch, rows, config=self.config))
            quadrant_probs[rows] = result["quadrant_probs"]
            arousal[rows] = result["arousal_prob"]
            valence[rows] = result["valence_prob"]
            attention[rows] = result["attention"]
            seconds[rows] = (time.perf_counter() - start) / rows.shape[0]

        good = np.flatnonzero(stage == "")
        lengths = np.asarray(batch["token_length"])
        if self.config.model.symbolic_max_tokens:  # the Bi-GRU reads no further: what its batches run to
            lengths = np.minimum(lengths, self.config.model.symbolic_max_tokens)
        chunks = (length_buckets(lengths, good, self.batch_size) if self.bucket
                  else [good[i:i + self.batch_size] for i in range(0, good.shape[0], self.batch_size)])
        for chunk in chunks:
            try:
                run(chunk)
            except Exception:  # noqa: BLE001 — find the window(s) at fault; the rest of the batch is fine
                for row in chunk:
                    try:
                        run(np.array([row]))
                    except Exception as error:  # noqa: BLE001
                        window = int(batch["window_index"][row])
                        stage[row] = "inference"
                        reason[row] = f"model failed on window {window}: {describe_error(error)}"
                        transient[row] = True
        out["failed_stage"], out["failed_reason"] = stage.astype(str), reason.astype(str)
        out["failed_transient"] = transient
        out["quadrant_probs"], out["arousal_prob"], out["valence_prob"], out["attention"] = (
            quadrant_probs, arousal, valence, attention)
        out["inference_seconds"] = seconds
        out["int8"] = np.full(n, self.predictor.int8)  # what ran, not what was asked: int8 can fall back to float32
        if "pitch_classes" in batch:  # the piece's pitch classes go on to the recorder (the label's key and mode)
            out["pitch_classes"] = np.asarray(batch["pitch_classes"])
        return out
