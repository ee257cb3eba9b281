"""Tag the pieces of an object store with their emotion, into the SQL catalog (the nightly job, on Ray Data).

Every new or changed item (``<stem>.mid|.midi`` and/or ``<stem>.wav|.flac|.mp3|.ogg``) is read, turned into
features in parallel CPU tasks, labelled by the model in an actor pool (one GPU per actor when the cluster has
GPUs) and written to the catalog in batches, one transaction each. Items this model already tagged at the same
object version are skipped (``--force`` re-tags them); a killed run can simply be started again.

    python jobs/tag.py --store s3://bucket/pieces --catalog postgresql+psycopg://user@host/mer \\
        --storage s3://bucket/mer_runs            # model: LATEST in --storage
    python jobs/tag.py --store ./pieces --model ./mer_runs/models/<version> --catalog ./mer_catalog.db

Items given as MIDI only are labelled by the symbolic branch alone. ``--render-missing-audio`` renders their
audio with FluidSynth first so all three branches run, as the model was trained on EMOPIA (slower: rendering
costs about as much as the rest of the features; off by default). Bad files never stop the run: they land in
the ``failures`` table with a reason, or the item is tagged from its usable file with the problem recorded.

Features are read from the feature cache (``--cache-dir``, default ``<storage>/feature-cache``) when the same files
were extracted before with the same feature config, so a new model version over a tagged store pays for
inference only; ``--cache-max-gib`` keeps a folder cache under a size (least recently used entries go first;
a hit refreshes an entry), and an S3 cache is bounded by a lifecycle rule on its prefix
(``cluster/feature-cache-lifecycle.json``). The store is listed and compared with the catalog in pages
(``--page-size`` keys, one Ray Data pass each), so millions of keys never sit in the driver's memory at once.

Flags default to their environment variables (MER_STORE, AWS_ENDPOINT_URL, MER_CATALOG_URL, MER_MODEL,
MER_STORAGE, MER_CACHE_DIR, MER_CACHE_MAX_GIB, MER_METRICS_PORT, MER_PUSHGATEWAY, RAY_ADDRESS). AWS credentials
come from the standard AWS chain.
Exit status: 0 when the run succeeded (failed items included), 1 when the run failed, 2 for bad flags.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import SQLAlchemyError

from mer.config import TagConfig
from mer.errors import MerError
from mer.features import FeatureCache
from mer.tagging import tag_store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    defaults = TagConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=env("MER_STORE"), required=env("MER_STORE") is None,
                        help="object store to tag: a folder, file:// or s3://bucket/prefix (env MER_STORE)")
    parser.add_argument("--prefix", default="", help="only keys starting with this (relative to the store)")
    parser.add_argument("--endpoint-url", default=env("AWS_ENDPOINT_URL"),
                        help="S3-compatible endpoint (env AWS_ENDPOINT_URL; default: AWS)")
    parser.add_argument("--catalog", default=env("MER_CATALOG_URL", "sqlite:///mer_catalog.db"),
                        help="SQLAlchemy URL or SQLite path of the catalog (env MER_CATALOG_URL)")
    parser.add_argument("--model", default=env("MER_MODEL"),
                        help="model artifact path/URL or version id (env MER_MODEL; default: LATEST in --storage)")
    parser.add_argument("--storage", default=env("MER_STORAGE", "./mer_runs"),
                        help="where model versions live (env MER_STORAGE)")
    parser.add_argument("--force", action="store_true", help="re-tag items already tagged at the same version")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="windows per model call and items per catalog transaction")
    parser.add_argument("--feature-concurrency", type=int, default=defaults.feature_concurrency,
                        help="parallel feature-extraction tasks")
    parser.add_argument("--inference-concurrency", type=int, default=defaults.inference_concurrency,
                        help="inference actors (one GPU each when the cluster has GPUs)")
    parser.add_argument("--gpu", dest="use_gpu", action="store_const", const=True, default=None,
                        help="one GPU per inference actor, even if no GPU node is up yet (autoscaling clusters); "
                             "default: when the cluster has GPUs at the start")
    parser.add_argument("--cpu", dest="use_gpu", action="store_const", const=False, help="never use GPUs")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=defaults.int8,
                        help="CPU inference with int8 weights for the Bi-GRU and linear layers (default: on; "
                             "GPUs always run float32)")
    parser.add_argument("--render-missing-audio", action="store_true",
                        help="render audio with FluidSynth for items without usable audio (all three branches)")
    parser.add_argument("--metrics-port", type=int, default=env("MER_METRICS_PORT", "9464"),
                        help="serve Prometheus /metrics on this port while running (env MER_METRICS_PORT; 0: off)")
    parser.add_argument("--pushgateway", default=env("MER_PUSHGATEWAY"),
                        help="push the metrics to this Pushgateway at the end (env MER_PUSHGATEWAY)")
    parser.add_argument("--address", default=env("RAY_ADDRESS"),
                        help="Ray cluster address (env RAY_ADDRESS; default: start a local Ray)")
    parser.add_argument("--heartbeat-seconds", type=float, default=defaults.heartbeat_seconds,
                        help="stamp the run's heartbeat (catalog, Pushgateway) this often; a run silent for "
                             f"{defaults.dead_after_seconds:g} s is closed as failed by the next one")
    parser.add_argument("--limit", type=int, default=None, help="tag at most N items (the rest wait for next run)")
    parser.add_argument("--page-size", type=int, default=defaults.page_size,
                        help="keys listed and compared with the catalog at a time, and items per Ray Data pass")
    parser.add_argument("--cache-dir", default=env("MER_CACHE_DIR"),
                        help="feature cache: a folder every worker sees or s3://bucket/prefix (env MER_CACHE_DIR; "
                             "default <storage>/feature-cache)")
    parser.add_argument("--no-cache", action="store_true", help="extract every item's features, cache nothing")
    parser.add_argument("--cache-max-gib", type=float, default=float(env("MER_CACHE_MAX_GIB") or 0) or None,
                        help="after the run, prune a folder cache to this size, least recently used first (env "
                             "MER_CACHE_MAX_GIB; default: unbounded). An S3 cache is bounded by a lifecycle rule "
                             "on its prefix instead (cluster/feature-cache-lifecycle.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars, only log lines")
    args = parser.parse_args(argv)
    for name in ("batch_size", "feature_concurrency", "inference_concurrency", "page_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.cache_max_gib is not None and args.cache_max_gib <= 0:
        parser.error("--cache-max-gib must be above 0")
    # The feature cache's location, decided once: None (--no-cache), an s3:// URL, or an absolute folder (the same
    # path for every worker).
    location = args.cache_dir or f"{args.storage.rstrip('/')}/feature-cache"
    args.cache = None if args.no_cache else location if "://" in location else os.path.abspath(location)
    if args.cache_max_gib is not None and "://" in location:
        parser.error("--cache-max-gib bounds a folder cache; bound an S3 cache with a lifecycle rule on its prefix "
                     "(cluster/feature-cache-lifecycle.json)")
    if not 0 < args.heartbeat_seconds < defaults.dead_after_seconds:
        parser.error(f"--heartbeat-seconds must be above 0 and below {defaults.dead_after_seconds:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    tagging = TagConfig(batch_size=args.batch_size, feature_concurrency=args.feature_concurrency,
                        inference_concurrency=args.inference_concurrency, use_gpu=args.use_gpu,
                        page_size=args.page_size, heartbeat_seconds=args.heartbeat_seconds, int8=args.int8)
    try:
        summary = tag_store(
            args.store, catalog=args.catalog, model=args.model, storage=args.storage, prefix=args.prefix,
            endpoint_url=args.endpoint_url, force=args.force, tagging=tagging,
            render_missing_audio=args.render_missing_audio, metrics_port=args.metrics_port or None,
            pushgateway=args.pushgateway, address=args.address, limit=args.limit, progress=not args.no_progress,
            cache=args.cache,
        )
    except (MerError, FileNotFoundError, ValueError, SQLAlchemyError, BotoCoreError, ClientError) as error:
        # No model, no store, an unsupported store URL, an unreachable catalog or bucket: say so, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"run {summary.run_id} {summary.status} (model {summary.model_version}): {summary.listed} listed, "
          f"{summary.tagged} tagged, {summary.skipped} skipped, {summary.failed} failed"
          + (f", {summary.deferred} deferred" if summary.deferred else "")
          + f" in {summary.seconds:.1f} s ({summary.items_per_second:.2f} items/s)")
    print(json.dumps(summary.to_dict()))
    if args.cache is not None and args.cache_max_gib is not None:
        removed = FeatureCache(args.cache).prune(int(args.cache_max_gib * 2**30))
        print(f"feature cache {args.cache}: pruned {removed / 2**20:.1f} MiB (bound {args.cache_max_gib:g} GiB)")
    return 0 if summary.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
