"""Object storage: a real folder with awkward names, and S3 over HTTP (moto's server mode)."""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import boto3
import pytest

from mer.errors import BadInputError, ObjectChangedError
from mer.storage import LocalStore, S3Store, StoredObject, key_problem, open_store
from mer.tagging.storage import list_items

pytest_plugins = ["fixtures_services"]

# key → bytes: nested prefixes, spaces, non-ASCII letters, upper-case extensions, dots in stems, noise files.
NASTY_TREE = {
    "plain.mid": b"midi-1",
    "plain.wav": b"wave-1",
    "Nested/deep/Ünïcödé Étude №3.MIDI": b"midi-2",
    "Nested/deep/Ünïcödé Étude №3.FLAC": b"flac-2",
    "with space/a piece.mid": b"midi-3",
    "only audio.ogg": b"ogg-4",
    "dup.mp3": b"mp3-5",
    "dup.wav": b"wav-5",
    "op.10 no.3.v2.mid": b"midi-6",
    "notes.txt": b"not an item",
    "plain.mid.bak": b"backup",
    "README": b"no extension",
}


def write_tree(root: Path, tree: dict[str, bytes]) -> None:
    for key, data in tree.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def summary(items) -> dict[str, tuple[str | None, str | None]]:
    return {item.stem: (item.midi and item.midi.key, item.audio and item.audio.key) for item in items}


EXPECTED_ITEMS = {
    "Nested/deep/Ünïcödé Étude №3": ("Nested/deep/Ünïcödé Étude №3.MIDI", "Nested/deep/Ünïcödé Étude №3.FLAC"),
    "dup": (None, "dup.wav"),
    "only audio": (None, "only audio.ogg"),
    "op.10 no.3.v2": ("op.10 no.3.v2.mid", None),
    "plain": ("plain.mid", "plain.wav"),
    "with space/a piece": ("with space/a piece.mid", None),
}


# --- keys -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fine"),
    [
        ("a.mid", True),
        ("with space/Ünïcödé.mid", True),
        ("a..b.mid", True),  # dots inside a name are not a parent reference
        ("../a.mid", False),
        ("x/../../a.mid", False),
        ("x\\..\\a.mid", False),
        ("/etc/passwd", False),
        ("C:/x.mid", False),
        ("", False),
        ("bad\nname.mid", False),
    ],
)
def test_key_problem_rejects_only_unsafe_keys(key: str, fine: bool) -> None:
    assert (key_problem(key) is None) == fine


# --- LocalStore -------------------------------------------------------------------------------------------------------


def test_local_list_items_pairs_nasty_names(tmp_path: Path) -> None:
    write_tree(tmp_path, NASTY_TREE)
    items, rejects = list_items(LocalStore(tmp_path))

    assert summary(items) == EXPECTED_ITEMS
    # The lossless recording wins deterministically; the other one is reported, not silently dropped.
    assert [reject.key for reject in rejects] == ["dup.mp3"]
    assert "dup.wav" in rejects[0].reason
    assert rejects[0].version == LocalStore(tmp_path).stat("dup.mp3").version  # recorded once per version
    plain = next(item for item in items if item.stem == "plain")
    assert plain.modalities == ("midi", "audio")
    assert next(item for item in items if item.stem == "only audio").modalities == ("audio",)
    assert plain.midi is not None and plain.midi.size == len(b"midi-1")


def test_undecodable_file_names_and_huge_objects_are_rejects_with_printable_keys(tmp_path: Path) -> None:
    (tmp_path / "good.mid").write_bytes(b"midi")
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.mid"), "wb") as handle:  # Latin-1 name, not UTF-8
        handle.write(b"midi")
    (tmp_path / "huge.wav").write_bytes(b"x" * 2000)

    items, rejects = list_items(LocalStore(tmp_path), max_bytes=1000)

    assert [item.stem for item in items] == ["good"]
    reasons = {reject.key: reject.reason for reject in rejects}
    assert "UTF-8" in reasons["caf\\xe9.mid"]
    assert "2,000 bytes" in reasons["huge.wav"]
    for key, reason, version in rejects:  # what the catalog and the logs get must encode cleanly
        (key + reason + version).encode("utf-8")


def test_local_prefix_is_a_string_prefix(tmp_path: Path) -> None:
    write_tree(tmp_path, NASTY_TREE)
    store = LocalStore(tmp_path)

    items, _ = list_items(store, "Nested/")
    assert [item.stem for item in items] == ["Nested/deep/Ünïcödé Étude №3"]
    items, _ = list_items(store, "Nested/deep/Ü")
    assert len(items) == 1
    items, _ = list_items(store, "pl")
    assert [item.stem for item in items] == ["plain"]
    assert list_items(store, "no/such/folder/") == ([], [])


def test_local_version_is_size_and_mtime_and_changes_on_rewrite(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = store.write("a/b.mid", b"12345")
    st = (tmp_path / "a" / "b.mid").stat()
    assert first == StoredObject("a/b.mid", 5, f"5-{st.st_mtime_ns}")
    assert list(store.list()) == [first]

    second = store.write("a/b.mid", b"123456")
    os.utime(tmp_path / "a" / "b.mid", ns=(st.st_mtime_ns + 10**9, st.st_mtime_ns + 10**9))
    assert store.stat("a/b.mid").version != first.version
    assert second.size == 6
    items, _ = list_items(store)
    assert items[0].version == f"midi:{store.stat('a/b.mid').version}"


def test_a_local_read_pinned_to_the_listed_version_refuses_a_file_changed_since(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    listed = store.write("a.mid", b"old bytes")
    assert store.read("a.mid", version=listed.version) == b"old bytes"

    (tmp_path / "a.mid").write_bytes(b"new bytes, rewritten in place")  # another size (and mtime)

    with pytest.raises(ObjectChangedError, match="changed after it was listed"):
        store.read("a.mid", version=listed.version)
    now = store.stat("a.mid")
    assert store.read("a.mid", version=now.version) == b"new bytes, rewritten in place"
    assert store.read("a.mid") == b"new bytes, rewritten in place"  # unpinned: whatever is there


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write("model/LATEST", b"v1")
    with pytest.raises(TypeError):
        store.write("model/LATEST", "not bytes")  # type: ignore[arg-type]  # fails after the temp file exists
    assert store.read("model/LATEST") == b"v1"
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["LATEST"]
    assert [obj.key for obj in store.list()] == ["model/LATEST"]


def test_local_store_never_reads_or_writes_outside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.mid"
    secret.write_bytes(b"secret")
    (root / "link.mid").symlink_to(secret)
    store = LocalStore(root)

    for key in ("../secret.mid", "/etc/passwd", "a/../../secret.mid"):
        with pytest.raises(BadInputError):
            store.read(key)
    with pytest.raises(BadInputError, match="outside the store root"):
        store.read("link.mid")
    with pytest.raises(BadInputError):
        store.write("../escaped.mid", b"x")
    assert not (tmp_path / "escaped.mid").exists()


def test_local_missing_objects_and_roots(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.read("nope.mid")
    with pytest.raises(FileNotFoundError):
        store.stat("nope.mid")
    assert not store.exists("nope.mid")
    with pytest.raises(FileNotFoundError):
        list(LocalStore(tmp_path / "missing").list())


def test_local_store_pickles(tmp_path: Path) -> None:
    write_tree(tmp_path, NASTY_TREE)
    store = pickle.loads(pickle.dumps(LocalStore(tmp_path)))
    assert store.read("Nested/deep/Ünïcödé Étude №3.FLAC") == b"flac-2"


def test_open_store_picks_the_store_from_the_url(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path), LocalStore)
    assert open_store(f"file://{tmp_path}").root == tmp_path
    s3 = open_store("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("bucket", "some/prefix/", "http://127.0.0.1:1")
    with pytest.raises(ValueError, match="scheme"):
        open_store("ftp://host/x")


# --- S3 (moto server over HTTP) ---------------------------------------------------------------------------------------


def test_s3_list_items_pairs_keys_and_uses_etags(s3_endpoint: str, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/collection", endpoint_url=s3_endpoint)
    for key, data in NASTY_TREE.items():
        store.write(key, data)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    # Keys no path-safe reader may use, and an object outside the store's prefix.
    client.put_object(Bucket=s3_bucket, Key="collection/evil/../x.mid", Body=b"x")
    client.put_object(Bucket=s3_bucket, Key="collection//abs.mid", Body=b"x")
    client.put_object(Bucket=s3_bucket, Key="elsewhere/plain.mid", Body=b"x")

    items, rejects = list_items(store)

    assert summary(items) == EXPECTED_ITEMS
    reasons = {reject.key: reject.reason for reject in rejects}
    assert reasons.keys() == {"/abs.mid", "dup.mp3", "evil/../x.mid"}
    assert "'..'" in reasons["evil/../x.mid"]
    assert "absolute" in reasons["/abs.mid"]
    assert {reject.version for reject in rejects if reject.key != "dup.mp3"} == {hashlib.md5(b"x").hexdigest()}
    for item in items:
        for obj in (item.midi, item.audio):
            if obj is not None:
                # Single-part uploads: the ETag is the MD5 of the bytes.
                assert obj.version == hashlib.md5(NASTY_TREE[obj.key]).hexdigest()
                assert obj.version == client.head_object(Bucket=s3_bucket, Key=f"collection/{obj.key}")["ETag"].strip('"')
                assert store.read(obj.key) == NASTY_TREE[obj.key]

    items, _ = list_items(store, "Nested/")
    assert [item.stem for item in items] == ["Nested/deep/Ünïcödé Étude №3"]


def test_s3_version_changes_when_the_object_changes(s3_endpoint: str, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)
    first = store.write("a.mid", b"one")
    assert store.stat("a.mid") == first
    second = store.write("a.mid", b"two")
    assert second.version != first.version
    assert [obj.version for obj in store.list()] == [second.version]


def test_s3_missing_objects_and_buckets(s3_endpoint: str, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)
    with pytest.raises(FileNotFoundError):
        store.read("nope.mid")
    assert not store.exists("nope.mid")
    with pytest.raises(BadInputError):
        store.read("../nope.mid")
    with pytest.raises(FileNotFoundError, match="bucket"):
        list(open_store("s3://no-such-bucket-mer", endpoint_url=s3_endpoint).list())


def test_s3_store_pickles_without_client_or_credentials(s3_endpoint: str, s3_bucket: str, aws_env) -> None:
    store = open_store(f"s3://{s3_bucket}/p", endpoint_url=s3_endpoint)
    store.write("x.mid", b"data")  # the client now exists
    blob = pickle.dumps(store)

    secret = aws_env["AWS_SECRET_ACCESS_KEY"].encode()
    assert secret not in blob and secret.decode() not in repr(store)
    assert aws_env["AWS_ACCESS_KEY_ID"] not in repr(store)
    clone = pickle.loads(blob)
    assert clone.read("x.mid") == b"data"


def test_an_s3_read_pinned_by_etag_refuses_an_object_overwritten_since(s3_endpoint: str, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/p", endpoint_url=s3_endpoint)
    store.write("a.mid", b"old bytes")
    [listed] = store.list()
    assert not store.versioned and listed.version_id == ""

    store.write("a.mid", b"new bytes")

    with pytest.raises(ObjectChangedError, match="changed after it was listed"):
        store.read("a.mid", version=listed.version)
    [relisted] = store.list()
    assert store.read("a.mid", version=relisted.version) == b"new bytes"


def test_a_versioned_bucket_lists_current_versions_and_reads_exactly_the_listed_one(
        s3_endpoint: str, s3_versioned_bucket: str) -> None:
    store = open_store(f"s3://{s3_versioned_bucket}/p", endpoint_url=s3_endpoint)
    written = store.write("a.mid", b"old bytes")
    store.write("gone.mid", b"deleted later")
    store.client.delete_object(Bucket=s3_versioned_bucket, Key="p/gone.mid")  # a delete marker: not listed
    [listed] = store.list()
    assert store.versioned and listed == written and listed.version_id

    store.write("a.mid", b"new bytes")

    # The listed version's bytes, under the listed version's ETag, though the key now holds other bytes.
    assert store.read("a.mid", version=listed.version, version_id=listed.version_id) == b"old bytes"
    [relisted] = store.list()  # one entry per key: its current version
    assert (relisted.version, relisted.version_id) != (listed.version, listed.version_id)
    assert store.read("a.mid", version=relisted.version, version_id=relisted.version_id) == b"new bytes"
    assert pickle.loads(pickle.dumps(store)).read("a.mid", version_id=listed.version_id) == b"old bytes"
