"""One training step, one evaluation step, an epoch's batches and the learning-rate schedule: torch and NumPy, no Ray.

:mod:`mer.train.loop` runs these on every Ray Train worker.

Loss (per window): ``CE(quadrant) + va_loss_weight * (BCE(arousal) + BCE(valence))``, the binary targets
derived from the quadrant (:data:`mer.labels.QUADRANT_AROUSAL_VALENCE`), all of them smoothed in training when
``TrainConfig.label_smoothing`` is set. AdamW; the learning rate warms up over
the first epoch and decays along a cosine (:func:`lr_schedule`: torch's ``LinearLR`` then ``CosineAnnealingLR``).
Batches hold windows of similar token length (:func:`length_bucketed_batches`), and every rank of a step takes its
slice of the same global batch (:func:`rank_batches`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mer.config import TrainConfig
from mer.errors import ConfigError
from mer.labels import QUADRANT_AROUSAL_VALENCE
from mer.model import ModelOutput, model_inputs, to_tensors

GRAD_CLIP_NORM = 5.0  # a Bi-GRU over ~1000 steps can spike; clipping keeps one bad batch from derailing training
FINAL_LR_FRACTION = 0.05  # the cosine schedule ends at 5 % of the peak learning rate
BUCKET_POOL = 8  # batches sorted together by token length (see length_bucketed_batches)


# ----------------------------------------------------------------------------------------------------------------
# Loss and steps
# ----------------------------------------------------------------------------------------------------------------


def emotion_loss(output: ModelOutput, quadrant: torch.Tensor, *, va_loss_weight: float,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the batch of ``CE(4Q) + va_loss_weight * (BCE(arousal) + BCE(valence))``.

    ``quadrant`` (B,) long 0..3; arousal target = Q1/Q2, valence target = Q1/Q4. ``label_smoothing`` s in [0, 1)
    mixes every target with the uniform one: ``(1 - s) * target + s / classes`` (torch's own for the CE).
    """
    table = torch.as_tensor(QUADRANT_AROUSAL_VALENCE, dtype=output.va_logits.dtype, device=quadrant.device)  # (4, 2)
    va_target = table[quadrant] * (1 - label_smoothing) + label_smoothing / 2  # (B, 2) arousal, valence
    loss = F.cross_entropy(output.quadrant_logits, quadrant, label_smoothing=label_smoothing)
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
    label_smoothing: float = 0.0,
) -> float:
    """One optimisation step on a labelled numpy batch (keys of :func:`mer.train.dataset.window_table`).

    Returns the batch's loss (before the step). Gradients are clipped to :data:`GRAD_CLIP_NORM`.
    """
    model.train()
    tensors = to_tensors(batch, device=device)
    optimizer.zero_grad(set_to_none=True)
    output = model(**model_inputs(tensors))
    loss = emotion_loss(output, tensors["quadrant"], va_loss_weight=va_loss_weight, label_smoothing=label_smoothing)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    optimizer.step()
    return float(loss.detach())


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics (torch's ``AveragedModel``),
    to be updated after every optimisation step (``update_parameters``); None when ``decay`` is 0.

    Why: with ~1,250 training windows the weights of one step are noisy and val accuracy peaks early, so the
    checkpoint chosen on val depends on luck; the average over the last ~1/(1 - decay) steps is smoother.

    Raises:
        ConfigError: ``decay`` outside [0, 1).
    """
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"weight_average_decay must lie in [0, 1), got {decay}")
    if decay == 0.0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


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


WARMUP_START_FRACTION = 0.1  # the warm-up starts at 10 % of the peak learning rate


@dataclass
class Schedule:
    """The learning-rate schedule of a run, stepped once per optimisation step (after ``optimizer.step()``):
    :class:`~torch.optim.lr_scheduler.LinearLR` from :data:`WARMUP_START_FRACTION` of the peak up to the peak
    over the first epoch, then :class:`~torch.optim.lr_scheduler.CosineAnnealingLR` down to
    :data:`FINAL_LR_FRACTION` of the peak at the last step of the last epoch, joined by
    :class:`~torch.optim.lr_scheduler.SequentialLR`. ``scheduler`` is the one to step and to checkpoint."""

    scheduler: torch.optim.lr_scheduler.SequentialLR
    cosine: torch.optim.lr_scheduler.CosineAnnealingLR
    steps_per_epoch: int
    epochs: int

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the scheduler's ``state_dict`` and the shape it was built for."""
        return {"scheduler": self.scheduler.state_dict(), "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a checkpointed schedule. Load the optimizer's state first (it holds the current rate).

        A run extended to more epochs (or cut to fewer) keeps its position and stretches the rest of the cosine
        to the new last epoch: the rate jumps to where the longer cosine stands at this step. A schedule built
        for another number of steps per epoch (another global batch or data set) is refused.
        """
        if int(state["steps_per_epoch"]) != self.steps_per_epoch:
            raise ConfigError(
                f"this run's learning-rate schedule has {state['steps_per_epoch']} steps per epoch, this "
                f"configuration {self.steps_per_epoch}; resume with the same batch size and workers, or pass "
                "another run name or --no-resume")
        stretched_t_max = self.cosine.T_max
        self.scheduler.load_state_dict(state["scheduler"])
        if int(state["epochs"]) != self.epochs:
            self.cosine.T_max = stretched_t_max
            if self.scheduler.last_epoch >= self.steps_per_epoch:  # past the warm-up: the cosine sets the rate
                position = min(self.cosine.last_epoch, stretched_t_max)
                eta_min = self.cosine.eta_min
                for group, base in zip(self.cosine.optimizer.param_groups, self.cosine.base_lrs):
                    group["lr"] = eta_min + (base - eta_min) * 0.5 * (
                        1 + math.cos(math.pi * position / stretched_t_max))


    def advance(self, steps: int) -> None:
        """Move a fresh schedule ``steps`` optimisation steps on without training (the rates it sets are the
        ones those steps would have used)."""
        with warnings.catch_warnings():  # stepping a scheduler before the optimizer is what we mean here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                self.scheduler.step()


def lr_schedule(optimizer: torch.optim.Optimizer, training: TrainConfig, *, steps_per_epoch: int) -> Schedule:
    """The :class:`Schedule` of a run of ``training.epochs`` epochs of ``steps_per_epoch`` steps, for an
    ``optimizer`` whose rate is the peak (``training.learning_rate``). Building it sets the first step's rate."""
    steps_per_epoch, epochs = max(1, steps_per_epoch), max(1, training.epochs)
    peak = training.learning_rate
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START_FRACTION, end_factor=1.0,
                                               total_iters=steps_per_epoch)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, (epochs - 1) * steps_per_epoch),
                                                        eta_min=FINAL_LR_FRACTION * peak)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[steps_per_epoch])
    return Schedule(scheduler=scheduler, cosine=cosine, steps_per_epoch=steps_per_epoch, epochs=epochs)


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
