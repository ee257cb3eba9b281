"""Training with Ray Train: DDP over N workers (gloo on CPUs, NCCL on GPUs), best checkpoint by val, a model artifact.

:func:`train_model` is the whole pipeline:

1. EMOPIA's train and val clips → features, extracted once in parallel Ray tasks into the feature cache
   (:func:`mer.train.dataset.extract_clips`); failed clips are reported and skipped.
2. Each split's windows are stacked into one table and put in the Ray object store once; every training worker
   reads it from there (so nothing but the cache folder is assumed shared between nodes). Every rank draws the
   same length-bucketed global batches from the seed and the epoch (:func:`~mer.train.steps.rank_batches`) and
   takes its slice of each, so the ranks of a step hold windows of similar length and none waits for another.
3. :class:`ray.train.torch.TorchTrainer` runs :func:`train_loop_per_worker`: per epoch
   :func:`~mer.train.steps.train_step` over the worker's batches, then :func:`~mer.train.steps.eval_step` over its
   share of the val windows; the val probabilities are gathered so every worker computes the same per-clip
   metrics; ``ray.train.report`` sends them with a checkpoint (written by rank 0). ``CheckpointConfig`` keeps the
   best checkpoints by ``val_4q`` and the latest.
4. A run is a folder ``<storage>/<run name>``. Running again with the same run name resumes from the run's
   latest checkpoint (Ray Train reloads it; the weights, the optimizer, the learning-rate schedule, the epoch
   number and the history live in the checkpoint), so an interrupted run continues where its last epoch ended
   and reaches the weights of an uninterrupted one; a finished one can be extended by raising ``epochs`` (the
   rest of the cosine is stretched to the new last epoch, :meth:`mer.train.steps.Schedule.load_state_dict`).
5. The best checkpoint (highest val 4Q accuracy, ties to the lower val loss) becomes the model artifact
   (:func:`mer.model.artifact.save_artifact`), or the last with ``TrainConfig.checkpoint="last"``. With
   ``fit_on="train+val"`` the val windows are trained on too (a configuration chosen on val, refitted on more
   clips): the last epoch is kept and the summary head's C and blend and the temperature are the config's.

The loss, the steps, the epoch's batches and the learning-rate schedule are in :mod:`mer.train.steps`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from mer.config import MerConfig, TrainConfig
from mer.errors import ConfigError, MerError
from mer.features import FeatureCache, crop_batch, transpose_batch
from mer.model import MerModel, is_url, join, save_artifact
from mer.storage import open_store
from mer.train.calibrate import calibration_on_val
from mer.train.dataset import data_fingerprint, ensure_ray, extract_clips, take, window_table
from mer.train.emopia import Clip, emopia_root, load_split
from mer.train.scores import split_metrics
from mer.train.progress import progress_bar, progress_line
from mer.train.renderings import (
    extract_renderings, extract_transpositions, pick_renderings, rendering_table, transposition_table,
)
from mer.train.steps import eval_step, lr_schedule, rank_batches, train_step, weight_average
from mer.train.summary_head import fit_summary_head

CHECKPOINT_FILE = "state.pt"
NUM_CHECKPOINTS_KEPT = 3  # the best by val_4q; Ray Train also always keeps the latest (for resuming)
METRIC_KEYS = ("train_loss", "val_loss", "val_4q", "val_arousal", "val_valence")
MIN_SUBSET_VAL_CLIPS = 4  # a subset run still selects its checkpoint on at least this many val clips


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_model` produced.

    ``artifact``: the model artifact folder (path or URL); ``version``: its id; ``val_metrics``: the selected
    checkpoint's ``{"4q", "arousal", "valence", "loss"}`` on val; ``history``: one dict per epoch (``epoch``,
    ``train_loss``, ``val_loss``, ``val_4q``, ``val_arousal``, ``val_valence``, ``seconds``), including epochs
    run before a resume; ``best_epoch``; ``run``: the Ray Train run folder; ``data_fingerprint``; ``failures``:
    ``(clip, reason)`` skipped at extraction; ``timings``: seconds spent extracting and training.
    """

    artifact: str
    version: str
    val_metrics: dict[str, float]
    history: list[dict[str, float]]
    best_epoch: int
    run: str
    data_fingerprint: str
    failures: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# The loop on each Ray Train worker
# ----------------------------------------------------------------------------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _gather(value: Any, world_size: int) -> list[Any]:
    """Every rank's ``value`` (a picklable object), on every rank."""
    if world_size == 1 or not _distributed():
        return [value]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, value)
    return out


def _mean_across_ranks(total: float, count: int, world_size: int) -> float:
    pairs = _gather((total, count), world_size)
    count_all = sum(c for _, c in pairs)
    return sum(t for t, _ in pairs) / max(count_all, 1)


def evaluate_split(
    model: torch.nn.Module,
    table: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """Per-clip metrics of a labelled window table, the work split over the ranks (rank r takes windows
    r, r + world_size, ...) and the probabilities gathered, so every rank returns the same
    ``{"4q", "arousal", "valence", "loss"}`` (loss: mean CE of the windows' quadrant probabilities)."""
    mine = np.arange(rank, len(table["quadrant"]), world_size)
    mine = mine[np.argsort(table["token_lengths"][mine], kind="stable")]  # similar lengths together: less padding
    chunks = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    probs = [eval_step(model, take(table, chunk), device=device) for chunk in chunks]
    local = (mine, np.concatenate(probs) if probs else np.zeros((0, 4), dtype=np.float32))
    gathered = _gather(local, world_size)
    order = np.concatenate([g[0] for g in gathered])
    quadrant_probs = np.empty((len(table["quadrant"]), 4), dtype=np.float32)
    quadrant_probs[order] = np.concatenate([g[1] for g in gathered])
    metrics = split_metrics(names=table["name"], quadrant_probs=quadrant_probs, quadrants=table["quadrant"])
    true_probs = quadrant_probs[np.arange(len(quadrant_probs)), table["quadrant"]]
    metrics["loss"] = float(-np.log(np.clip(true_probs, 1e-7, 1.0)).mean())
    return metrics


def training_batch(table: Mapping[str, np.ndarray], rows: np.ndarray, *, training: TrainConfig, epoch: int,
                   step: int, rank: int, max_tokens: int = 0) -> dict[str, np.ndarray]:
    """Rows ``rows`` of the training table as one augmented batch: each window's rendering drawn first (a
    SoundFont per window and step), then its key moved (the chroma it rolls is the drawn rendering's; with
    ``transpose_audio="rendered"`` its chroma and MFCCs come from the rendering of the moved MIDI), then, with
    ``training.token_crop``, its tokens cropped to ``max_tokens`` (the model's ``symbolic_max_tokens``) from a
    random offset. The draws depend only on (seed, epoch, step, rank), so a resumed epoch replays them."""
    batch = take(table, rows)
    if training.extra_soundfonts:
        batch = pick_renderings(batch, rng=np.random.default_rng([training.seed, epoch, step, rank, 1]))
    if training.transpose_semitones:
        batch = transpose_batch(batch, limit=training.transpose_semitones,
                                rng=np.random.default_rng([training.seed, epoch, step, rank]))
    if training.token_crop and max_tokens:
        batch = crop_batch(batch, span=max_tokens, rng=np.random.default_rng([training.seed, epoch, step, rank, 2]))
    return batch


def _load_checkpoint(checkpoint: ray.train.Checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The training function every Ray Train worker runs (see the module docstring).

    ``loop_config``: ``config`` (MerConfig.to_dict()), ``train``/``val`` (object refs of window tables, see
    :func:`mer.train.dataset.window_table`), ``data_fingerprint``, ``progress`` (bool: rank 0 prints step and epoch
    lines). A checkpoint of another configuration or data set is refused (:func:`run_identity`).
    """
    config = MerConfig.from_dict(loop_config["config"])
    training = config.training
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    progress = bool(loop_config.get("progress", True)) and rank == 0
    train_table: dict[str, np.ndarray] = ray.get(loop_config["train"])
    val_table: dict[str, np.ndarray] = ray.get(loop_config["val"])

    _seed_everything(training.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = MerModel(config)
    start_epoch, history, state = 0, [], None
    identity = run_identity(config, loop_config["data_fingerprint"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resuming: Ray Train hands back the run's latest checkpoint
        state = _load_checkpoint(checkpoint)
        if state.get("identity") != identity:
            raise ConfigError(
                "this run's checkpoints come from a different model, feature configuration, seed or data set; "
                "resume only with the same settings (epochs may grow), or pass another run name or --no-resume"
            )
        # With weight averaging, "model" holds the average (what was evaluated) and "trained_model" the weights
        # training goes on from.
        model.load_state_dict(state.get("trained_model", state["model"]))
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
        progress_line(f"[train] resuming after epoch {start_epoch} of {training.epochs}", enabled=progress)
    model = ray.train.torch.prepare_model(model)  # to the worker's device, DDP when world_size > 1
    network = getattr(model, "module", model)  # without the DDP wrapper: what is averaged and saved
    averaged = weight_average(network, training.weight_average_decay)  # None: off
    if averaged is not None and state is not None:
        averaged.load_state_dict(state["averaged"])
    evaluated = averaged.module if averaged is not None else model  # what val scores and the checkpoint keeps
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    # Every epoch has the same number of steps (the batches' sizes depend on the window count only).
    steps_per_epoch = len(rank_batches(train_table["token_lengths"], training.batch_size, seed=training.seed,
                                       epoch=0, rank=rank, world_size=world_size))
    schedule = lr_schedule(optimizer, training, steps_per_epoch=steps_per_epoch)
    if state is not None and "schedule" in state:  # the optimizer first: it holds the rate, the schedule its place
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    elif state is not None:  # a checkpoint from before the schedule was saved: replay the schedule to its place
        schedule.advance(start_epoch * steps_per_epoch)
        rates = [group["lr"] for group in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate

    per_worker_batch = max(1, training.batch_size // world_size)  # batch_size is the global batch
    for epoch in range(start_epoch, training.epochs):
        started = time.monotonic()
        # Dropout draws depend only on (seed, epoch, rank): a resumed epoch replays exactly.
        torch.manual_seed(training.seed * 100_003 + epoch * 101 + rank)
        chunks = rank_batches(train_table["token_lengths"], training.batch_size, seed=training.seed, epoch=epoch,
                              rank=rank, world_size=world_size)
        total, count = 0.0, 0
        bar = progress_bar(total=len(chunks), desc=f"[train] epoch {epoch + 1}/{training.epochs}", unit="step",
                           enabled=progress)
        for step, chunk in enumerate(chunks, start=1):
            batch = training_batch(train_table, chunk, training=training, epoch=epoch, step=step, rank=rank,
                                   max_tokens=config.model.symbolic_max_tokens)
            loss = train_step(model, optimizer, batch, device=device, va_loss_weight=training.va_loss_weight,
                              label_smoothing=training.label_smoothing)
            schedule.scheduler.step()
            if averaged is not None:
                averaged.update_parameters(network)
            total, count = total + loss * len(chunk), count + len(chunk)
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
            bar.update()
        bar.close()
        train_loss = _mean_across_ranks(total, count, world_size)
        val = evaluate_split(evaluated, val_table, batch_size=per_worker_batch * 2, device=device, rank=rank,
                             world_size=world_size)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_4q": val["4q"],
            "val_arousal": val["arousal"],
            "val_valence": val["valence"],
            "seconds": time.monotonic() - started,
        }
        history.append(row)
        progress_line(f"[train] epoch {epoch + 1}/{training.epochs} train_loss {train_loss:.4f} val_loss "
                      f"{val['loss']:.4f} val 4Q {val['4q']:.3f} A {val['arousal']:.3f} V {val['valence']:.3f} "
                      f"({row['seconds']:.0f} s)", enabled=progress)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:  # one copy of the weights is enough; the other ranks hold the same
                state = {
                    "model": getattr(evaluated, "module", evaluated).state_dict(),
                    **({"trained_model": network.state_dict(),
                        "averaged": averaged.state_dict()} if averaged is not None else {}),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "identity": identity,
                }
                torch.save(state, Path(folder) / CHECKPOINT_FILE)
                (Path(folder) / "config.json").write_text(config.to_json())
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(row, checkpoint=checkpoint)


# ----------------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------------


def select_clips(clips: list[Clip], count: int | None) -> list[Clip]:
    """``count`` clips balanced over the quadrants (round robin, each quadrant in file order), or all."""
    if count is None or count >= len(clips):
        return clips
    by_quadrant = [[c for c in clips if c.quadrant == q] for q in range(4)]
    chosen: list[Clip] = []
    while len(chosen) < count:
        for group in by_quadrant:
            if group and len(chosen) < count:
                chosen.append(group.pop(0))
    return chosen


def subset_count(subset: int, clips: Sequence[Clip], train_clips: Sequence[Clip], *, minimum: int) -> int:
    """How many of a split's ``clips`` a run on ``subset`` of the ``train_clips`` uses: the same proportion, at
    least ``minimum``."""
    return max(minimum, round(subset * len(clips) / len(train_clips)))


def run_identity(config: MerConfig, fingerprint: str) -> str:
    """What must not change for a run to be resumed: the model and feature configuration, the optimisation
    settings and seed, and the data. ``epochs`` (raising it extends a run), ``num_workers`` and ``use_gpu``
    (where it runs) may change. 16 hex digits."""
    settings = config.to_dict()
    settings["training"] = {k: v for k, v in settings["training"].items()
                            if k not in ("epochs", "num_workers", "use_gpu")}
    settings["tagging"] = {}
    return hashlib.sha256((json.dumps(settings, sort_keys=True) + fingerprint).encode()).hexdigest()[:16]


def run_name_for(config: MerConfig, fingerprint: str) -> str:
    """A default run name: the same configuration on the same data resumes the same run
    (:func:`run_identity`)."""
    return f"mer-{run_identity(config, fingerprint)[:12]}"


def _absolute(location: str) -> str:
    return location if is_url(location) else os.path.abspath(location)


def _delete_run(run_url: str, endpoint_url: str | None) -> None:
    open_store(run_url, endpoint_url=endpoint_url).delete_prefix("")


def ray_storage(storage: str, *, endpoint_url: str | None) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for Ray Train's ``RunConfig``: a local folder as is (Ray opens it); an
    ``s3://`` URL as a bare ``bucket/prefix`` path in a pyarrow S3 filesystem at ``endpoint_url`` (None: AWS, in
    the bucket's region).

    Everything else of ours goes through boto3 (:mod:`mer.storage`); Ray Train's checkpoint storage takes a pyarrow
    filesystem — its interface, not ours — so this is the one place mer builds a pyarrow.fs object, from the same
    explicit endpoint (the filesystem object travels to the workers).
    """
    if not storage.startswith("s3://"):
        return storage, None
    if endpoint_url:
        endpoint = urlsplit(endpoint_url if "://" in endpoint_url else f"https://{endpoint_url}")
        filesystem = pafs.S3FileSystem(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
        return storage.removeprefix("s3://"), filesystem
    filesystem, path = pafs.FileSystem.from_uri(storage)  # resolves the bucket's region
    return path, filesystem


def _use_gpu(config: MerConfig) -> bool:
    if config.training.use_gpu is not None:
        return config.training.use_gpu
    return ray.cluster_resources().get("GPU", 0) > 0


def train_model(
    config: MerConfig,
    *,
    emopia: str | os.PathLike | None,
    storage: str,
    cache_dir: str | os.PathLike,
    run_name: str | None = None,
    resume: bool = True,
    subset: int | None = None,
    progress: bool = True,
    endpoint_url: str | None = None,
    split: tuple[Sequence[Clip], Sequence[Clip]] | None = None,
    set_latest: bool = True,
) -> TrainResult:
    """Train the model on EMOPIA (train split, selected on val; or train + val, ``TrainConfig.fit_on``) and write
    the model artifact.

    Args:
        config: the whole configuration (features, model, training).
        emopia: the EMOPIA folder (None: ``$MER_EMOPIA`` or ``../shared/emopia``).
        storage: local folder or ``s3://bucket/prefix``: runs go to ``<storage>/<run name>``, the artifact to
            ``<storage>/models/<version>``.
        cache_dir: the feature cache folder (must be the same path on every node of a multi-node cluster).
        run_name: the run's folder name; default from the config and the data (:func:`run_name_for`).
        resume: continue the run's latest checkpoint if it exists; False deletes the run folder and starts over.
        subset: train on this many train clips (quadrant-balanced) and a proportional number of val clips
            (at least 4) — for tests and timing.
        progress: print extraction and training progress.
        endpoint_url: S3-compatible endpoint for an ``s3://`` storage and feature cache (None: AWS).
        split: the (train, val) clips to use instead of EMOPIA's official train and val splits (a fold of a
            cross-validation, :mod:`mer.evaluation.crossval`); no song may be on both sides.
        set_latest: point ``<storage>/models/LATEST`` (what tagging and evaluation load by default) at the new
            artifact; False for a model that must not be served, such as a cross-validation fold's.

    Ray is initialised here if it is not yet (``ray.init()``: the cluster in ``RAY_ADDRESS``, else a local one).
    """
    if split is not None:  # before Ray starts: a split that leaks songs is refused at once
        shared = sorted({c.song for c in split[0]} & {c.song for c in split[1]})
        if shared:
            raise ValueError(f"songs on both sides of the train/val split: {shared[:5]}")
    ensure_ray()
    root = emopia_root(emopia)
    if split is None:
        train_clips, val_clips = load_split(root, "train"), load_split(root, "val")
    else:
        train_clips, val_clips = list(split[0]), list(split[1])
    if subset is not None:
        val_count = subset_count(subset, val_clips, train_clips, minimum=MIN_SUBSET_VAL_CLIPS)
        train_clips, val_clips = select_clips(train_clips, subset), select_clips(val_clips, val_count)

    # 1. Features, once, in parallel.
    cache = FeatureCache(_absolute(str(cache_dir)), endpoint_url=endpoint_url)
    extraction = extract_clips([*train_clips, *val_clips], config=config.features, cache=cache, progress=progress)
    train_names = {c.name for c in train_clips}
    train_items = [c for c in extraction.clips if c.clip.name in train_names]
    val_items = [c for c in extraction.clips if c.clip.name not in train_names]
    if not train_items or not val_items:
        raise MerError(f"no usable {'train' if not train_items else 'val'} clips after extraction; "
                       f"failures: {extraction.failures[:5]}")
    fingerprint = data_fingerprint({"train": train_items, "val": val_items})
    refit = config.training.fit_on == "train+val"
    if refit and config.model.summary_head and None in (config.training.summary_c, config.training.summary_blend):
        raise ConfigError("fit_on='train+val' trains on val: the summary head's C and blend cannot be chosen on it; "
                          "give summary_c and summary_blend")
    fit_items = [*train_items, *val_items] if refit else train_items  # what the weights are fitted on
    if progress:
        print(f"[data] train {len(train_items)} clips / {sum(c.features.num_windows for c in train_items)} windows, "
              f"val {len(val_items)} clips / {sum(c.features.num_windows for c in val_items)} windows, "
              f"{len(extraction.failures)} skipped, features {extraction.seconds:.0f} s "
              f"({extraction.cached} from the cache); data fingerprint {fingerprint}"
              + ("; fitted on train + val (val scores below are in-sample)" if refit else ""), flush=True)

    # 2. The tables go into the object store once; every worker reads them from there.
    train_table, val_table = window_table(fit_items), window_table(val_items)
    if config.training.extra_soundfonts:  # the training windows' other renderings (mer.train.renderings)
        train_table = rendering_table(train_table, extract_renderings(
            [item.clip for item in fit_items], config=config, cache=cache, progress=progress))
    if config.training.transpose_semitones and config.training.transpose_audio == "rendered":
        train_table = transposition_table(train_table, extract_transpositions(
            [item.clip for item in fit_items], config=config, cache=cache, progress=progress),
            limit=config.training.transpose_semitones)
    train_ref, val_ref = ray.put(train_table), ray.put(val_table)

    # 3. Ray Train.
    storage = _absolute(storage)
    run_name = run_name or run_name_for(config, fingerprint)
    run_url = join(storage, run_name)
    if not resume:
        _delete_run(run_url, endpoint_url)
    storage_path, storage_fs = ray_storage(storage, endpoint_url=endpoint_url)
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "train": train_ref, "val": val_ref,
                           "data_fingerprint": fingerprint, "progress": progress},
        scaling_config=ray.train.ScalingConfig(num_workers=config.training.num_workers, use_gpu=_use_gpu(config)),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=NUM_CHECKPOINTS_KEPT,
                checkpoint_score_attribute="val_4q",
                checkpoint_score_order="max",
            ),
        ),
    )
    if progress:
        print(f"[train] run {run_url}: {config.training.num_workers} worker(s), {config.training.epochs} epochs",
              flush=True)
    started = time.monotonic()
    try:
        result = trainer.fit()
    except ray.train.WorkerGroupError as error:
        # A refusal of ours on a worker (e.g. an incompatible checkpoint) surfaces as itself, not as Ray's wrapper.
        ours = [e for e in error.worker_failures.values() if isinstance(e, MerError)]
        if ours:
            raise ours[0] from error
        raise
    training_seconds = time.monotonic() - started

    # 4. The best checkpoint (or the last: TrainConfig.checkpoint) becomes the artifact; the latest one carries the
    # whole history.
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if c is not None and "val_4q" in m]
    if not kept or result.checkpoint is None:
        raise MerError(f"training run {run_url} produced no checkpoint")
    latest_state = _load_checkpoint(result.checkpoint)
    history = list(latest_state["history"])
    if config.training.checkpoint == "last":
        best_state, best_metrics = latest_state, history[-1]
    else:
        best, best_metrics = max(kept, key=lambda cm: (cm[1]["val_4q"], -cm[1]["val_loss"], -cm[1]["epoch"]))
        best_state = _load_checkpoint(best)
    val_metrics = {"4q": best_metrics["val_4q"], "arousal": best_metrics["val_arousal"],
                   "valence": best_metrics["val_valence"], "loss": best_metrics["val_loss"]}
    # The probabilities the catalog stores are calibrated: a temperature fitted on val (it changes no label).
    best_model = MerModel(config)
    best_model.load_state_dict(best_state["model"])
    summary_head = None
    if config.model.summary_head:  # the regression on the training windows, its blend weight chosen on val
        summary_head = fit_summary_head(best_model, train_table, val_table, c=config.training.summary_c,
                                        blend=config.training.summary_blend, fitted_on=config.training.fit_on)
        val_metrics = {**summary_head["val_metrics"], "network": val_metrics}
        if progress:
            print(f"[train] summary head: C {summary_head['c']}, blend {summary_head['blend']}, val 4Q "
                  f"{val_metrics['network']['4q']:.3f} -> {val_metrics['4q']:.3f}", flush=True)
    calibration = calibration_on_val(best_model, val_table, temperature=config.training.temperature)
    if progress:
        print(f"[train] calibration on val: temperature {calibration['temperature']:.3f}, NLL "
              f"{calibration['val_nll_before']:.4f} -> {calibration['val_nll_after']:.4f}", flush=True)
    artifact = save_artifact(
        best_model.state_dict(),
        config=config,
        storage=storage,
        endpoint_url=endpoint_url,
        set_latest=set_latest,
        meta={
            "data_fingerprint": fingerprint,
            "val_metrics": val_metrics,
            "seed": config.training.seed,
            "run": run_url,
            "best_epoch": int(best_metrics["epoch"]),
            "epochs": config.training.epochs,
            "train_clips": len(train_items),
            "val_clips": len(val_items),
            "fitted_on": config.training.fit_on,  # "train+val": val_metrics are in-sample
            "fitted_clips": len(fit_items),
            "skipped_clips": [name for name, _ in extraction.failures],
            "history": history,
            "calibration": calibration,
            **({"summary_head": summary_head} if summary_head is not None else {}),
        },
    )
    version = artifact.rstrip("/").rsplit("/", 1)[-1]
    if progress:
        print(f"[train] model artifact {artifact}", flush=True)
    return TrainResult(
        artifact=artifact,
        version=version,
        val_metrics=val_metrics,
        history=history,
        best_epoch=int(best_metrics["epoch"]),
        run=run_url,
        data_fingerprint=fingerprint,
        failures=list(extraction.failures),
        timings={"features": extraction.seconds, "training": training_seconds},
    )


def summary_table(result: TrainResult) -> str:
    """The run's epochs as a text table, the selected (best-val) epoch marked with ``*``."""
    lines = [f"{'epoch':>5}  {'train_loss':>10}  {'val_loss':>8}  {'val_4q':>6}  {'val_A':>6}  {'val_V':>6}  "
             f"{'seconds':>7}"]
    for row in result.history:
        mark = "  *best" if int(row["epoch"]) == result.best_epoch else ""
        lines.append(f"{int(row['epoch']):>5}  {row['train_loss']:>10.4f}  {row['val_loss']:>8.4f}  "
                     f"{row['val_4q']:>6.3f}  {row['val_arousal']:>6.3f}  {row['val_valence']:>6.3f}  "
                     f"{row['seconds']:>7.1f}{mark}")
    lines.append(f"model {result.version} -> {result.artifact}")
    metrics, timings = result.val_metrics, result.timings
    lines.append(f"val 4Q {metrics['4q']:.3f}  arousal {metrics['arousal']:.3f}  valence {metrics['valence']:.3f}  "
                 f"(epoch {result.best_epoch}); features {timings.get('features', 0):.0f} s, "
                 f"training {timings.get('training', 0):.0f} s"
                 + (f"; {len(result.failures)} clip(s) skipped" if result.failures else ""))
    return "\n".join(lines)
