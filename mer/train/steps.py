"""One training step, one evaluation step, an epoch's batches and the learning rate: torch and NumPy, no Ray.

:mod:`mer.train.loop` runs these on every Ray Train worker.

Loss (per window): ``CE(quadrant) + va_loss_weight * (BCE(arousal) + BCE(valence))``, the binary targets
derived from the quadrant (:data:`mer.labels.QUADRANT_AROUSAL_VALENCE`). AdamW; the learning rate warms up over
the first epoch and decays along a cosine (:func:`learning_rate`). Batches hold windows of similar token length
(:func:`length_bucketed_batches`), and every rank of a step takes its slice of the same global batch
(:func:`rank_batches`).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from mer.config import TrainConfig
from mer.labels import QUADRANT_AROUSAL_VALENCE
from mer.model import ModelOutput, model_inputs, to_tensors

GRAD_CLIP_NORM = 5.0  # a Bi-GRU over ~1000 steps can spike; clipping keeps one bad batch from derailing training
FINAL_LR_FRACTION = 0.05  # the cosine schedule ends at 5 % of the peak learning rate
BUCKET_POOL = 8  # batches sorted together by token length (see length_bucketed_batches)


# ----------------------------------------------------------------------------------------------------------------
# Loss and steps
# ----------------------------------------------------------------------------------------------------------------


def emotion_loss(output: ModelOutput, quadrant: torch.Tensor, *, va_loss_weight: float) -> torch.Tensor:
    """Mean over the batch of ``CE(4Q) + va_loss_weight * (BCE(arousal) + BCE(valence))``.

    ``quadrant`` (B,) long 0..3; arousal target = Q1/Q2, valence target = Q1/Q4.
    """
    table = torch.as_tensor(QUADRANT_AROUSAL_VALENCE, dtype=output.va_logits.dtype, device=quadrant.device)  # (4, 2)
    va_target = table[quadrant]  # (B, 2) arousal, valence
    loss = F.cross_entropy(output.quadrant_logits, quadrant)
    if va_loss_weight:
        # Sum of the two binary losses, each a mean over the batch.
        loss = loss + va_loss_weight * 2 * F.binary_cross_entropy_with_logits(output.va_logits, va_target)
    return loss


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, np.ndarray],
    *,
    device: torch.device,
    va_loss_weight: float,
) -> float:
    """One optimisation step on a labelled numpy batch (keys of :func:`mer.train.dataset.window_table`).

    Returns the batch's loss (before the step). Gradients are clipped to :data:`GRAD_CLIP_NORM`.
    """
    model.train()
    tensors = to_tensors(batch, device=device)
    optimizer.zero_grad(set_to_none=True)
    output = model(**model_inputs(tensors))
    loss = emotion_loss(output, tensors["quadrant"], va_loss_weight=va_loss_weight)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def eval_step(model: torch.nn.Module, batch: Mapping[str, np.ndarray], *, device: torch.device) -> np.ndarray:
    """Quadrant probabilities (B, 4) float32 of a numpy batch, in eval mode (no dropout, BN running stats)."""
    model.eval()
    tensors = to_tensors(batch, device=device)
    output = model(**model_inputs(tensors))
    return torch.softmax(output.quadrant_logits.float(), dim=1).cpu().numpy()


def batches(indices: list[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive chunks of ``indices``; a trailing chunk of one window is dropped when there are others
    (BatchNorm cannot train on a batch of one)."""
    indices = np.asarray(indices, dtype=np.int64)
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks.pop()
    return chunks


def length_bucketed_batches(indices: list[int] | np.ndarray, lengths: np.ndarray, batch_size: int, *,
                            seed: int, pool: int = BUCKET_POOL) -> list[np.ndarray]:
    """Batches of windows of similar token length, in a shuffled order.

    The Bi-GRU runs every sequence of a batch to the batch's longest, so a batch mixing a 100-token window with a
    1024-token one pays 1024 steps for both; EMOPIA's windows range from a few dozen tokens to the cap. Here the
    (already shuffled) ``indices`` are cut into pools of ``pool`` batches, each pool is sorted by ``lengths`` and
    cut into batches, and the batches are shuffled with ``seed``. Every index is used once (except a trailing
    batch of one, see :func:`batches`); which windows meet in a batch stays random from epoch to epoch.
    An epoch costs about the sum of its token lengths instead of ``batches x batch_size x max length``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    lengths = np.asarray(lengths)
    span = max(1, batch_size * pool)
    chunks: list[np.ndarray] = []
    for start in range(0, len(indices), span):
        group = indices[start:start + span]
        group = group[np.argsort(lengths[group], kind="stable")]  # (n,) shortest first
        chunks.extend(group[i:i + batch_size] for i in range(0, len(group), batch_size))
    order = np.random.default_rng(seed).permutation(len(chunks))
    chunks = [chunks[i] for i in order]
    singles = [i for i, chunk in enumerate(chunks) if len(chunk) < 2]
    if len(chunks) > 1 and singles:  # BatchNorm cannot train on a batch of one
        chunks.pop(singles[0])
    return chunks


def learning_rate(training: TrainConfig, progress: float) -> float:
    """The learning rate ``progress`` epochs into a run (fractions within an epoch): linear warm-up from 10 % over
    the first epoch, then a cosine decay to :data:`FINAL_LR_FRACTION` of ``training.learning_rate`` at
    ``training.epochs``. A function of the position only, so a resumed run continues the same schedule (raising
    ``epochs`` to extend a run stretches the rest of it)."""
    peak, epochs = training.learning_rate, max(training.epochs, 1)
    if progress < 1.0:
        return peak * (0.1 + 0.9 * progress)
    fraction = min(1.0, (progress - 1.0) / max(epochs - 1.0, 1e-9))
    return peak * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * fraction)))


def rank_batches(lengths: np.ndarray, global_batch: int, *, seed: int, epoch: int, rank: int,
                 world_size: int) -> list[np.ndarray]:
    """This rank's batches of one epoch: every rank computes the same shuffled, length-bucketed global batches
    (:func:`length_bucketed_batches` of ``len(lengths)`` windows, from ``seed`` and ``epoch`` only) and takes
    every ``world_size``-th window of each, starting at ``rank``. A global batch is sorted by length, so the
    ranks' slices are alike and a DDP step does not wait on one rank's long sequences; all ranks run the same
    number of steps. Global batches with fewer than two windows per rank are dropped (BatchNorm).
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths))
    size = max(global_batch, 2 * world_size)
    chunks = length_bucketed_batches(order, lengths, size, seed=seed * 7_919 + epoch)
    return [chunk[rank::world_size] for chunk in chunks if len(chunk) >= 2 * world_size]
