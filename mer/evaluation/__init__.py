"""Evaluation: trained models and the linear baselines scored on EMOPIA's test split, and the paper's Tables I
and III reproduced in one Markdown + JSON report with pictures; imports train, model and features."""
from __future__ import annotations

from mer.evaluation.baselines import LinearBaseline, audio_features, fit_linear_baseline, symbolic_features
from mer.evaluation.crossval import fold_splits, merge_crossval, run_crossval
from mer.evaluation.evaluate import evaluate_artifact, evaluate_features, window_predictions
from mer.evaluation.merge import merge_reports
from mer.evaluation.paper import (CAVEAT_AUDIO, METHODS, PAPER_FULL, PAPER_ONLY, Method, caveats, method_config,
                                  method_key)
from mer.evaluation.plots import plot_attention, plot_confusion, plot_reliability
from mer.evaluation.report import render_markdown, write_evaluation, write_tables
from mer.evaluation.robustness import robustness_report
from mer.evaluation.results import RUN_FIELDS, EvalResult, TablesReport
from mer.evaluation.standing import read_headline, replace_section, where_we_stand
from mer.evaluation.tables import find_artifact, run_baseline, run_tables, split_clips

__all__ = [
    "CAVEAT_AUDIO", "EvalResult", "LinearBaseline", "METHODS", "Method", "PAPER_FULL", "PAPER_ONLY", "RUN_FIELDS",
    "TablesReport", "audio_features", "caveats", "evaluate_artifact", "evaluate_features", "find_artifact",
    "fit_linear_baseline", "fold_splits", "merge_crossval", "merge_reports", "method_config",
    "method_key", "plot_attention", "plot_confusion", "plot_reliability", "read_headline", "render_markdown",
    "replace_section", "robustness_report", "run_baseline", "run_crossval", "run_tables", "split_clips",
    "symbolic_features", "where_we_stand", "window_predictions", "write_evaluation", "write_tables",
]
