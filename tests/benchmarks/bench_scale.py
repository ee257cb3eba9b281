"""Benchmark: a nightly run over a store of many keys — the listing, the catalog comparison, the driver's memory.

    .venv/bin/python tests/benchmarks/bench_scale.py [--keys 100000] [--backends local s3 s3rver]
        [--baseline ../wt-base] [--round-trip-ms 50] [--out tests/benchmarks/results/scale.json]

A synthetic store of ``--keys`` tiny objects (``shard-NNN/piece-NNNNNNN.mid``, 1,000 to a folder, a few bytes
each: the listing and the catalog, not the features, are measured), and a SQLite catalog. Backends:

- ``local``: a local folder;
- ``s3``: moto's S3 server, over HTTP. For every page of 1,000 keys its ListObjectsV2 scans the whole bucket and
  sorts every key under the page's prefix: listed flat, its listing grows with keys x pages, where S3 pages from
  an index; listed folder by folder, it still scans the bucket for every page but sorts only a folder;
- ``s3rver``: the npm package s3rver (Node.js; installed on demand under ``--cache-dir``), another S3 server over
  HTTP, which keeps objects as files and lists a page by walking its folders in key order from the continuation
  key: a page costs about a page (and a folder), as on S3, so its listing grows with the keys only (each key
  is a stat and two file reads, so a page is still slower than on S3).

For each backend, each in a fresh process (its peak RSS is the driver's):

- ``first_night``: list the store and compare it with an empty catalog (everything is new): the planning a
  first run does before any Ray work (the passes are planned, not processed);
- ``unchanged_night``: :func:`mer.tagging.tag_store` end to end over a catalog that already holds every item's
  label at its object version (written directly, as a finished night would have): listing, catalog
  comparison, the run's bookkeeping, no Ray. ``process_seconds`` adds the interpreter and imports.
- S3 servers only, ``raw_listing_seconds``: plain boto3 paging through the same keys, ``flat`` (the whole prefix)
  and ``by_folder`` (a delimiter request, then each folder: the requests the tagger makes, since the store's first
  level fits one page, :meth:`mer.storage.S3Store.list`) — the server's own cost of the listing, which no tagger
  avoids. Moto sorts every key that matches a page's prefix for every page, so a folder's page costs it a sort of
  the folder instead of the bucket; S3 pages from an index either way.

- S3 servers only, ``listing_seconds``: :meth:`mer.storage.S3Store.list` of the whole store, one folder at a time
  (``LIST_FOLDERS_AHEAD = 1``, the walk before read-ahead) and with the default read-ahead, same process kind.

``--round-trip-ms`` puts the S3 server behind a proxy on 127.0.0.1 that holds every request that long before passing
it on: the round trip between a tagger and a remote store, which a server on the same machine lacks (0: none).
The store is built and the catalog filled without it.

``store_build_seconds``: the local folder and the s3rver store are kept under ``--cache-dir`` and reused by later
runs (then about 0); moto's is put straight into its in-process backend each run; s3rver's is PUT over HTTP
(about 3 minutes for 100,000 keys on 2 busy cores; three files a key on disk, 1.2 GB).

With ``--baseline``, the unchanged night is also run by that checkout (for example the commit before a change to the
listing), on the same store and catalog in the same run. The 10-million-key estimate scales the measured seconds
linearly (listing and the catalog lookups are per key) and takes the driver's memory as measured (pages bound it).
Not collected by pytest.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlsplit

from emit import emit
from memory import peak_rss_mib

HERE = Path(__file__).resolve()
NEW = HERE.parents[2]
MODEL_VERSION = "20260101-000000-bench000"
PER_FOLDER = 1000
BACKENDS = ("local", "s3", "s3rver")
BUCKET = "bench"
PUT_THREADS = 32


def key_of(index: int) -> str:
    return f"shard-{index // PER_FOLDER:04d}/piece-{index:08d}.mid"


def build_local(root: Path, keys: int) -> None:
    if (root / ".complete").exists() and int((root / ".complete").read_text()) == keys:
        return
    for index in range(keys):
        path = root / key_of(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"MThd tiny")
    (root / ".complete").write_text(str(keys))


def build_moto(endpoint: str, bucket: str, keys: int) -> None:
    """The store's objects, put straight into the in-process moto server's backend: building the store is not what
    is measured, and 100,000 PUTs over HTTP take moto a quarter of an hour."""
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for index in range(keys):
        backend.put_object(bucket, f"pieces/{key_of(index)}", b"MThd tiny")


def build_s3rver(endpoint: str, directory: Path, bucket: str, keys: int) -> None:
    """The store's objects PUT over HTTP (``PUT_THREADS`` at a time) into the s3rver serving ``directory``, unless
    ``directory/.complete`` says an earlier run built them all; an unfinished build is deleted first."""
    import boto3
    from botocore.config import Config

    marker = directory / ".complete"  # s3rver takes only folders for buckets
    if marker.exists() and int(marker.read_text()) == keys:
        return
    shutil.rmtree(directory / bucket, ignore_errors=True)  # s3rver keeps no state but its files
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=PUT_THREADS))
    client.create_bucket(Bucket=bucket)

    def put(indices: range) -> None:
        for index in indices:
            client.put_object(Bucket=bucket, Key=f"pieces/{key_of(index)}", Body=b"MThd tiny")

    with ThreadPoolExecutor(PUT_THREADS) as pool:
        list(pool.map(put, [range(first, keys, PUT_THREADS) for first in range(PUT_THREADS)]))
    marker.write_text(str(keys))


@contextmanager
def delayed(endpoint: str, round_trip_ms: float) -> Iterator[str]:
    """``endpoint`` behind a TCP proxy on 127.0.0.1 that holds every chunk a client sends (a request, here)
    ``round_trip_ms`` before passing it on; replies pass at once. Connections are delayed independently, as a
    network delays concurrent requests."""
    import asyncio

    target = urlsplit(endpoint)
    delay = round_trip_ms / 1000

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(hold)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def connect(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(pipe(client_reader, server_writer, delay), pipe(server_reader, client_writer, 0),
                             return_exceptions=True)

    loop = asyncio.new_event_loop()
    proxy = loop.run_until_complete(asyncio.start_server(connect, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, name="bench-delay-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


@contextmanager
def serve(backend: str, cache: Path, keys: int) -> Iterator[str | None]:
    """The backend's server for the measurements of it: its endpoint URL (None for the local folder). s3rver is
    installed under ``cache`` first if it is not there."""
    from s3server import install_s3rver, moto_s3_server, s3rver_server

    if backend == "local":
        yield None
    elif backend == "s3":
        with moto_s3_server() as endpoint:
            yield endpoint
    else:
        with s3rver_server(install_s3rver(cache / "s3rver"), cache / f"s3rver-store-{keys}") as endpoint:
            yield endpoint


def build(backend: str, endpoint: str | None, cache: Path, keys: int) -> str:
    """The backend's store of ``keys`` objects, built (or found in the cache): its URL."""
    if backend == "local":
        root = cache / f"store-{keys}"
        build_local(root, keys)
        return str(root)
    if backend == "s3":
        build_moto(endpoint, BUCKET, keys)
    else:
        build_s3rver(endpoint, cache / f"s3rver-store-{keys}", BUCKET, keys)
    return f"s3://{BUCKET}/pieces"


def raw_listing_seconds(endpoint: str, bucket: str) -> dict[str, float]:
    """The server's own cost of listing the store with plain boto3, both ways: ``flat`` (paging through the whole
    prefix) and ``by_folder`` (one request with a delimiter for the first level, then each folder paged: the
    requests :meth:`mer.storage.S3Store.list` makes for this store)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    pages = client.get_paginator("list_objects_v2")
    out = {}
    start = time.perf_counter()
    flat = sum(len(page.get("Contents", [])) for page in pages.paginate(Bucket=bucket, Prefix="pieces/"))
    out["flat"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    top = client.list_objects_v2(Bucket=bucket, Prefix="pieces/", Delimiter="/")
    assert not top["IsTruncated"]
    by_folder = sum(len(page.get("Contents", [])) for folder in top.get("CommonPrefixes", [])
                    for page in pages.paginate(Bucket=bucket, Prefix=folder["Prefix"]))
    out["by_folder"] = round(time.perf_counter() - start, 2)
    assert flat == by_folder > 0
    return out


def build_model(storage: Path) -> str:
    """A tiny model artifact with a fixed version (the run reads only its config.json and meta.json)."""
    import torch

    sys.path.insert(0, str(NEW / "tests"))
    from tiny import tiny_config

    from mer.model import MerModel
    from mer.model.artifact import save_artifact

    torch.manual_seed(0)
    return save_artifact(MerModel(tiny_config()).state_dict(), config=tiny_config(), storage=str(storage),
                         meta={"data_fingerprint": "benchmark"}, version=MODEL_VERSION, set_latest=False)


def fill_catalog(catalog: str, store: str, endpoint_url: str | None) -> None:
    """Every item's label under MODEL_VERSION at its current object version: a store tagged last night."""
    from mer.catalog import CatalogWriter, LabelRecord
    from mer.storage import open_store
    from mer.tagging.storage import list_pages

    writer = CatalogWriter(catalog)
    run_id = writer.start_run(MODEL_VERSION)
    for items, _ in list_pages(open_store(store, endpoint_url=endpoint_url), page_size=5000):
        writer.write_batch(run_id, [
            LabelRecord(key=item.stem, object_version=item.version, modalities="midi", duration_s=30.0,
                        quadrant="Q1", quadrant_probs=(0.4, 0.2, 0.2, 0.2), branches_used="symbolic")
            for item in items])
    writer.finish_run(run_id, counts={"tagged": 0})
    writer.close()



# --- one measurement, in its own process ------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    from mer.config import TagConfig
    from mer.tagging import tag_store

    imported = time.perf_counter()
    if args.measure == "listing":
        import mer.storage
        from mer.storage import open_store

        mer.storage.LIST_FOLDERS_AHEAD = args.folders_ahead
        start = time.perf_counter()
        listed = sum(1 for _ in open_store(args.store, endpoint_url=args.endpoint_url).list())
        seconds = time.perf_counter() - start
        counts = {"listed": listed, "folders_ahead": args.folders_ahead}
    elif args.measure == "unchanged_night":
        start = time.perf_counter()
        summary = tag_store(args.store, catalog=args.catalog, model=args.model, endpoint_url=args.endpoint_url,
                            metrics_port=None, progress=False)
        seconds = time.perf_counter() - start
        counts = summary.to_dict()
        counts = {k: counts[k] for k in ("listed", "tagged", "skipped", "failed", "passes") if k in counts}
    else:  # first_night: the planning only
        from mer.tagging.plan import begin_run, end_run, passes

        start = time.perf_counter()
        plan = begin_run(args.store, catalog=args.catalog, model=args.model, storage=None,
                         endpoint_url=args.endpoint_url, tagging=TagConfig(), render_missing_audio=False,
                         metrics_port=None, pushgateway=None)
        to_tag = 0
        for todo in passes(plan, prefix="", force=False, limit=None, page_size=TagConfig().page_size):
            to_tag += len(todo)
            plan.recorder.start_pass([])  # planned, not processed
        summary = end_run(plan, success=True, pushgateway=None)
        seconds = time.perf_counter() - start
        counts = {"listed": summary.listed, "to_tag": to_tag, "passes": summary.passes}
    return {"seconds": round(seconds, 2), "process_seconds": round(time.perf_counter() - started, 2),
            "import_seconds": round(imported - started, 2), **counts,
            "driver_peak_rss_mib": peak_rss_mib()}


def run_measure(tree: Path, what: str, *, store: str, catalog: str, model: str, endpoint_url: str | None,
                folders_ahead: int = 0) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, str(HERE), "--measure", what, "--store", store, "--catalog", catalog, "--model", model,
               "--folders-ahead", str(folders_ahead)]
    if endpoint_url:
        command += ["--endpoint-url", endpoint_url]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"{what} in {tree} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
    print(f"{tree.name:>16} {what:<16} {store[:40]:<40} {result['seconds']:7.2f} s "
          f"{result['driver_peak_rss_mib']:7.1f} MiB", file=sys.stderr)
    return result


def measure_backend(backend: str, args: argparse.Namespace, *, cache: Path, scratch: Path, model: str,
                    endpoint_url: str | None) -> dict:
    """One backend's store built (or reused), its catalogs filled, and its nights measured (through the delaying
    proxy with ``--round-trip-ms``)."""
    start = time.perf_counter()
    store = build(backend, endpoint_url, cache, args.keys)
    built = time.perf_counter() - start
    print(f"{backend}: store of {args.keys} keys ready in {built:.1f} s", file=sys.stderr)
    empty = f"sqlite:///{scratch / f'{backend}-empty.db'}"
    full = f"sqlite:///{scratch / f'{backend}-full.db'}"
    fill_catalog(full, store, endpoint_url)
    delay = args.round_trip_ms if endpoint_url else 0.0  # a local folder has no round trip to simulate
    with delayed(endpoint_url, delay) if delay else nullcontext(endpoint_url) as measured_endpoint:
        out = measure_nights(args, store=store, empty=empty, full=full, model=model, endpoint_url=measured_endpoint,
                             built=built)
    return {"round_trip_ms": delay, **out} if delay else out


def measure_nights(args: argparse.Namespace, *, store: str, empty: str, full: str, model: str,
                   endpoint_url: str | None, built: float) -> dict:
    from mer.storage import LIST_FOLDERS_AHEAD

    out = {"store_build_seconds": round(built, 1), "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    if endpoint_url:  # our listing alone, one folder at a time and with read-ahead
        out["listing_seconds"] = {
            f"folders_ahead_{ahead}": run_measure(NEW, "listing", store=store, catalog=empty, model=model,
                                                  endpoint_url=endpoint_url, folders_ahead=ahead)["seconds"]
            for ahead in (1, LIST_FOLDERS_AHEAD)}
    out["first_night"] = run_measure(NEW, "first_night", store=store, catalog=empty, model=model,
                                     endpoint_url=endpoint_url)
    out["unchanged_night"] = run_measure(NEW, "unchanged_night", store=store, catalog=full, model=model,
                                         endpoint_url=endpoint_url)
    if endpoint_url:  # an S3 server: its own listing cost, to tell ours from the server's
        out["raw_listing_seconds"] = raw_listing_seconds(endpoint_url, BUCKET)
        out["unchanged_night_beyond_raw_listing_seconds"] = round(
            out["unchanged_night"]["seconds"] - out["raw_listing_seconds"]["by_folder"], 2)
    if args.baseline:
        out["baseline_unchanged_night"] = run_measure(args.baseline.resolve(), "unchanged_night", store=store,
                                                      catalog=full, model=model, endpoint_url=endpoint_url)
    scale = 10_000_000 / args.keys
    out["estimate_10m_keys"] = {
        "first_night_planning_seconds": round(out["first_night"]["seconds"] * scale),
        "unchanged_night_seconds": round(out["unchanged_night"]["seconds"] * scale),
        "driver_peak_rss_mib": out["unchanged_night"]["driver_peak_rss_mib"],
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["local", "s3"],
                        help="default: local s3 (s3rver, which needs Node.js and npm, builds its 100,000-key store "
                             "in minutes the first time)")
    parser.add_argument("--baseline", type=Path, help="checkout to run the unchanged night with as well")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "mer-bench-scale"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--round-trip-ms", type=float, default=0.0,
                        help="hold every S3 request this long (a proxy on 127.0.0.1): a remote store's round trip")
    parser.add_argument("--measure", choices=("first_night", "unchanged_night", "listing"), help=argparse.SUPPRESS)
    parser.add_argument("--folders-ahead", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.measure:
        print(json.dumps(measure(args)))
        return 0

    sys.path.insert(0, str(NEW))
    sys.path.insert(0, str(NEW / "tests"))
    from s3server import fake_aws_env

    cache = Path(args.cache_dir).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    model = build_model(Path(tempfile.mkdtemp(dir=cache)))
    result: dict = {"keys": args.keys, "cpus": os.cpu_count(), "per_folder": PER_FOLDER, "catalog": "sqlite",
                    "round_trip_ms": args.round_trip_ms,
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with fake_aws_env(), tempfile.TemporaryDirectory(dir=cache) as scratch:
        for backend in args.backends:
            with serve(backend, cache, args.keys) as endpoint_url:
                result[backend] = measure_backend(backend, args, cache=cache, scratch=Path(scratch), model=model,
                                                  endpoint_url=endpoint_url)
    result["unchanged_night_seconds"] = {b: result[b]["unchanged_night"]["seconds"] for b in args.backends}
    for backend in args.backends:
        if "raw_listing_seconds" in result[backend]:
            result["unchanged_night_seconds"][f"{backend}_beyond_raw_listing"] = \
                result[backend]["unchanged_night_beyond_raw_listing_seconds"]
    result["driver_peak_rss_mib"] = max(max(result[b][m]["driver_peak_rss_mib"]
                                            for m in ("first_night", "unchanged_night")) for b in args.backends)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
