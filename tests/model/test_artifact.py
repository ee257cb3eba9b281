"""Model artifacts: what training writes is what tagging and evaluation load — by path, URL, version or LATEST."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mer.config import MerConfig
from mer.errors import ConfigError
from mer.model import MerModel
from mer.model.artifact import latest_version, load_artifact, save_artifact
from tiny import tiny_config as tiny


def tiny_config(**model) -> MerConfig:
    return tiny(window_seconds=2.0, max_tokens=32, resnet_blocks=2, **model)

def trained_model(config: MerConfig, seed: int) -> MerModel:
    """A model whose weights differ from a fresh one's (so loading can be told from rebuilding)."""
    torch.manual_seed(seed)
    model = MerModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    return model


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_saved_artifact_loads_with_its_weights_config_and_meta(tmp_path: Path) -> None:
    config = tiny_config(branches=("harmony", "tone"))
    model = trained_model(config, seed=1)
    url = save_artifact(model.state_dict(), config=config, storage=str(tmp_path),
                        meta={"data_fingerprint": "abc123", "val_metrics": {"4q": 0.5}})

    folder = Path(url)
    assert folder.parent == tmp_path / "models"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "meta.json", "model.pt"]
    artifact = load_artifact(url, device="cpu")

    assert artifact.config == config
    assert_same_weights(artifact.model, model)
    assert not artifact.model.training
    assert artifact.model.branches == ("harmony", "tone")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == artifact.meta
    assert meta["version"] == folder.name == artifact.version
    assert meta["data_fingerprint"] == "abc123"
    assert meta["val_metrics"] == {"4q": 0.5}
    assert meta["seed"] == config.training.seed
    assert meta["branches"] == ["harmony", "tone"]
    assert meta["created"]


def test_versions_and_latest(tmp_path: Path) -> None:
    config = tiny_config()
    first = save_artifact(trained_model(config, 1).state_dict(), config=config, storage=str(tmp_path), meta={},
                          version="v1")
    second_model = trained_model(config, 2)
    save_artifact(second_model.state_dict(), config=config, storage=str(tmp_path), meta={}, version="v2")

    assert latest_version(str(tmp_path)) == "v2"
    assert_same_weights(load_artifact(None, storage=str(tmp_path)).model, second_model)  # LATEST
    assert_same_weights(load_artifact("LATEST", storage=str(tmp_path)).model, second_model)
    assert load_artifact("v1", storage=str(tmp_path)).url.endswith("models/v1")
    assert load_artifact(first).version == "v1"  # by path
    assert load_artifact(f"file://{first}").version == "v1"  # by URL


def test_ddp_prefix_is_stripped(tmp_path: Path) -> None:
    config = tiny_config()
    model = trained_model(config, 3)
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}  # what a DDP wrapper's state_dict has
    url = save_artifact(wrapped, config=config, storage=str(tmp_path), meta={})
    assert_same_weights(load_artifact(url).model, model)


def test_missing_artifacts_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no trained model"):
        load_artifact(None, storage=str(tmp_path))
    with pytest.raises(ConfigError, match="not found"):
        load_artifact("nope", storage=str(tmp_path))
    with pytest.raises(ConfigError, match="no storage"):
        load_artifact("v7")

    config = tiny_config()
    url = save_artifact(MerModel(config).state_dict(), config=config, storage=str(tmp_path), meta={})
    (Path(url) / "model.pt").unlink()
    with pytest.raises(ConfigError, match="model.pt"):
        load_artifact(url)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    config = tiny_config()
    url = save_artifact(MerModel(config).state_dict(), config=config, storage=str(tmp_path), meta={})
    bigger = dataclasses.replace(config, model=dataclasses.replace(config.model, fc_hidden=16))
    (Path(url) / "config.json").write_text(bigger.to_json())
    with pytest.raises(ConfigError, match="do not match"):
        load_artifact(url)


def test_artifacts_in_s3(s3_bucket: str, s3_endpoint: str) -> None:
    config = tiny_config()
    model = trained_model(config, 4)
    storage = f"s3://{s3_bucket}/mer"
    url = save_artifact(model.state_dict(), config=config, storage=storage, meta={"seed": 3}, version="v9",
                        endpoint_url=s3_endpoint)

    assert url == f"{storage}/models/v9"
    assert latest_version(storage, endpoint_url=s3_endpoint) == "v9"
    for ref, kwargs in ((url, {}), ("v9", {"storage": storage}), (None, {"storage": storage})):
        artifact = load_artifact(ref, endpoint_url=s3_endpoint, **kwargs)
        assert_same_weights(artifact.model, model)
        assert artifact.meta["seed"] == 3
    with pytest.raises(ConfigError, match="not found"):
        load_artifact("v10", storage=storage, endpoint_url=s3_endpoint)
