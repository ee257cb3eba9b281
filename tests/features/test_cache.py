"""The feature cache: exact round trips, keys that change with contents and config, damage is a miss."""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mer.config import SUMMARY_KEY_SIZE, FeatureConfig, config_fingerprint
from mer.features import SUMMARY_SIZE, ItemFeatures, extract_features
from mer.features.cache import FeatureCache
from mer.features.midi import read_midi
from mer.features.render import render_audio
from mer.storage import open_store

CONFIG = FeatureConfig()
CLIP = "Q1_0vLPYiPN7qY_0"


def random_item(rng: np.random.Generator, *, name: str = "piece", windows: int = 3,
                config: FeatureConfig = CONFIG) -> ItemFeatures:
    """Features of the config's shapes filled with random values (every bit pattern must survive the cache)."""
    frames = config.frames_per_window
    return ItemFeatures(
        name=name,
        duration=float(windows * config.hop_seconds - 3.25),
        window_starts=np.arange(windows) * config.hop_seconds,
        tokens=rng.integers(0, config.vocab_size, (windows, config.max_tokens)),
        token_lengths=rng.integers(0, config.max_tokens + 1, windows),
        chroma=rng.random((windows, 12, frames), dtype=np.float32),
        mfcc=rng.standard_normal((windows, config.n_mfcc, frames), dtype=np.float32) * 100,
        present=np.array([True, False, True]),
        summary=rng.standard_normal((windows, SUMMARY_SIZE), dtype=np.float32),
        pitch_classes=rng.dirichlet(np.ones(12)),
    )


def test_put_then_get_returns_the_same_features(tmp_path: Path, rng: np.random.Generator) -> None:
    cache = FeatureCache(tmp_path)
    item = random_item(rng)
    key = cache.key(b"midi bytes", b"audio bytes", config=CONFIG)
    assert cache.get(key) is None
    path = cache.put(key, item)
    assert path == cache.path(key) and path.is_file()
    loaded = cache.get(key)
    assert loaded == item
    assert loaded.chroma.flags.writeable  # ready for torch.from_numpy without warnings


def test_a_real_clips_features_round_trip(tmp_path: Path, emopia: Path) -> None:
    data = (emopia / "midis" / f"{CLIP}.mid").read_bytes()
    midi = read_midi(data, name=CLIP)
    item = extract_features(name=CLIP, midi=midi, audio=render_audio(midi, config=CONFIG, name=CLIP), config=CONFIG)
    cache = FeatureCache(tmp_path)
    key = cache.key(data, config=CONFIG)
    cache.put(key, item)
    assert cache.get(key) == item
    assert ItemFeatures.from_window_rows(cache.get(key).window_rows()) == item


def test_files_live_under_the_config_fingerprint_in_256_shards(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = cache.key(b"x", config=CONFIG)
    fingerprint, digest = key.split("-")
    assert fingerprint == config_fingerprint(CONFIG) and len(digest) == 64
    assert cache.path(key) == tmp_path / fingerprint / digest[:2] / f"{digest}.parquet"
    for bad in ("../../etc/passwd", "abc", key + "/x", key.upper()):
        with pytest.raises(ValueError):
            cache.path(bad)


def test_keys_change_with_contents_their_order_and_the_config(tmp_path: Path, rng: np.random.Generator) -> None:
    key = FeatureCache.key
    assert key(b"a", b"b", config=CONFIG) == key(b"a", b"b", config=CONFIG)
    assert key(b"a", b"b", config=CONFIG) != key(b"b", b"a", config=CONFIG)
    assert key(b"ab", b"c", config=CONFIG) != key(b"a", b"bc", config=CONFIG)
    assert key(b"a", config=CONFIG) != key(b"a", b"", config=CONFIG)
    other = replace(CONFIG, window_seconds=20.0)
    assert key(b"a", config=CONFIG) != key(b"a", config=other)
    # An item cached under one config is a miss under another.
    cache = FeatureCache(tmp_path)
    cache.put(key(b"a", config=CONFIG), random_item(rng))
    assert cache.get(key(b"a", config=other)) is None
    with pytest.raises(TypeError):
        key("text, not bytes", config=CONFIG)


def test_get_can_rename_features_shared_by_identical_files(tmp_path: Path, rng: np.random.Generator) -> None:
    cache = FeatureCache(tmp_path)
    key = cache.key(b"same bytes", config=CONFIG)
    cache.put(key, random_item(rng, name="first.mid"))
    assert cache.get(key).name == "first.mid"
    renamed = cache.get(key, name="copy.mid")
    assert renamed.name == "copy.mid" and np.array_equal(renamed.chroma, cache.get(key).chroma)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_file_is_a_miss_and_is_removed(tmp_path: Path, rng: np.random.Generator, damage: str) -> None:
    cache = FeatureCache(tmp_path)
    key = cache.key(b"x", config=CONFIG)
    path = cache.put(key, random_item(rng))
    data = path.read_bytes()
    path.write_bytes({"garbage": rng.bytes(5000), "truncated": data[: len(data) // 2], "empty": b""}[damage])
    assert cache.get(key) is None
    assert not path.exists()
    cache.put(key, random_item(rng))  # and the slot is usable again
    assert cache.get(key) is not None


def test_an_entry_written_before_the_summary_grew_is_a_miss_under_the_same_key(tmp_path: Path,
                                                                              rng: np.random.Generator,
                                                                              monkeypatch) -> None:
    """The texture descriptors widened the summary without a new FEATURE_VERSION (so keys, and the data
    fingerprints of earlier models, stay): a narrower entry must be recomputed, never read."""
    import mer.features.extract as extract

    cache = FeatureCache(tmp_path)
    key = cache.key(b"x", config=CONFIG)
    item = random_item(rng)
    with monkeypatch.context() as before:
        before.setattr(extract, "SUMMARY_SIZE", SUMMARY_KEY_SIZE)  # the summary as it was written until 2026-12-07
        cache.put(key, replace(item, summary=item.summary[:, :SUMMARY_KEY_SIZE]))
    assert cache.key(b"x", config=CONFIG) == key
    assert cache.get(key) is None and not cache.path(key).exists()


def test_a_foreign_parquet_file_is_a_miss(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cache = FeatureCache(tmp_path)
    key = cache.key(b"x", config=CONFIG)
    cache.path(key).parent.mkdir(parents=True)
    pq.write_table(pa.table({"a": [1, 2, 3]}), cache.path(key))
    assert cache.get(key) is None


def _put_repeatedly(root: str, key: str, seed: int, repeats: int) -> None:
    cache = FeatureCache(root)
    item = random_item(np.random.default_rng(seed))
    for _ in range(repeats):
        cache.put(key, item)


def test_concurrent_puts_of_one_key_never_expose_a_broken_file(tmp_path: Path, caplog) -> None:
    cache = FeatureCache(tmp_path)
    key = cache.key(b"contended", config=CONFIG)
    # Two writers, as two Ray workers extracting the same file would be (same contents -> same features).
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_put_repeatedly, args=(str(tmp_path), key, 7, 15)) for _ in range(2)]
    for writer in writers:
        writer.start()
    expected = random_item(np.random.default_rng(7))
    with caplog.at_level(logging.WARNING, logger="mer.features.cache"):
        while any(writer.is_alive() for writer in writers):
            loaded = cache.get(key)
            if loaded is not None:
                assert loaded == expected
    # A torn file would have been read as damaged (a miss, with a warning): the reader saw whole files only.
    assert not [record for record in caplog.records if "unreadable" in record.getMessage()]
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert cache.get(key) == expected
    assert [p.name for p in cache.path(key).parent.iterdir()] == [cache.path(key).name]  # no temp files left


def test_prune_evicts_the_least_recently_used_entries_and_a_hit_refreshes_one(tmp_path: Path,
                                                                              rng: np.random.Generator) -> None:
    cache = FeatureCache(tmp_path)
    keys = [cache.key(bytes([i]), config=CONFIG) for i in range(3)]
    paths = [cache.put(key, random_item(rng)) for key in keys]
    for age, path in enumerate(paths):  # written oldest first, a minute apart
        stamp = time.time() - 3600 + 60 * age
        os.utime(path, (stamp, stamp))
    assert cache.get(keys[0]) is not None  # a hit: now the most recently used
    stale = paths[0].parent / f".{paths[0].name}.mer-tmp-dead"  # a writer killed between write and rename
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    sizes = [path.stat().st_size for path in paths]

    removed = cache.prune(sum(sizes) - 1)

    assert removed == sizes[1] + len(b"half")
    assert [path.exists() for path in paths] == [True, False, True] and not stale.exists()
    assert cache.prune(sum(sizes)) == 0
    assert FeatureCache(tmp_path / "never-written").prune(0) == 0


def test_an_s3_cache_round_trips_drops_damage_and_is_not_pruned(s3_endpoint: str, s3_bucket: str,
                                                                rng: np.random.Generator) -> None:
    import pickle

    cache = FeatureCache(f"s3://{s3_bucket}/cache/", endpoint_url=s3_endpoint)
    item = random_item(rng)
    key = cache.key(b"midi", config=CONFIG)
    assert cache.get(key) is None
    fingerprint, digest = key.split("-")
    assert cache.put(key, item) == f"s3://{s3_bucket}/cache/{fingerprint}/{digest[:2]}/{digest}.parquet"
    assert pickle.loads(pickle.dumps(cache)).get(key) == item  # as a Ray task carries it
    store = open_store(f"s3://{s3_bucket}/cache", endpoint_url=s3_endpoint)
    store.write(f"{fingerprint}/{digest[:2]}/{digest}.parquet", b"torn")
    assert cache.get(key) is None and list(store.list()) == []  # a miss, and removed
    with pytest.raises(ValueError, match="lifecycle"):
        cache.prune(0)
