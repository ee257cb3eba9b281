"""Tagging: the nightly job — object store → features → the model (Ray Data) → the SQL catalog — with its
storage, run lifecycle and Prometheus metrics. Imports features, model and catalog; Ray and torch only when used."""
from __future__ import annotations

from mer.tagging.loop import tag_store_local
from mer.tagging.metrics import STAGES, JobMetrics
from mer.tagging.pipeline import feature_task_cpus, inference_actors, tag_store, use_gpus
from mer.tagging.plan import TagSummary
from mer.tagging.predictor import WindowPredictor
from mer.tagging.prepare import PreparedItem, extract_window_rows, item_row, prepare_item
from mer.tagging.storage import Item, Reject, list_items

__all__ = [
    "Item", "JobMetrics", "PreparedItem", "Reject", "STAGES", "TagSummary", "WindowPredictor", "extract_window_rows",
    "feature_task_cpus", "inference_actors", "item_row", "list_items", "prepare_item", "tag_store", "tag_store_local",
    "use_gpus",
]
