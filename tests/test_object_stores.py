"""The object-store operations every user of mer.storage relies on, the same in a folder and in S3 (moto's server):
deleting an object or a prefix, listing folders, modified times, and no endpoint but the one passed.

(Listing, pinned reads and key checks, the tagger's side of stores, are in tests/tagging/test_storage.py.)
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import mer.storage
from mer.storage import LocalStore, ObjectStore, S3Store, open_store

KEYS = ("a.bin", "ab.bin", "run/x.bin", "run/sub/y.bin", "run2/z.bin", "runs/w.bin")


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path: Path) -> ObjectStore:
    """An empty store of each kind holding :data:`KEYS`."""
    if request.param == "folder":
        made: ObjectStore = LocalStore(tmp_path / "store")
    else:
        made = open_store(f"s3://{request.getfixturevalue('s3_bucket')}/root",
                          endpoint_url=request.getfixturevalue("s3_endpoint"))
    for key in KEYS:
        made.write(key, key.encode())
    return made


def keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return [obj.key for obj in store.list(prefix)]


def test_a_deleted_object_is_gone_and_nothing_else_is(store: ObjectStore) -> None:
    store.delete("run/x.bin")
    assert not store.exists("run/x.bin")
    with pytest.raises(FileNotFoundError):
        store.read("run/x.bin")
    assert keys(store) == sorted(set(KEYS) - {"run/x.bin"})
    store.delete("run/x.bin")  # deleting what is not there is no error
    store.delete("never/was.bin")


@pytest.mark.parametrize(("prefix", "gone"), [
    ("run/", {"run/x.bin", "run/sub/y.bin"}),
    ("run", {"run/x.bin", "run/sub/y.bin", "run2/z.bin", "runs/w.bin"}),  # a string prefix, as in S3
    ("run/sub/", {"run/sub/y.bin"}),
    ("nothing/", set()),
    ("", set(KEYS)),
])
def test_delete_prefix_removes_exactly_the_prefixs_keys(store: ObjectStore, prefix: str, gone: set[str]) -> None:
    assert store.delete_prefix(prefix) == len(gone)
    assert keys(store) == sorted(set(KEYS) - gone)
    assert not any(store.exists(key) for key in gone)
    assert keys(store, prefix) == []


def test_delete_prefix_leaves_no_empty_folders_in_a_folder_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key in KEYS:
        store.write(key, b"x")
    store.delete_prefix("run/")
    assert not (tmp_path / "run").exists() and (tmp_path / "run2").is_dir()
    assert store.delete_prefix("") == 4 and list(tmp_path.iterdir()) == []  # the root stays
    assert LocalStore(tmp_path / "missing").delete_prefix("") == 0


def test_list_folders_gives_the_common_prefixes_one_level_down(store: ObjectStore) -> None:
    assert list(store.list_folders()) == ["run/", "run2/", "runs/"]
    assert list(store.list_folders("run/")) == ["run/sub/"]
    assert list(store.list_folders("run/sub/")) == []
    assert list(store.list_folders("nothing/")) == []
    with pytest.raises(ValueError, match="ends with '/'"):
        list(store.list_folders("run"))
    store.delete_prefix("run/sub/")
    assert list(store.list_folders("run/")) == []  # a folder is there while an object is


@pytest.mark.parametrize(("first_level_page", "folders_ahead"), [(1000, 1), (1000, 8), (3, 8)])
def test_an_s3_listing_is_the_whole_prefix_in_s3s_key_order_folder_by_folder_or_flat(
        monkeypatch, s3_endpoint: str, s3_bucket: str, first_level_page: int, folders_ahead: int) -> None:
    # 1000: the first level fits one page, so each folder is listed on its own (one at a time, or several at
    # once); 3: it does not, so flat.
    monkeypatch.setattr(mer.storage, "FIRST_LEVEL_PAGE", first_level_page)
    monkeypatch.setattr(mer.storage, "LIST_FOLDERS_AHEAD", folders_ahead)
    store = open_store(f"s3://{s3_bucket}/root", endpoint_url=s3_endpoint)
    # Keys beside folders of nearly the same name ('.' and '-' sort before '/', '0' after), nested folders, a key
    # right under the root, and a folder marker object as consoles make them.
    names = ["run.bin", "run-a.bin", "run/x.bin", "run/sub/y.bin", "run/sub/z/w.bin", "run0.bin", "run0/v.bin",
             "a.bin", "zz/deep/er/u.bin"]
    for key in names:
        store.write(key, b"x")
    store.client.put_object(Bucket=s3_bucket, Key="root/marker/", Body=b"")
    flat = [entry["Key"].removeprefix("root/")
            for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="root/")
            for entry in page.get("Contents", []) if not entry["Key"].endswith("/")]
    assert flat == sorted(names)
    assert keys(store) == flat
    assert keys(store, "run") == [key for key in flat if key.startswith("run")]  # a string prefix, as in S3
    assert keys(store, "run/sub/") == ["run/sub/y.bin", "run/sub/z/w.bin"]
    assert keys(store, "nothing/") == []


def test_a_folder_the_s3_walk_cannot_list_fails_the_listing_after_the_keys_before_it(
        s3_endpoint: str, s3_bucket: str) -> None:
    from botocore.exceptions import ClientError

    store = open_store(f"s3://{s3_bucket}/root", endpoint_url=s3_endpoint)
    names = [f"{folder}/{index}.bin" for folder in "abcdefghij" for index in range(3)]
    for key in names:
        store.write(key, b"x")

    def deny_folder_e(params: dict, **_: object) -> None:
        if params.get("Prefix") == "root/e/":
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no listing of e/"}}, "ListObjectsV2")

    store.client.meta.events.register("provide-client-params.s3.ListObjectsV2", deny_folder_e)
    listed = []
    with pytest.raises(ClientError, match="AccessDenied"):
        for obj in store.list():
            listed.append(obj.key)
    assert listed == [key for key in names if key < "e/"]  # the folders after e/, paged already, are not given


def test_a_folder_with_no_objects_is_no_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    store = LocalStore(tmp_path)
    store.write("full/a.bin", b"x")
    assert list(store.list_folders()) == ["full/"]
    with pytest.raises(FileNotFoundError):
        list(LocalStore(tmp_path / "missing").list_folders())


def test_listings_and_stat_say_when_an_object_was_written(store: ObjectStore) -> None:
    before = time.time()
    store.write("new.bin", b"new")
    [listed] = [obj for obj in store.list() if obj.key == "new.bin"]
    assert listed.modified is not None and listed.modified >= before - 2  # S3 stamps whole seconds
    assert store.stat("new.bin").modified == pytest.approx(listed.modified)


def test_touch_makes_a_folder_objects_time_now_and_keeps_its_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write("a.bin", b"bytes")
    os.utime(tmp_path / "a.bin", (1_000_000, 1_000_000))
    store.touch("a.bin")
    assert store.stat("a.bin").modified > time.time() - 60 and store.read("a.bin") == b"bytes"
    with pytest.raises(FileNotFoundError):
        store.touch("missing.bin")


def test_remove_temporaries_deletes_only_old_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write("a/b.bin", b"kept")
    old, young = tmp_path / "a" / ".c.bin.mer-tmp-old", tmp_path / "a" / ".d.bin.mer-tmp-young"
    old.write_bytes(b"12345")
    young.write_bytes(b"1")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.remove_temporaries(older_than=3600) == 5
    assert not old.exists() and young.exists() and store.read("a/b.bin") == b"kept"


def test_an_unsynced_write_is_still_atomic_and_whole(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    written = store.write("a.bin", b"data", sync=False)
    assert store.read("a.bin") == b"data" and store.stat("a.bin") == written
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary file left


def test_s3_takes_no_endpoint_from_the_environment(monkeypatch, s3_endpoint: str, s3_bucket: str) -> None:
    # The endpoint is passed, never picked up: with the moto server only in AWS_ENDPOINT_URL, a store without
    # endpoint_url is an AWS store (never contacted here), and one with it reaches the server.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert S3Store(s3_bucket).client.meta.endpoint_url.startswith("https://s3.")
    assert S3Store(s3_bucket, endpoint_url=s3_endpoint).client.meta.endpoint_url == s3_endpoint
