"""Tagging: the nightly job — object store → features → the model (Ray Data) → the SQL catalog — with its
storage, run lifecycle and Prometheus metrics. Imports features, model and catalog; Ray and torch only when used.

Names are imported from their module on first use: a Ray Data feature worker or inference actor unpickles a
function or class of one module (``attempts``, ``predictor``) and does not pay for importing the catalog, the
metrics or the driver's planning it never runs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mer.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "loop": ("tag_store_local",),
    "metrics": ("STAGES", "JobMetrics"),
    "pipeline": ("feature_task_cpus", "inference_actors", "tag_store", "use_gpus"),
    "plan": ("TagSummary",),
    "predictor": ("WindowPredictor",),
    "prepare": ("PreparedItem", "extract_window_rows", "item_row", "prepare_item"),
    "storage": ("Item", "Reject", "list_items"),
})

if TYPE_CHECKING:  # what the names are, for readers and type checkers (and the layering test)
    from mer.tagging.loop import tag_store_local
    from mer.tagging.metrics import STAGES, JobMetrics
    from mer.tagging.pipeline import feature_task_cpus, inference_actors, tag_store, use_gpus
    from mer.tagging.plan import TagSummary
    from mer.tagging.predictor import WindowPredictor
    from mer.tagging.prepare import PreparedItem, extract_window_rows, item_row, prepare_item
    from mer.tagging.storage import Item, Reject, list_items
