"""Pictures of an evaluation: the confusion matrix and the attention weights per branch and quadrant.

matplotlib with the non-interactive Agg backend (no display on a server), one figure per file, closed after
saving so a long table run does not leak figures.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files only, never try to open a window

import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
import numpy as np  # noqa: E402

from mer.config import BRANCHES, QUADRANTS  # noqa: E402
from mer.model import reliability  # noqa: E402

QUADRANT_NAMES: tuple[str, ...] = ("happy", "angry", "sad", "relaxed")
"""Q1..Q4 in words (EMOPIA / paper, Sec. IV-A): high/low arousal × positive/negative valence."""

BRANCH_NAMES: dict[str, str] = {"symbolic": "symbolic\n(tokens)", "harmony": "harmony\n(chroma)",
                                "tone": "tone colour\n(MFCC)"}


def quadrant_labels() -> list[str]:
    """``["Q1 happy", "Q2 angry", "Q3 sad", "Q4 relaxed"]``."""
    return [f"{q} {name}" for q, name in zip(QUADRANTS, QUADRANT_NAMES)]


def plot_confusion(confusion: np.ndarray, path: str | os.PathLike, *, title: str = "") -> Path:
    """Save the 4Q confusion matrix as a PNG with two panels: counts, and rows normalised to 1.

    ``confusion`` is (4, 4) counts, rows = true quadrant, columns = predicted quadrant. A row with no clips is
    drawn as zeros in the normalised panel. Returns the path written.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.shape != (4, 4):
        raise ValueError(f"confusion must be (4, 4), got {confusion.shape}")
    totals = confusion.sum(axis=1, keepdims=True)  # (4, 1) clips per true quadrant
    normalised = np.divide(confusion, totals, out=np.zeros((4, 4)), where=totals > 0)
    labels = quadrant_labels()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
    panels = ((confusion, "counts", "d", confusion.max() or 1), (normalised, "row-normalised", ".2f", 1.0))
    for ax, (values, name, fmt, vmax) in zip(axes, panels):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        ax.set_title(name)
        ax.set_xticks(range(4), labels, rotation=30, ha="right")
        ax.set_yticks(range(4), labels)
        ax.set_xlabel("predicted quadrant")
        ax.set_ylabel("true quadrant")
        for i in range(4):
            for j in range(4):
                # Dark cells get white text so every number stays readable.
                colour = "white" if values[i, j] > 0.6 * vmax else "black"
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", color=colour, fontsize=11)
        fig.colorbar(image, ax=ax, shrink=0.8)
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    fig.suptitle(f"{title} — 4Q accuracy {accuracy:.3f} over {confusion.sum()} predictions".strip(" —"))
    return _save(fig, path)


def plot_attention(weights: np.ndarray, path: str | os.PathLike, *, counts: np.ndarray | None = None,
                   branches: tuple[str, ...] = BRANCHES, title: str = "") -> Path:
    """Save a heatmap of the mean attention weight each branch receives, per true quadrant, as a PNG.

    ``weights`` is (4, 3): rows = true quadrant Q1..Q4, columns = branches in ``BRANCHES`` order; each entry is
    the mean over clips, heads and query rows of the attention column of that branch (a row sums to 1 over the
    branches built). NaN (a quadrant with no clips) is drawn blank. ``counts`` (4,) labels rows with their clip
    counts; ``branches`` are the branches the model built (the others are marked "not built").
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (4, len(BRANCHES)):
        raise ValueError(f"weights must be (4, {len(BRANCHES)}), got {weights.shape}")
    rows = quadrant_labels()
    if counts is not None:
        rows = [f"{label} (n={int(n)})" for label, n in zip(rows, counts)]
    columns = [BRANCH_NAMES[b] + ("" if b in branches else "\n[not built]") for b in BRANCHES]

    fig, ax = plt.subplots(figsize=(6.8, 4.6), constrained_layout=True)
    image = ax.imshow(np.ma.masked_invalid(weights), cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(BRANCHES)), columns)
    ax.set_yticks(range(4), rows)
    ax.set_xlabel("branch (attention key)")
    ax.set_ylabel("true quadrant")
    for i in range(4):
        for j in range(len(BRANCHES)):
            if np.isfinite(weights[i, j]):
                colour = "black" if weights[i, j] > 0.6 else "white"
                ax.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center", color=colour, fontsize=12)
            else:
                ax.text(j, i, "–", ha="center", va="center", color="grey", fontsize=12)
    fig.colorbar(image, ax=ax, shrink=0.85, label="mean attention weight")
    ax.set_title(title or "mean attention weight received per branch")
    return _save(fig, path)


def plot_reliability(probs: np.ndarray, true: np.ndarray, path: str | os.PathLike, *, title: str) -> Path:
    """A reliability diagram: accuracy against confidence per bin of the top probability, with the counts."""
    confidence, accuracy, counts = reliability(probs, true)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    edges = np.linspace(0, 1, len(counts) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    ax.bar(centres, np.nan_to_num(accuracy), width=1 / len(counts), edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    for x, n in zip(centres, counts):
        if n:
            ax.text(x, 0.02, str(int(n)), ha="center", fontsize=7)
    ax.set_xlabel("confidence (top quadrant probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
