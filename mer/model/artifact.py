"""The trained model as a folder of files: what training writes and what tagging and evaluation load.

Layout (``storage`` is a local folder or an ``s3://bucket/prefix`` URL; both go through :mod:`mer.storage`)::

    <storage>/models/<version>/model.pt     state_dict (torch.save)
    <storage>/models/<version>/config.json  MerConfig.to_json(): rebuilds the model and its feature extraction
    <storage>/models/<version>/meta.json    version, created, data_fingerprint, val_metrics, branches, seed, ...
    <storage>/models/LATEST                 the newest version id

``meta.json`` is written after the weights and the config, and ``LATEST`` last, so a reader that follows
``LATEST`` never sees a half-written artifact (and each file is written atomically: a temporary file renamed in a
folder, one PUT on S3). An S3-compatible endpoint other than AWS is given as ``endpoint_url`` (None: AWS);
credentials come from the standard AWS chain.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

from mer.config import MerConfig
from mer.errors import BadInputError, ConfigError
from mer.storage import ObjectStore, open_store

if TYPE_CHECKING:
    import torch

    from mer.model.network import MerModel

MODELS_DIR = "models"
LATEST = "LATEST"
FILES = ("model.pt", "config.json", "meta.json")


@dataclass
class Artifact:
    """A loaded model artifact: ``model`` (eval mode, on the device chosen at load time), its ``config`` and
    ``meta`` (the parsed meta.json), and ``url`` (the folder it came from)."""

    model: MerModel
    config: MerConfig
    meta: dict[str, Any]
    url: str

    @property
    def version(self) -> str:
        return str(self.meta["version"])


def is_url(location: str) -> bool:
    return "://" in location


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URL (no normalisation of the scheme's ``//``)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def _store(location: str, *, endpoint_url: str | None = None) -> ObjectStore:
    """The store rooted at ``location``: a local path (relative is fine), ``file://`` or ``s3://`` URL.

    ``endpoint_url`` (e.g. ``http://127.0.0.1:9000``) points ``s3://`` at an S3-compatible server (None: AWS).
    Credentials come from the standard AWS chain.
    """
    try:
        return open_store(location, endpoint_url=endpoint_url)
    except (ValueError, BadInputError) as error:  # a scheme we do not know, an unsafe S3 prefix
        raise ConfigError(f"cannot open storage {location!r}: {error}") from error


def _read(store: ObjectStore, name: str) -> bytes:
    try:
        return store.read(name)
    except FileNotFoundError:
        raise ConfigError(f"model artifact incomplete or missing: no {name} at {join(store.url, name)}") from None


def new_version(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A version id that sorts by creation time: ``YYYYmmdd-HHMMSS-<8 hex of the weights' hash>``."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{digest.hexdigest()[:8]}"


def save_artifact(
    state_dict: Mapping[str, torch.Tensor],
    *,
    config: MerConfig,
    storage: str,
    meta: Mapping[str, Any],
    version: str | None = None,
    set_latest: bool = True,
    endpoint_url: str | None = None,
) -> str:
    """Write a model artifact under ``<storage>/models/<version>/`` and point ``LATEST`` at it.

    Args:
        state_dict: the model's weights (``MerModel.state_dict()``; a DDP wrapper's ``module.`` prefix is
            stripped).
        config: the whole configuration the model was trained with.
        storage: local folder or ``s3://bucket/prefix``.
        meta: extra facts for meta.json, e.g. ``data_fingerprint``, ``val_metrics``, ``seed``, ``run``;
            ``version``, ``created`` and ``branches`` are filled in here.
        version: defaults to :func:`new_version`.
        set_latest: write ``<storage>/models/LATEST``.
        endpoint_url: S3-compatible endpoint for an ``s3://`` storage (e.g. ``http://127.0.0.1:9000``; None: AWS).

    Returns:
        The artifact folder's path or URL.
    """
    import torch

    state = {k.removeprefix("module."): v.detach().cpu() for k, v in state_dict.items()}
    version = version or new_version(state)
    url = join(storage, MODELS_DIR, version)
    store = _store(url, endpoint_url=endpoint_url)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    full_meta = {
        **dict(meta),
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "branches": list(config.model.branches),
        "seed": meta.get("seed", config.training.seed),
    }
    store.write("model.pt", buffer.getvalue())
    store.write("config.json", config.to_json().encode())
    store.write("meta.json", json.dumps(full_meta, indent=2, sort_keys=True, default=str).encode())
    if set_latest:
        _store(join(storage, MODELS_DIR), endpoint_url=endpoint_url).write(LATEST, (version + "\n").encode())
    return url


def latest_version(storage: str, *, endpoint_url: str | None = None) -> str:
    """The version id in ``<storage>/models/LATEST``; ConfigError when there is none."""
    try:
        version = _store(join(storage, MODELS_DIR), endpoint_url=endpoint_url).read(LATEST).decode().strip()
    except FileNotFoundError:
        raise ConfigError(f"no trained model in {storage}: {join(storage, MODELS_DIR, LATEST)} does not exist "
                          "(train one with jobs/train.py, or pass a model path)") from None
    if not version:
        raise ConfigError(f"{join(storage, MODELS_DIR, LATEST)} is empty")
    return version


def resolve_artifact(path_or_url_or_version: str | None, *, storage: str | None = None,
                     endpoint_url: str | None = None) -> str:
    """The artifact folder meant by a path, a URL, a version id (under ``storage``) or None/"LATEST"."""
    ref = path_or_url_or_version
    if ref is None or ref == LATEST:
        if storage is None:
            raise ConfigError("no model given: pass an artifact path/URL, or a storage to take its LATEST model from")
        return join(storage, MODELS_DIR, latest_version(storage, endpoint_url=endpoint_url))
    if is_url(ref) or os.sep in ref or "/" in ref or os.path.isdir(ref):
        return ref
    if storage is None:
        raise ConfigError(f"model {ref!r} looks like a version id, but no storage was given to find it in")
    return join(storage, MODELS_DIR, ref)


@dataclass(frozen=True)
class ArtifactInfo:
    """What a model artifact says about itself, without its weights: ``url`` (the folder), ``config`` (the whole
    :class:`MerConfig`: feature extraction and the network's sizes) and ``meta`` (the parsed meta.json)."""

    url: str
    config: MerConfig
    meta: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.meta["version"])


def read_artifact(
    path_or_url_or_version: str | None = None, *, storage: str | None = None, endpoint_url: str | None = None
) -> ArtifactInfo:
    """Read an artifact's config.json and meta.json, not its weights: what a driver needs to plan a run (the
    version, the feature config) while the workers load the model themselves. Arguments as :func:`load_artifact`.

    Raises:
        ConfigError: nothing there, or config.json or meta.json missing.
    """
    url = resolve_artifact(path_or_url_or_version, storage=storage, endpoint_url=endpoint_url)
    store = _store(url, endpoint_url=endpoint_url)
    try:
        found = next(store.list(), None) is not None
    except FileNotFoundError:  # no such folder (or bucket)
        found = False
    if not found:
        raise ConfigError(f"model artifact not found: {url}")
    config = MerConfig.from_json(_read(store, "config.json").decode())
    meta = json.loads(_read(store, "meta.json").decode())
    return ArtifactInfo(url=url, config=config, meta=meta)


def load_artifact(
    path_or_url_or_version: str | None = None,
    *,
    storage: str | None = None,
    device: str | torch.device | None = None,
    endpoint_url: str | None = None,
) -> Artifact:
    """Load a model artifact: rebuild :class:`MerModel` from config.json, load the weights, eval mode.

    Args:
        path_or_url_or_version: the artifact folder (local path, ``file://`` or ``s3://`` URL), or a version id
            looked up under ``storage``; None or ``"LATEST"``: the newest model in ``storage``.
        storage: where version ids and LATEST are looked up.
        device: default CUDA when available, else CPU.
        endpoint_url: S3-compatible endpoint for ``s3://`` locations (e.g. ``http://127.0.0.1:9000``; None: AWS).

    Raises:
        ConfigError: nothing there, a file missing, or weights that do not fit the config.
    """
    import torch  # here, not at the top: reading config.json and meta.json (read_artifact) needs no torch

    from mer.model.ensemble import MerEnsemble
    from mer.model.network import MerModel
    from mer.model.tensors import pick_device

    info = read_artifact(path_or_url_or_version, storage=storage, endpoint_url=endpoint_url)
    device = pick_device(device)
    state = torch.load(io.BytesIO(_read(_store(info.url, endpoint_url=endpoint_url), "model.pt")),
                       map_location=device, weights_only=True)
    members = info.meta.get("members")
    model = MerEnsemble(info.config, len(members)) if members else MerModel(info.config)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"model artifact {info.url}: weights do not match its config.json: {error}") from error
    # Temperature scaling fitted on val (mer.model.calibration), applied to the quadrant logits at prediction.
    model.quadrant_temperature = float((info.meta.get("calibration") or {}).get("temperature", 1.0))
    model.to(device).eval()
    return Artifact(model=model, config=info.config, meta=info.meta, url=info.url)
