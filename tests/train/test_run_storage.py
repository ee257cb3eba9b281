"""Where Ray Train keeps a run: the one pyarrow filesystem mer builds (for Ray Train's RunConfig), and starting a
run over (resume=False) deletes exactly its folder, in a folder and in S3 (moto)."""
from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from mer.storage import open_store
from mer.train.loop import _delete_run, ray_storage


def test_ray_train_gets_a_folder_as_is_and_s3_through_the_explicit_endpoint(s3_endpoint: str, s3_bucket: str,
                                                                            tmp_path: Path) -> None:
    assert ray_storage(str(tmp_path), endpoint_url=s3_endpoint) == (str(tmp_path), None)
    path, filesystem = ray_storage(f"s3://{s3_bucket}/runs", endpoint_url=s3_endpoint)
    assert path == f"{s3_bucket}/runs" and isinstance(filesystem, pafs.S3FileSystem)
    open_store(f"s3://{s3_bucket}/runs", endpoint_url=s3_endpoint).write("r/x.json", b"{}")
    with filesystem.open_input_stream(f"{path}/r/x.json") as handle:  # the same server as mer.storage's
        assert handle.read() == b"{}"


def test_starting_over_deletes_the_run_and_only_it(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    for storage in (str(tmp_path), f"s3://{s3_bucket}/runs"):
        store = open_store(storage, endpoint_url=s3_endpoint)
        for key in ("run/checkpoint_000000/state.pt", "run/result.json", "run-2/result.json", "models/LATEST"):
            store.write(key, b"x")
        _delete_run(f"{storage}/run", s3_endpoint)
        assert [obj.key for obj in store.list()] == ["models/LATEST", "run-2/result.json"], storage
        _delete_run(f"{storage}/never-ran", s3_endpoint)  # nothing there: nothing to do
