""":func:`tag_store_local`: the tagging run without Ray — the same functions, item after item, in one process.

For small stores and debugging, and as the benchmark's baseline (``tests/benchmarks/bench_tagging.py``) and a
check that the Ray pipeline (:mod:`mer.tagging.pipeline`) changes nothing but the speed.
"""
from __future__ import annotations

from mer.config import TagConfig
from mer.features import FeatureCache
from mer.storage import ObjectStore
from mer.tagging.plan import TagSummary, begin_run, end_run, passes
from mer.tagging.predictor import WindowPredictor
from mer.tagging.prepare import batch_of, extract_window_rows, item_row
from mer.tagging.recorder import WindowGrouper

def tag_store_local(
    store: str | ObjectStore,
    *,
    catalog: str,
    model: str | None = None,
    storage: str | None = None,
    prefix: str = "",
    endpoint_url: str | None = None,
    force: bool = False,
    tagging: TagConfig | None = None,
    render_missing_audio: bool = False,
    metrics_port: int | None = None,
    pushgateway: str | None = None,
    limit: int | None = None,
    cache: str | FeatureCache | None = None,
) -> TagSummary:
    """:func:`~mer.tagging.pipeline.tag_store` without Ray: the same functions, item after item, in this process.

    Each item's windows go to the model as one batch. Same arguments and result as
    :func:`~mer.tagging.pipeline.tag_store` (minus the Ray ones). For small stores, debugging, and as the
    benchmark's baseline.
    """
    tagging = tagging or TagConfig()
    plan = begin_run(store, catalog=catalog, model=model, storage=storage, endpoint_url=endpoint_url,
                     tagging=tagging, render_missing_audio=render_missing_audio, metrics_port=metrics_port,
                     pushgateway=pushgateway, cache=cache)
    predictor = None
    try:
        for todo in passes(plan, prefix=prefix, force=force, limit=limit, page_size=tagging.page_size):
            if predictor is None:
                predictor = WindowPredictor(plan.artifact_url, storage=storage, batch_size=tagging.batch_size,
                                            int8=tagging.int8)
                plan.writer.record_inference(plan.run_id, "int8" if predictor.predictor.int8 else "float32")
            windows = WindowGrouper()
            for item in todo:
                rows = extract_window_rows(item_row(item), store=plan.store, config=plan.config,
                                           render_missing_audio=render_missing_audio, cache=plan.cache)
                for done in windows.add_batch(predictor(batch_of(rows))):
                    plan.recorder.finish_item(done)
            plan.recorder.end_pass()
    except BaseException:
        end_run(plan, success=False, pushgateway=pushgateway)
        raise
    return end_run(plan, success=True, pushgateway=pushgateway)
