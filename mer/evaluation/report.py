"""An evaluation's files: one model's ``evaluation.md``/``.json`` and pictures, and the Table I + III
``report.md``/``report.json`` with the confusion matrices and attention pictures of every method.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mer.evaluation.paper import (CAVEAT_AUDIO, METHODS, METRIC_LABELS, PAPER_FULL, PAPER_ONLY, caveats,
                                  methods_named)
from mer.evaluation.plots import plot_attention, plot_confusion
from mer.evaluation.results import EvalResult, TablesReport
from mer.train import METRICS

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


def _cell(summary: dict[str, float]) -> str:
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def write_tables(report: TablesReport, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and the PNGs of a :class:`TablesReport` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for key, runs in report.results.items():
        (method,) = methods_named([key])
        label = method.label
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
    for key, what in (("default", "default configuration (best on val)"), ("full", "the paper's full model")):
        if key not in report.results:
            continue
        s = report.summary(key)
        lines += [
            f"**Headline ({what}, test split, mean ± std over seeds "
            f"{[r.seed for r in report.results[key]]}):** "
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
              "| Method | Seed | Model | Val 4Q | Test 4Q | Test arousal | Test valence |",
              "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for r in report.results.get(method.key, []):
            val = (r.extra.get("val_metrics") or {}).get("4q")
            model = r.version or f"C = {r.extra.get('c')}"
            m = r.metrics
            if r.extra.get("fitted_on") == "train+val":  # trained on val: its val score says nothing
                val = None
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
              *([("- Rows renamed when pooled (a configuration's runs moved to the row it is now): "
                  + ", ".join(f"`{a}` → `{b}`" for a, b in setup["renamed"].items()) + ".")]
                if setup.get("renamed") else []),
              f"- Training: `{json.dumps(setup['training'], sort_keys=True)}`",
              "- The rows of the default configuration (keys `default...`) use `mer.config.preset('default')` (its "
              "model and training settings, with the row's own changes) on these features; every other deep row the "
              "settings above.",
              f"- Features: window {setup['features']['window_seconds']} s, hop {setup['features']['hop_seconds']} s, "
              f"max {setup['features']['max_tokens']} tokens, {setup['features']['sample_rate']} Hz, "
              f"{setup['features']['n_mfcc']} MFCCs from {setup['features']['n_mels']} mel bands.",
              "", "## Caveats", ""]
    lines += [f"- {note}" for note in caveats(setup)]
    lines += ["", "EMOPIA: Hung et al., ISMIR 2021, CC BY-NC-SA 4.0.", ""]
    return "\n".join(lines)
