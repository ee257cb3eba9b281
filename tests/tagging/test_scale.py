"""Tagging at catalog scale: features once per piece across model versions (the feature cache, on a folder or an S3
prefix, never trusted when damaged), and a store listed, compared and tagged in pages — exactly once, even when
the job is killed between pages.

One local Ray (2 CPUs) serves the module; models are tiny and untrained (the plumbing is tested, not accuracy).
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import soundfile
import sqlalchemy as sa
import torch

from mer.catalog import create_catalog_engine
from mer.config import TagConfig
from mer.features import FeatureCache, read_midi, render_audio
from mer.model import MerModel
from mer.model.artifact import save_artifact
from mer.storage import LocalStore, ObjectStore, S3Store
from mer.tagging import tag_store, tag_store_local
from mer.train.emopia import emopia_root, load_split
from tiny import tiny_config

pytest_plugins = ["fixtures_services"]

REPO = Path(__file__).resolve().parents[2]
PAIRS = 4  # EMOPIA clips as MIDI + WAV
LABEL_COLUMNS = ("quadrant", "p_q1", "p_q2", "p_q3", "p_q4", "arousal_prob", "valence_prob", "n_windows")


@pytest.fixture(scope="module")
def ray_address() -> str:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def make_model(storage: Path, seed: int) -> str:
    """A tiny untrained model artifact; another seed is another model version (other weights, other labels)."""
    torch.manual_seed(seed)
    config = tiny_config()
    return save_artifact(MerModel(config).state_dict(), config=config, storage=str(storage),
                         meta={"data_fingerprint": "test"}, set_latest=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    storage = tmp_path_factory.mktemp("storage")
    return make_model(storage, 0), make_model(storage, 1)


@pytest.fixture(scope="module")
def clips() -> list:
    return load_split(emopia_root(), "train")[:12]


@pytest.fixture(scope="module")
def pairs(clips) -> dict[str, tuple[bytes, bytes]]:
    """``{name: (MIDI bytes, WAV bytes)}`` of a few EMOPIA clips and their renderings."""
    features = tiny_config().features
    out = {}
    for clip in clips[:PAIRS]:
        midi = clip.midi_path.read_bytes()
        audio = render_audio(read_midi(midi, name=clip.name), config=features, name=clip.name)
        buffer = io.BytesIO()
        soundfile.write(buffer, audio, features.sample_rate, format="WAV", subtype="PCM_16")
        out[clip.name] = (midi, buffer.getvalue())
    return out


def put_pairs(store: ObjectStore, pairs: dict[str, tuple[bytes, bytes]]) -> list[str]:
    for name, (midi, wav) in pairs.items():
        store.write(f"{name}.mid", midi)
        store.write(f"{name}.wav", wav)
    return sorted(pairs)


def labels(catalog: str, version: str | None = None) -> dict[str, dict]:
    engine = create_catalog_engine(catalog)
    try:
        with engine.connect() as conn:
            sql = "SELECT * FROM labels" + (" WHERE model_version = :v" if version else "")
            return {r.item_key: dict(r._mapping) for r in conn.execute(sa.text(sql), {"v": version})}
    finally:
        engine.dispose()


def count(catalog: str, sql: str) -> int:
    engine = create_catalog_engine(catalog)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar_one())
    finally:
        engine.dispose()


def assert_same_labels(got: dict[str, dict], expected: dict[str, dict]) -> None:
    assert sorted(got) == sorted(expected)
    for key, label in got.items():
        for column in LABEL_COLUMNS:
            assert label[column] == pytest.approx(expected[key][column], abs=1e-5), (key, column)


# --- features once per piece -----------------------------------------------------------------------------------------


def test_a_new_model_version_over_a_tagged_s3_store_extracts_nothing_and_labels_everything(
        ray_address, models, pairs, s3_endpoint, s3_bucket, tmp_path: Path) -> None:
    first_model, second_model = models
    keys = put_pairs(S3Store(s3_bucket, "pieces", endpoint_url=s3_endpoint), pairs)
    store, cache = f"s3://{s3_bucket}/pieces", f"s3://{s3_bucket}/feature-cache"
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"

    first = tag_store(store, endpoint_url=s3_endpoint, catalog=catalog, model=first_model, cache=cache,
                      progress=False)
    exact = TagConfig(int8=False)  # float32: a window's labels do not depend on how windows are batched
    second = tag_store(store, endpoint_url=s3_endpoint, catalog=catalog, model=second_model, cache=cache,
                       tagging=exact, progress=False)

    assert (first.tagged, first.features_extracted, first.features_cached) == (PAIRS, PAIRS, 0)
    assert (second.tagged, second.skipped, second.failed) == (PAIRS, 0, 0)
    assert (second.features_extracted, second.features_cached) == (0, PAIRS)  # inference only
    assert second.model_version != first.model_version
    entries = S3Store(s3_bucket, "feature-cache", endpoint_url=s3_endpoint).list()
    assert len([entry for entry in entries if entry.key.endswith(".parquet")]) == PAIRS
    # What the cache gave the second model is what extracting would have given it.
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    tag_store_local(store, endpoint_url=s3_endpoint, catalog=fresh, model=second_model, tagging=exact)
    assert_same_labels(labels(catalog, second.model_version), labels(fresh))
    assert sorted(labels(catalog, first.model_version)) == keys


def test_a_damaged_or_half_written_cache_entry_is_recomputed_never_trusted(models, pairs, tmp_path: Path) -> None:
    first_model, second_model = models
    store = LocalStore(tmp_path / "store")
    keys = put_pairs(store, pairs)
    cache = FeatureCache(tmp_path / "cache")
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    assert tag_store_local(store, catalog=catalog, model=first_model, cache=cache).features_extracted == PAIRS

    entries = sorted((tmp_path / "cache").rglob("*.parquet"))
    assert len(entries) == PAIRS
    # One entry with a changed value but still valid Parquet (a flipped bit in a float), one cut in half (a
    # copy that broke off), one replaced by another item's entry (misplaced).
    table = pq.read_table(entries[0])
    chroma = table.column("chroma").combine_chunks()
    values = np.array(chroma.flatten())
    values[123] += 0.25
    damaged = pa.FixedSizeListArray.from_arrays(pa.array(values), chroma.type.list_size)
    pq.write_table(table.set_column(table.schema.get_field_index("chroma"), "chroma", damaged), entries[0])
    entries[1].write_bytes(entries[1].read_bytes()[: entries[1].stat().st_size // 2])
    entries[2].write_bytes(entries[3].read_bytes())

    second = tag_store_local(store, catalog=catalog, model=second_model, cache=cache)

    assert (second.tagged, second.features_extracted, second.features_cached) == (PAIRS, 3, 1)
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    tag_store_local(store, catalog=fresh, model=second_model)  # no cache at all
    assert_same_labels(labels(catalog, second.model_version), labels(fresh))
    # The recomputed entries replaced the damaged ones: a third version finds them all.
    third_model = make_model(tmp_path / "storage", 2)
    assert tag_store_local(store, catalog=catalog, model=third_model, cache=cache).features_cached == PAIRS
    assert sorted(labels(catalog, None)) == keys


def test_prune_keeps_a_folder_cache_under_its_size_dropping_the_least_recently_used(models, pairs,
                                                                                     tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    put_pairs(store, pairs)
    cache = FeatureCache(tmp_path / "cache")
    tag_store_local(store, catalog=f"sqlite:///{tmp_path / 'catalog.db'}", model=models[0], cache=cache)
    entries = sorted((tmp_path / "cache").rglob("*.parquet"), key=lambda p: p.stat().st_mtime)
    sizes = [entry.stat().st_size for entry in entries]
    for age, entry in enumerate(entries):  # oldest first, a minute apart
        stamp = time.time() - 3600 + 60 * age
        os.utime(entry, (stamp, stamp))
    removed = cache.prune(sum(sizes) - sizes[0])
    assert removed == sizes[0] and not entries[0].exists() and all(e.exists() for e in entries[1:])


def test_the_tag_job_keeps_its_folder_cache_under_the_bound_it_is_given(ray_address, models, pairs,
                                                                        tmp_path: Path) -> None:
    put_pairs(LocalStore(tmp_path / "store"), pairs)
    bound_gib = 40 * 2**10 / 2**30  # 40 KiB: less than the entries of the pairs' features
    job = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "tag.py"), "--store", str(tmp_path / "store"),
         "--catalog", f"sqlite:///{tmp_path / 'catalog.db'}", "--model", models[0], "--address", ray_address,
         "--cache-dir", str(tmp_path / "cache"), "--cache-max-gib", repr(bound_gib), "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert f'"tagged": {len(pairs)}' in job.stdout and "pruned" in job.stdout
    left = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert left <= bound_gib * 2**30


def test_the_tag_job_refuses_a_size_bound_for_an_s3_cache(tmp_path: Path) -> None:
    job = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "tag.py"), "--store", str(tmp_path), "--catalog", "sqlite://",
         "--cache-dir", "s3://bucket/cache", "--cache-max-gib", "10"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert job.returncode == 2 and "lifecycle rule" in job.stderr


# --- pages --------------------------------------------------------------------------------------------------------------


def midi_store(root: Path, clips, copies: int) -> list[str]:
    """``copies`` × the clips' MIDI files under distinct names in folders: many small items."""
    store = LocalStore(root)
    keys = []
    for copy in range(copies):
        for clip in clips:
            key = f"shard{copy % 3}/{copy:02d}-{clip.name}"
            store.write(f"{key}.mid", clip.midi_path.read_bytes())
            keys.append(key)
    return sorted(keys)


class _CountingStore(LocalStore):
    """Remembers how many objects the listing had yielded when the first item was read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listed = 0
        self.listed_at_first_read: int | None = None

    def list(self, prefix: str = ""):
        for obj in super().list(prefix):
            self.listed += 1
            yield obj

    def read(self, key: str, **pin) -> bytes:
        if self.listed_at_first_read is None:
            self.listed_at_first_read = self.listed
        return super().read(key, **pin)


def test_a_store_of_many_pages_is_tagged_exactly_once_without_holding_its_listing(ray_address, models, clips,
                                                                                  tmp_path: Path) -> None:
    keys = midi_store(tmp_path / "store", clips[:5], copies=3)  # 15 items
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    paged = TagConfig(page_size=4, batch_size=2)

    summary = tag_store(str(tmp_path / "store"), catalog=catalog, model=models[0], tagging=paged, progress=False)

    assert (summary.listed, summary.tagged, summary.failed, summary.passes) == (15, 15, 0, 4)
    tagged = labels(catalog)
    assert sorted(tagged) == keys and {label["run_id"] for label in tagged.values()} == {summary.run_id}
    assert count(catalog, "SELECT COUNT(*) FROM labels") == 15
    # An unchanged night: the listing and the catalog comparison, page by page, and no pass at all.
    again = tag_store(str(tmp_path / "store"), catalog=catalog, model=models[0], tagging=paged, progress=False)
    assert (again.listed, again.tagged, again.skipped, again.passes) == (15, 0, 15, 0)
    assert again.stage_seconds["features"] == again.stage_seconds["inference"] == 0
    # The first pass starts while most of the listing is still to come (the local loop, same planning).
    counting = _CountingStore(tmp_path / "store")
    local = tag_store_local(counting, catalog=f"sqlite:///{tmp_path / 'local.db'}", model=models[0], tagging=paged)
    assert (local.tagged, local.passes) == (15, 4)
    assert counting.listed_at_first_read < 15


def test_a_job_killed_between_pages_and_run_again_loses_and_duplicates_nothing(ray_address, models, clips,
                                                                               tmp_path: Path) -> None:
    keys = midi_store(tmp_path / "store", clips[:6], copies=2)  # 12 items, pages of 3
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    job = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "tag.py"), "--store", str(tmp_path / "store"), "--catalog", catalog,
         "--model", models[0], "--address", ray_address, "--page-size", "3", "--batch-size", "1",
         "--metrics-port", "0", "--no-progress", "--no-cache"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 180
        written = 0
        while time.monotonic() < deadline and job.poll() is None and written < 3:  # the first page is written
            try:
                written = count(catalog, "SELECT COUNT(*) FROM labels")
            except sa.exc.OperationalError:
                written = 0  # no schema yet
            time.sleep(0.05)
        assert job.poll() is None, job.stdout.read().decode()[-3000:]
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    before = count(catalog, "SELECT COUNT(*) FROM labels")
    assert 3 <= before < len(keys), "the job finished before it could be killed"

    rerun = tag_store(str(tmp_path / "store"), catalog=catalog, model=models[0],
                      tagging=TagConfig(page_size=3, batch_size=1), progress=False)

    assert rerun.status == "succeeded" and rerun.failed == 0
    assert (rerun.skipped, rerun.tagged) == (before, len(keys) - before)
    assert sorted(labels(catalog)) == keys  # nothing lost
    assert count(catalog, "SELECT COUNT(*) FROM labels") == len(keys)  # nothing twice
    assert count(catalog, "SELECT COUNT(*) FROM items") == len(keys)
    assert count(catalog, "SELECT COUNT(*) FROM failures") == 0
