"""Evaluation on the EMOPIA test split, and the reproduction of the paper's Table I and Table III in one report.

Protocol (paper, Sec. IV): every model is selected on the validation split only (the best-val checkpoint of a
training run; the C of a linear baseline) and measured on the test split once per seed. Metrics are per clip —
a clip's quadrant probabilities are the mean over its windows — and arousal and valence are binary accuracies
derived from the predicted quadrant (Q1/Q2 high arousal, Q1/Q4 positive valence), as the paper does.

- :func:`evaluate_artifact`: one trained model on a list of clips → :class:`EvalResult` (predictions, accuracies,
  confusion matrix, attention received per branch per true quadrant).
- :func:`run_tables`: the full model, the three single-branch models, the model without self-attention, and the
  Symbolic-LR / Audio-LR baselines, each over several seeds → Markdown + JSON report with the paper's numbers.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow.fs as pafs

from mer.artifact import MODELS_DIR, Artifact, filesystem, join, load_artifact
from mer.baselines import audio_features, fit_linear_baseline, symbolic_features
from mer.cache import FeatureCache
from mer.config import BRANCHES, QUADRANTS, MerConfig
from mer.dataset import ClipFeatures, Extraction, data_fingerprint, extract_clips, take, window_table
from mer.emopia import Clip, emopia_root, load_split, quadrant_arousal_valence
from mer.midi import piano_notes, read_midi
from mer.plots import plot_attention, plot_confusion
from mer.predict import pick_device, predict_windows
from mer.training import run_identity, select_clips, train_model

METRICS: tuple[str, ...] = ("4q", "arousal", "valence")


# ---------------------------------------------------------------------------------------------------------------
# Metrics of one set of predictions
# ---------------------------------------------------------------------------------------------------------------

def quadrant_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Per-clip accuracies ``{"4q", "arousal", "valence"}`` of predicted quadrants ``pred`` (N,) against ``true``
    (N,), both 0..3. Arousal and valence are binary and derived from the quadrants (paper, Sec. IV-A)."""
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if true.shape != pred.shape or true.ndim != 1 or len(true) == 0:
        raise ValueError(f"true and pred must be equal-length non-empty 1-D arrays, got {true.shape}, {pred.shape}")
    av_true = np.array([quadrant_arousal_valence(q) for q in true])  # (N, 2) arousal, valence
    av_pred = np.array([quadrant_arousal_valence(q) for q in pred])
    return {
        "4q": float(np.mean(true == pred)),
        "arousal": float(np.mean(av_true[:, 0] == av_pred[:, 0])),
        "valence": float(np.mean(av_true[:, 1] == av_pred[:, 1])),
    }


def confusion_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(4, 4) int64 counts: row = true quadrant, column = predicted quadrant; sums to the number of clips."""
    matrix = np.zeros((4, 4), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return matrix


def attention_received(attention: np.ndarray) -> np.ndarray:
    """Mean attention weight each branch receives, per window: (N, 3) from attention matrices (N, heads, 3, 3).

    For each window: the mean over heads and over the query rows of present, built branches (rows that sum to 1;
    the others are all zero) of each key column. Each output row sums to 1 over the branches (0 for a window with
    no attention, e.g. a model without self-attention).
    """
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim != 4 or attention.shape[2:] != (len(BRANCHES), len(BRANCHES)):
        raise ValueError(f"attention must be (N, heads, 3, 3), got {attention.shape}")
    rows_used = attention.sum(axis=-1) > 0.5  # (N, heads, 3) query rows that are real softmax rows
    column_sums = (attention * rows_used[..., None]).sum(axis=2)  # (N, heads, 3) summed over used query rows
    n_rows = rows_used.sum(axis=2)  # (N, heads)
    per_head = np.divide(column_sums, n_rows[..., None], out=np.zeros_like(column_sums), where=n_rows[..., None] > 0)
    return per_head.mean(axis=1)  # (N, 3)


RUN_FIELDS = frozenset({"method", "seed", "version", "branches", "clips", "metrics", "confusion",
                        "attention_by_quadrant", "predictions"})
"""The keys :meth:`EvalResult.to_dict` writes itself; any other key of a written run is :attr:`EvalResult.extra`."""


@dataclass
class EvalResult:
    """Per-clip predictions of one model (or baseline) on one list of clips, and what follows from them.

    ``probs`` (N, 4) quadrant probabilities (mean over a clip's windows); ``attention`` (N, 3) mean attention
    received per branch (:func:`attention_received`, averaged over the clip's windows), or None for a model
    without self-attention or a baseline.
    """

    method: str
    names: list[str]
    true: np.ndarray
    probs: np.ndarray
    attention: np.ndarray | None = None
    branches: tuple[str, ...] = BRANCHES
    seed: int | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pred(self) -> np.ndarray:
        """Predicted quadrant per clip (N,), argmax of ``probs``."""
        return np.asarray(self.probs).argmax(axis=1)

    @property
    def metrics(self) -> dict[str, float]:
        return quadrant_metrics(self.true, self.pred)

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.true, self.pred)

    @property
    def counts(self) -> np.ndarray:
        """Clips per true quadrant (4,)."""
        return np.bincount(np.asarray(self.true, dtype=np.int64), minlength=4)

    @property
    def attention_by_quadrant(self) -> np.ndarray | None:
        """(4, 3) mean attention received per branch, per TRUE quadrant (NaN for a quadrant with no clips)."""
        if self.attention is None:
            return None
        return attention_by_quadrant(self.true, self.attention)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary and per-clip predictions: the :data:`RUN_FIELDS`, then :attr:`extra`."""
        by_quadrant = self.attention_by_quadrant
        return {
            "method": self.method,
            "seed": self.seed,
            "version": self.version,
            "branches": list(self.branches),
            "clips": len(self.names),
            "metrics": self.metrics,
            "confusion": self.confusion.tolist(),
            "attention_by_quadrant": None if by_quadrant is None else _nan_to_none(by_quadrant.tolist()),
            "predictions": [
                {"name": n, "true": QUADRANTS[int(t)], "pred": QUADRANTS[int(p)],
                 "probs": [round(float(x), 5) for x in pr],
                 **({} if self.attention is None else {"attention": [round(float(x), 5) for x in self.attention[i]]})}
                for i, (n, t, p, pr) in enumerate(zip(self.names, self.true, self.pred, self.probs))
            ],
            **self.extra,
        }

    @classmethod
    def from_dict(cls, run: dict[str, Any]) -> "EvalResult":
        """The inverse of :meth:`to_dict` (a run of a written report), up to the 5-decimal rounding of ``probs``.

        Reports written before per-clip attention was recorded carry only ``attention_by_quadrant``; then each
        clip gets its true quadrant's mean, which leaves :attr:`attention_by_quadrant` (all a report uses) exact.
        """
        predictions = run["predictions"]
        true = np.array([QUADRANTS.index(p["true"]) for p in predictions], dtype=np.int64)
        attention = None
        if predictions and "attention" in predictions[0]:
            attention = np.array([p["attention"] for p in predictions], dtype=np.float64)
        elif run.get("attention_by_quadrant") is not None:  # None (a quadrant without clips) reads as NaN
            attention = np.array(run["attention_by_quadrant"], dtype=np.float64)[true]
        return cls(method=run["method"], names=[p["name"] for p in predictions], true=true,
                   probs=np.array([p["probs"] for p in predictions], dtype=np.float64), attention=attention,
                   branches=tuple(run["branches"]), seed=run["seed"], version=run["version"],
                   extra={k: v for k, v in run.items() if k not in RUN_FIELDS})


def attention_by_quadrant(true: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """(4, 3): mean of per-clip attention received (N, 3) over the clips of each true quadrant; NaN when none."""
    true = np.asarray(true, dtype=np.int64)
    out = np.full((4, attention.shape[1]), np.nan)
    for q in range(4):
        if np.any(true == q):
            out[q] = attention[true == q].mean(axis=0)
    return out


def _nan_to_none(values: Any) -> Any:
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return None if isinstance(values, float) and math.isnan(values) else values


# ---------------------------------------------------------------------------------------------------------------
# One model on a list of clips
# ---------------------------------------------------------------------------------------------------------------

def ensure_ray() -> None:
    """Start a local Ray (or join ``RAY_ADDRESS``) unless one is running: feature extraction uses Ray tasks."""
    import ray

    if not ray.is_initialized():
        ray.init()


def evaluate_features(
    artifact: Artifact,
    items: Sequence[ClipFeatures],
    *,
    device: str | None = None,
    batch_size: int = 16,
    method: str = "model",
    skipped: Sequence[tuple[str, str]] = (),
) -> EvalResult:
    """Evaluate a loaded model on clips whose features are already extracted (with the model's feature config).

    Windows go through :func:`mer.predict.predict_windows` ``batch_size`` at a time; a clip's quadrant
    probabilities are the mean over its windows; its attention received per branch is the mean over its
    windows of :func:`attention_received` (per window first, because a window without notes has no symbolic
    query row). ``skipped`` (clip, reason) pairs of clips that failed extraction are recorded in ``extra``.
    """
    if not items:
        raise ValueError("no clips to evaluate (every clip failed feature extraction, or none were given)")
    device = pick_device(device)
    model = artifact.model.to(device).eval()
    table = window_table(list(items))  # (N windows, ...) stacked
    n_windows = len(table["quadrant"])
    probs = np.zeros((n_windows, 4))
    received = np.zeros((n_windows, len(BRANCHES)))
    for start in range(0, n_windows, batch_size):
        rows = np.arange(start, min(start + batch_size, n_windows))
        out = predict_windows(model, take(table, rows), device=device)
        probs[rows] = out["quadrant_probs"]
        received[rows] = attention_received(out["attention"])

    names = [item.clip.name for item in items]
    index_of = {name: i for i, name in enumerate(names)}
    clip_of_window = np.array([index_of[str(n)] for n in table["name"]])  # (N,)
    windows_per_clip = np.bincount(clip_of_window, minlength=len(names))[:, None]  # (C, 1)
    clip_probs = np.zeros((len(names), 4))
    np.add.at(clip_probs, clip_of_window, probs)
    clip_received = np.zeros((len(names), len(BRANCHES)))
    np.add.at(clip_received, clip_of_window, received)
    config = artifact.config
    return EvalResult(
        method=method,
        names=names,
        true=np.array([item.clip.quadrant for item in items], dtype=np.int64),
        probs=clip_probs / windows_per_clip,
        attention=clip_received / windows_per_clip if config.model.use_attention else None,
        branches=config.model.branches,
        seed=int(artifact.meta.get("seed", config.training.seed)),
        version=artifact.version,
        extra={"windows": int(n_windows), "skipped": [list(s) for s in skipped],
               "val_metrics": artifact.meta.get("val_metrics"), "best_epoch": artifact.meta.get("best_epoch"),
               "artifact": artifact.url},
    )



def evaluate_artifact(
    artifact: Artifact,
    *,
    clips: Sequence[Clip],
    cache: FeatureCache,
    config: MerConfig | None = None,
    device: str | None = None,
    progress: bool = False,
) -> EvalResult:
    """Evaluate a loaded model artifact on EMOPIA clips (normally the test split).

    Features are extracted with the artifact's own feature config (``config`` only overrides the evaluation
    batch size, ``config.tagging.batch_size``), through ``cache`` (Ray tasks; Ray is started if needed); clips
    that fail extraction are skipped and listed in ``result.extra["skipped"]``.

    Returns:
        :class:`EvalResult` with per-clip probabilities (N, 4), 4Q/arousal/valence accuracies, the (4, 4)
        confusion matrix, and the attention received per branch (N, 3) (None without self-attention).
    """
    ensure_ray()
    extraction = extract_clips(list(clips), config=artifact.config.features, cache=cache, progress=progress)
    batch_size = (config or artifact.config).tagging.batch_size
    return evaluate_features(artifact, extraction.clips, device=device, batch_size=max(batch_size, 1),
                             method=method_key(artifact.config), skipped=extraction.failures)


def write_evaluation(result: EvalResult, out: str | os.PathLike, *, title: str | None = None) -> dict[str, Path]:
    """Write one evaluation as ``evaluation.json``, ``evaluation.md``, ``confusion.png`` and (with attention)
    ``attention.png`` in folder ``out``; returns ``{kind: path}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"{result.method} {result.version or ''}".strip()
    paths = {"confusion": plot_confusion(result.confusion, out / "confusion.png", title=title)}
    if result.attention_by_quadrant is not None:
        paths["attention"] = plot_attention(result.attention_by_quadrant, out / "attention.png", counts=result.counts,
                                            branches=result.branches, title=f"{title}: attention received")
    paths["json"] = out / "evaluation.json"
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2))
    m = result.metrics
    lines = [
        f"# Evaluation: {title}", "",
        f"Clips: {len(result.names)} (EMOPIA test split unless stated otherwise); branches: "
        f"{', '.join(result.branches)}; seed {result.seed}.", "",
        "| metric | ours | paper (full model) |", "|---|---|---|",
        *(f"| {METRIC_LABELS[k]} | {m[k]:.3f} | {PAPER_FULL[k]:.3f} |" for k in METRICS), "",
        "Arousal and valence are binary accuracies derived from the predicted quadrant (paper, Sec. IV-A).", "",
        "![confusion matrix](confusion.png)", "",
    ]
    if "attention" in paths:
        lines += ["![attention received per branch and true quadrant](attention.png)", ""]
    if result.extra.get("skipped"):
        lines += [f"Skipped (feature extraction failed): {len(result.extra['skipped'])} clip(s): "
                  + ", ".join(name for name, _ in result.extra["skipped"]), ""]
    lines += [CAVEAT_AUDIO, ""]
    paths["markdown"] = out / "evaluation.md"
    paths["markdown"].write_text("\n".join(lines))
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Table I and Table III
# ---------------------------------------------------------------------------------------------------------------

METRIC_LABELS = {"4q": "4Q", "arousal": "Arousal", "valence": "Valence"}
PAPER_FULL = {"4q": 0.692, "arousal": 0.884, "valence": 0.869}


@dataclass(frozen=True)
class Method:
    """One row of the report: a deep model variant (``branches``, ``use_attention``) or a linear baseline
    (``baseline`` = "symbolic" | "audio"), with the paper's numbers and the table(s) they come from."""

    key: str
    label: str
    tables: str
    paper: dict[str, float]
    branches: tuple[str, ...] = BRANCHES
    use_attention: bool = True
    baseline: str | None = None

    @property
    def deep(self) -> bool:
        return self.baseline is None


def _paper(q: float, a: float, v: float) -> dict[str, float]:
    return {"4q": q, "arousal": a, "valence": v}


METHODS: tuple[Method, ...] = (
    Method("full", "Full model (ours)", "I, III", _paper(0.692, 0.884, 0.869)),
    Method("symbolic", "Symbolic analysis branch", "III", _paper(0.690, 0.833, 0.744), branches=("symbolic",)),
    Method("harmony", "Harmony analysis branch", "III", _paper(0.514, 0.726, 0.685), branches=("harmony",)),
    Method("tone", "Tone color analysis branch", "III", _paper(0.649, 0.871, 0.711), branches=("tone",)),
    Method("no_mhsa", "Without MHSA", "III", _paper(0.639, 0.858, 0.753), use_attention=False),
    Method("symbolic_lr", "Symbolic-LR", "I", _paper(0.581, 0.849, 0.651), baseline="symbolic"),
    Method("audio_lr", "Audio-LR", "I", _paper(0.523, 0.919, 0.558), baseline="audio"),
)
"""The rows we reproduce: Table III (full model and its four ablations) and Table I's two linear baselines."""

PAPER_ONLY: tuple[tuple[str, dict[str, float]], ...] = (
    ("LSTM-Attn + MIDI-like", _paper(0.684, 0.882, 0.833)),
    ("LSTM-Attn + REMI", _paper(0.615, 0.890, 0.746)),
    ("Short-chunk ResNet", _paper(0.677, 0.887, 0.704)),
)
"""Table I rows we do not reproduce (other authors' models), shown for context."""

CAVEAT_AUDIO = (
    "**Caveat — audio.** EMOPIA's recordings are not distributed (the paper downloaded them from YouTube); here "
    "every clip's audio is rendered from its MIDI file with FluidSynth and a General MIDI piano SoundFont "
    "(pretty_midi's bundled TimGM6mb unless configured otherwise). The harmony and tone-colour branches and "
    "Audio-LR therefore see a synthetic piano with the MIDI's exact notes, not a real recording — cleaner in "
    "pitch, poorer in timbre and performance acoustics — so their numbers are not directly comparable to the "
    "paper's."
)


def method_key(config: MerConfig) -> str:
    """The :data:`METHODS` key of a deep model's configuration (``"custom"`` when it is none of them)."""
    for method in METHODS:
        if method.deep and method.branches == config.model.branches \
                and method.use_attention == config.model.use_attention:
            return method.key
    return "custom"


def method_config(base: MerConfig, method: Method, *, seed: int) -> MerConfig:
    """``base`` with the method's branches / attention and the seed."""
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, branches=method.branches, use_attention=method.use_attention),
        training=dataclasses.replace(base.training, seed=seed),
    )


def split_clips(root: Path, *, subset: int | None) -> dict[str, list[Clip]]:
    """EMOPIA's official splits; with ``subset``, the quadrant-balanced train/val clips :func:`train_model` uses
    and a proportional number of test clips (at least 8)."""
    splits = {s: load_split(root, s) for s in ("train", "val", "test")}
    if subset is not None:
        n_train = len(splits["train"])
        counts = {"train": subset,
                  "val": max(4, round(subset * len(splits["val"]) / n_train)),  # as mer.training.train_model
                  "test": max(8, round(subset * len(splits["test"]) / n_train))}
        splits = {s: select_clips(clips, counts[s]) for s, clips in splits.items()}
    return splits


def find_artifact(storage: str, config: MerConfig, fingerprint: str) -> str | None:
    """An artifact in ``<storage>/models/`` trained with ``config`` (same model, features, optimisation, seed
    and epochs; workers and GPU use may differ) on the data of ``fingerprint``, or None. The newest wins."""
    fs, root = filesystem(join(storage, MODELS_DIR))
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return None
    wanted = run_identity(config, fingerprint)
    folders = [info for info in fs.get_file_info(pafs.FileSelector(root)) if info.type == pafs.FileType.Directory]
    for info in sorted(folders, key=lambda i: i.base_name, reverse=True):  # versions sort by creation time
        try:
            with fs.open_input_stream(f"{info.path}/meta.json") as handle:
                meta = json.loads(handle.read())
            with fs.open_input_stream(f"{info.path}/config.json") as handle:
                found = MerConfig.from_json(handle.read().decode())
            if fs.get_file_info(f"{info.path}/model.pt").type != pafs.FileType.File:
                continue
        except (OSError, ValueError, KeyError):  # a half-written or foreign folder is not a match
            continue
        if found.training.epochs == config.training.epochs \
                and run_identity(found, str(meta.get("data_fingerprint"))) == wanted:
            return join(storage, MODELS_DIR, info.base_name)
    return None


def summarise(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std"}`` over seeds; std is the sample standard deviation (ddof=1), 0 for one seed."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


@dataclass
class TablesReport:
    """The outcome of :func:`run_tables`: per method, its per-seed :class:`EvalResult` s; the setup; file paths."""

    results: dict[str, list[EvalResult]]
    setup: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    def summary(self, key: str) -> dict[str, dict[str, float]]:
        """``{metric: {"mean", "std"}}`` of one method over its seeds."""
        return {m: summarise([r.metrics[m] for r in self.results[key]]) for m in METRICS}

    def to_dict(self) -> dict[str, Any]:
        methods = []
        for method in METHODS:
            if method.key not in self.results:
                continue
            runs = self.results[method.key]
            methods.append({
                "key": method.key, "label": method.label, "paper_tables": method.tables,
                "kind": "deep" if method.deep else "linear baseline",
                "branches": list(method.branches), "use_attention": method.use_attention,
                "paper": method.paper, "ours": self.summary(method.key),
                "seeds": [r.seed for r in runs],
                "confusion_total": sum(r.confusion for r in runs).tolist(),
                "runs": [r.to_dict() for r in runs],
            })
        return {
            "title": "Zhao & Yoshii, Tables I and III, on the EMOPIA test split",
            "methods": methods,
            "paper_only": [{"label": label, "paper": numbers} for label, numbers in PAPER_ONLY],
            "setup": self.setup,
            "caveats": caveats(self.setup),
            "files": {k: str(v) for k, v in self.paths.items()},
        }


class _Log:
    """Progress lines ``[tables] ...`` with the elapsed time, flushed at once (visible in ``ray job logs``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.start = enabled, time.monotonic()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[tables {time.monotonic() - self.start:6.0f}s] {message}", file=sys.stdout, flush=True)


def run_tables(
    *,
    emopia: str | os.PathLike | None,
    storage: str,
    cache_dir: str | os.PathLike,
    out: str | os.PathLike,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    subset: int | None = None,
    workers: int | None = None,
    base_config: MerConfig | None = None,
    methods: Sequence[str] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> TablesReport:
    """Reproduce Table I (full model, Symbolic-LR, Audio-LR) and Table III (full model, symbolic / harmony /
    tone-colour branch alone, without MHSA) on the EMOPIA test split, over ``seeds``, and write the report.

    Each deep model is trained with :func:`mer.training.train_model` (best checkpoint by val 4Q accuracy) —
    unless ``storage`` already holds an artifact of the same configuration, seed, epochs and data
    (:func:`find_artifact`), which is reused, so a re-run does not retrain — and evaluated on the test split
    once. The linear baselines choose C on val and are evaluated on test once per seed.

    Args:
        emopia: the EMOPIA folder (None: ``$MER_EMOPIA`` or ``../shared/emopia``).
        storage: runs and model artifacts (local folder or ``s3://``), as for ``train_model``.
        cache_dir: the feature cache folder.
        out: the report folder: ``report.md``, ``report.json``, ``confusion_<method>.png`` (summed over
            seeds), ``attention_full.png``.
        seeds: training seeds (>= 3 for the paper's protocol).
        epochs / workers: override ``base_config.training.epochs`` / ``num_workers``.
        subset: train on this many train clips (and proportional val/test clips): quick runs and tests.
        base_config: the full model's configuration (default :class:`MerConfig`).
        methods: keys of :data:`METHODS` to run (default all).
        device: evaluation device (default CUDA when present).
        progress: print progress lines.

    Returns:
        The :class:`TablesReport` (also written to ``out``).
    """
    log = _Log(progress)
    base = base_config or MerConfig()
    base = dataclasses.replace(base, training=dataclasses.replace(
        base.training,
        epochs=base.training.epochs if epochs is None else epochs,
        num_workers=base.training.num_workers if workers is None else workers,
    ))
    chosen = [m for m in METHODS if methods is None or m.key in methods]
    if methods is not None and len(chosen) != len(set(methods)):
        raise ValueError(f"unknown method(s) {sorted(set(methods) - {m.key for m in METHODS})}; "
                         f"choose from {[m.key for m in METHODS]}")
    if not seeds:
        raise ValueError("run_tables needs at least one seed")
    started = time.monotonic()
    ensure_ray()
    root = emopia_root(emopia)
    cache = FeatureCache(os.path.abspath(cache_dir))
    splits = split_clips(root, subset=subset)
    log(f"EMOPIA {root}: " + ", ".join(f"{s} {len(c)} clips" for s, c in splits.items())
        + f"; methods {[m.key for m in chosen]}; seeds {list(seeds)}; epochs {base.training.epochs}")

    # Features of every split once (the model variants share the feature config); the test split's are the
    # ones every model is scored on.
    log("features: extracting (or reading from the cache) for train, val and test")
    extracted = {s: extract_clips(c, config=base.features, cache=cache, progress=progress)
                 for s, c in splits.items()}
    fingerprint = data_fingerprint({"train": extracted["train"].clips, "val": extracted["val"].clips})
    test_items, test_skipped = extracted["test"].clips, extracted["test"].failures

    results: dict[str, list[EvalResult]] = {}
    deep = [m for m in chosen if m.deep]
    total, done = len(deep) * len(seeds), 0
    for method in deep:
        results[method.key] = []
        for seed in seeds:
            done += 1
            config = method_config(base, method, seed=seed)
            tag = f"({done}/{total}) {method.label}, seed {seed}"
            found = find_artifact(storage, config, fingerprint)
            if found is not None:
                log(f"{tag}: reusing trained model {found}")
                url = found
            else:
                log(f"{tag}: training {config.training.epochs} epoch(s) on {config.training.num_workers} worker(s)")
                trained = train_model(config, emopia=root, storage=storage, cache_dir=cache_dir,
                                run_name=f"tables-{method.key}-seed{seed}-{run_identity(config, fingerprint)[:8]}",
                                subset=subset, progress=progress)
                url = trained.artifact
            artifact = load_artifact(url, device=device)
            result = evaluate_features(artifact, test_items, device=device, method=method.key,
                                       skipped=test_skipped)
            results[method.key].append(result)
            m = result.metrics
            log(f"{tag}: test 4Q {m['4q']:.3f}  arousal {m['arousal']:.3f}  valence {m['valence']:.3f}  "
                f"(val 4Q {(result.extra.get('val_metrics') or {}).get('4q', float('nan')):.3f}, "
                f"model {artifact.version})")

    for method in (m for m in chosen if not m.deep):
        log(f"{method.label}: features, C chosen on val, {len(seeds)} seed(s)")
        results[method.key] = run_baseline(method, extracted, config=base, seeds=seeds)
        m = results[method.key][0].metrics
        log(f"{method.label}: test 4Q {m['4q']:.3f}  arousal {m['arousal']:.3f}  valence {m['valence']:.3f}  "
            f"(C = {results[method.key][0].extra['c']})")

    setup = {
        "emopia": str(root),
        "clips": {s: len(extracted[s].clips) for s in splits},
        "skipped": {s: [list(f) for f in extracted[s].failures] for s in splits},
        "subset": subset,
        "seeds": list(seeds),
        "data_fingerprint": fingerprint,
        "training": {k: v for k, v in dataclasses.asdict(base.training).items() if k != "seed"},  # seeds above
        "features": dataclasses.asdict(base.features),
        "model": dataclasses.asdict(base.model),
        "storage": storage,
        "seconds": round(time.monotonic() - started, 1),
    }
    report = TablesReport(results=results, setup=setup)
    write_tables(report, out)
    log(f"report written to {Path(out) / 'report.md'} ({setup['seconds']:.0f} s)")
    return report


def run_baseline(method: Method, extracted: dict[str, Extraction], *, config: MerConfig,
                 seeds: Sequence[int]) -> list[EvalResult]:
    """Fit a linear baseline on train (C on val) once per seed and score it on test: one :class:`EvalResult`
    per seed. Symbolic-LR reads each clip's MIDI notes; Audio-LR pools the clip's cached chroma/MFCC windows."""
    def design(items: Sequence[ClipFeatures]) -> tuple[np.ndarray, np.ndarray]:
        if method.baseline == "symbolic":
            rows = [symbolic_features(piano_notes(read_midi(i.clip.midi_path.read_bytes(), name=i.clip.name),
                                                  config=config.features), name=i.clip.name) for i in items]
        else:
            rows = [audio_features(i.features, config=config.features) for i in items]
        return np.stack(rows), np.array([i.clip.quadrant for i in items], dtype=np.int64)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (design(extracted[s].clips)
                                                           for s in ("train", "val", "test"))
    results = []
    for seed in seeds:
        baseline = fit_linear_baseline(x_train, y_train, x_val, y_val, seed=seed)
        results.append(EvalResult(
            method=method.key, names=[i.clip.name for i in extracted["test"].clips], true=y_test,
            probs=baseline.predict_proba(x_test), attention=None, branches=(), seed=seed,
            extra={"c": baseline.c, "val_metrics": {"4q": baseline.val_accuracy[baseline.c]},
                   "val_accuracy_by_c": {str(c): a for c, a in baseline.val_accuracy.items()},
                   "features": x_train.shape[1]},
        ))
    return results


def caveats(setup: dict[str, Any]) -> list[str]:
    """The report's caveats, in words, for this run's setup."""
    training, features = setup["training"], setup["features"]
    test_clips = setup["clips"]["test"]
    notes = [
        CAVEAT_AUDIO,
        f"**Training budget.** Each deep model: {training['epochs']} epoch(s), global batch {training['batch_size']}, "
        f"AdamW lr {training['learning_rate']}, weight decay {training['weight_decay']}, "
        f"{training['num_workers']} Ray Train worker(s); the checkpoint with the best val 4Q accuracy is kept. "
        f"Inputs are cut into {features['window_seconds']:g} s windows (hop {features['hop_seconds']:g} s), at most "
        f"{features['max_tokens']} MIDI-like tokens per window; a clip's prediction is the mean of its windows'. "
        "The paper does not state its budget, so ours may be smaller than theirs.",
        f"**Protocol.** EMOPIA's official song-disjoint split; models and C selected on val only; test scored once "
        f"per seed. The test split has {test_clips} clips, so one clip moves an accuracy by "
        f"{100 / max(test_clips, 1):.1f} points: differences of a few points are within noise. ± is the sample "
        "standard deviation over seeds.",
        "**Linear baselines.** The lbfgs logistic regression is convex and deterministic, so its seeds agree "
        "(± 0). Features follow EMOPIA's description in spirit (clip-level note statistics / mean and std of "
        "chroma and MFCCs), not its exact code.",
        "**Data.** We use all EMOPIA MIDI clips of each split; the paper lost about 5% of the clips whose YouTube "
        "recordings were unavailable.",
    ]
    if setup.get("subset") is not None:
        notes.insert(0, f"**Subset run.** Only {setup['subset']} training clips (and proportional val/test clips) "
                        "were used: a smoke test, not a reproduction.")
    skipped = sum(len(v) for v in setup.get("skipped", {}).values())
    if skipped:
        notes.append(f"**Skipped clips.** {skipped} clip(s) failed feature extraction and were left out "
                     "(listed in report.json).")
    return notes


def _cell(summary: dict[str, float]) -> str:
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def write_tables(report: TablesReport, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and the PNGs of a :class:`TablesReport` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for key, runs in report.results.items():
        label = next(m.label for m in METHODS if m.key == key)
        total = sum(r.confusion for r in runs)
        paths[f"confusion_{key}"] = plot_confusion(
            total, out / f"confusion_{key}.png", title=f"{label}, test split, {len(runs)} seed(s) summed")
        with_attention = [r for r in runs if r.attention is not None and len(r.branches) > 1]
        if with_attention:
            weights = np.nanmean([r.attention_by_quadrant for r in with_attention], axis=0)  # (4, 3)
            paths[f"attention_{key}"] = plot_attention(
                weights, out / f"attention_{key}.png", counts=with_attention[0].counts,
                branches=with_attention[0].branches, title=f"{label}: mean attention received (test, "
                                                           f"{len(with_attention)} seed(s))")
    report.paths = {**paths, "markdown": out / "report.md", "json": out / "report.json"}
    report.paths["json"].write_text(json.dumps(report.to_dict(), indent=2))
    report.paths["markdown"].write_text(render_markdown(report))
    return report.paths


def render_markdown(report: TablesReport) -> str:
    """The report as Markdown: headline, the combined Table I + III, per-seed runs, pictures, setup, caveats."""
    setup = report.setup
    lines = ["# Zhao & Yoshii, Tables I and III, on the EMOPIA test split", ""]
    if "full" in report.results:
        s = report.summary("full")
        lines += [
            "**Headline (full model, test split, mean ± std over seeds "
            f"{[r.seed for r in report.results['full']]}):** "
            + ", ".join(f"{METRIC_LABELS[m]} {_cell(s[m])} (paper {PAPER_FULL[m]:.3f}, "
                        f"{s[m]['mean'] - PAPER_FULL[m]:+.3f})" for m in METRICS) + ".", "",
        ]
    lines += [
        "## Table I + Table III",
        "",
        "| Method | Paper table | 4Q ours | 4Q paper | Arousal ours | Arousal paper | Valence ours | Valence paper "
        "| Seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        if method.key not in report.results:
            continue
        s = report.summary(method.key)
        cells = " | ".join(f"{_cell(s[m])} | {method.paper[m]:.3f}" for m in METRICS)
        lines.append(f"| {method.label} | {method.tables} | {cells} | {len(report.results[method.key])} |")
    for label, numbers in PAPER_ONLY:
        cells = " | ".join(f"— | {numbers[m]:.3f}" for m in METRICS)
        lines.append(f"| {label} (paper only, not reproduced) | I | {cells} | — |")
    lines += ["", "Arousal and valence: binary accuracies derived from the predicted quadrant, as in the paper "
              "(Q1/Q2 high arousal, Q1/Q4 positive valence). Per-clip: a clip's probabilities are the mean over its "
              "windows.", "", "## Runs", "",
              "| Method | Seed | Model | Val 4Q | Test 4Q | Test arousal | Test valence |", "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for r in report.results.get(method.key, []):
            val = (r.extra.get("val_metrics") or {}).get("4q")
            model = r.version or f"C = {r.extra.get('c')}"
            m = r.metrics
            lines.append(f"| {method.label} | {r.seed} | {model} | {'' if val is None else f'{val:.3f}'} | "
                         f"{m['4q']:.3f} | {m['arousal']:.3f} | {m['valence']:.3f} |")
    lines += ["", "## Pictures", ""]
    for key, path in report.paths.items():
        if path.suffix == ".png":
            lines += [f"![{key}]({path.name})", ""]
    pooled = (f" (summed over the {len(setup['merged_from'])} pooled reports: "
              + ", ".join(f"`{p}`" for p in setup["merged_from"]) + ")") if setup.get("merged_from") else ""
    lines += ["## Setup", "",
              "- EMOPIA clips used: " + ", ".join(f"{s} {n}" for s, n in setup["clips"].items())
              + f"; data fingerprint {setup['data_fingerprint']}.",
              f"- Seeds {setup['seeds']}; wall time {setup['seconds']:.0f} s{pooled}.",
              f"- Training: `{json.dumps(setup['training'], sort_keys=True)}`",
              f"- Features: window {setup['features']['window_seconds']} s, hop {setup['features']['hop_seconds']} s, "
              f"max {setup['features']['max_tokens']} tokens, {setup['features']['sample_rate']} Hz, "
              f"{setup['features']['n_mfcc']} MFCCs from {setup['features']['n_mels']} mel bands.",
              "", "## Caveats", ""]
    lines += [f"- {note}" for note in caveats(setup)]
    lines += ["", "EMOPIA: Hung et al., ISMIR 2021, CC BY-NC-SA 4.0.", ""]
    return "\n".join(lines)
