"""Training: EMOPIA's clips → labelled windows (through the feature cache) → Ray Train → a model artifact.
Owns the dataset reader, the steps and the worker loop, and the per-clip scores; imports features and model."""
from __future__ import annotations

from mer.train.calibrate import calibration_on_val, window_log_probs
from mer.train.dataset import (ClipFeatures, Extraction, collate, data_fingerprint, ensure_ray, extract_clips,
                               labelled_rows, stack_rows, take, window_dataset, window_table)
from mer.train.emopia import SPLITS, Clip, emopia_root, load_split, song_folds, song_of
from mer.train.loop import (CHECKPOINT_FILE, MIN_SUBSET_VAL_CLIPS, TrainResult, evaluate_split, run_identity,
                            select_clips, subset_count, summary_table, train_loop_per_worker, train_model)
from mer.train.posthoc import build_artifact, with_summary_head
from mer.train.progress import progress_bar, progress_line
from mer.train.scores import (METRICS, attention_by_quadrant, clip_quadrants, confusion_matrix, quadrant_metrics,
                              split_metrics, summarise)
from mer.train.steps import (Schedule, batches, emotion_loss, eval_step, length_bucketed_batches, lr_schedule,
                             rank_batches, train_step)
from mer.train.summary_head import blended, choose_regression, fit_summary_head, has_notes

__all__ = [
    "blended", "build_artifact", "calibration_on_val", "choose_regression", "fit_summary_head", "has_notes",
    "window_log_probs", "with_summary_head",
    "CHECKPOINT_FILE", "Clip", "ClipFeatures", "Extraction", "METRICS", "MIN_SUBSET_VAL_CLIPS", "SPLITS",
    "Schedule", "TrainResult", "attention_by_quadrant", "batches", "clip_quadrants", "collate", "confusion_matrix",
    "data_fingerprint", "emopia_root", "emotion_loss", "ensure_ray", "eval_step", "evaluate_split", "extract_clips",
    "labelled_rows", "length_bucketed_batches", "load_split", "lr_schedule", "progress_bar",
    "progress_line", "quadrant_metrics", "rank_batches",
    "run_identity", "select_clips", "song_folds", "song_of", "split_metrics", "stack_rows", "subset_count", "summarise",
    "summary_table", "take", "train_loop_per_worker", "train_model", "train_step", "window_dataset", "window_table",
]
