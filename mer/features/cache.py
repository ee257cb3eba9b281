"""Content-addressed feature cache: one Parquet file per item, one row per window.

Extraction (rendering, STFTs, tokens) costs far more than reading its result, and training revisits every
EMOPIA clip each run, so features are computed once per (file contents, feature config) and kept here. The
layout is ``<root>/<config fingerprint>/<digest[:2]>/<digest>.parquet``: one folder per feature configuration
(an old configuration's folder can be deleted whole), 256 shards below it so no folder grows huge.

Writes are atomic (a temporary file in the same folder, then :func:`os.replace`), so concurrent Ray workers
putting the same item never leave a half-written file; whichever finishes last wins, and both wrote the same
bytes' features. A file that cannot be read anyway (disk trouble, a foreign file) is a cache miss and is
removed — the cache never turns a damaged file into a crash.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mer.config import FeatureConfig, config_fingerprint
from mer.features.extract import ItemFeatures

log = logging.getLogger(__name__)

FEATURE_VERSION = 1
"""Part of every key. Bump it when extraction changes in a way :class:`FeatureConfig` does not capture (a fix in
the tokenizer, the renderer, the window rule), so old cache entries stop matching instead of being reused.
A new array that is only *added* (the per-window ``summary`` and the piece's ``pitch_classes``) needs no bump: an
entry written before it lacks the column, fails to read, and is recomputed like any damaged entry, while the
keys (and so the data fingerprints of models trained before) stay the same."""

_FORMAT = 1
_METADATA_KEY = b"mer.features"
_KEY = re.compile(r"^([0-9a-f]{8,64})-([0-9a-f]{64})$")
_ARRAYS = ("tokens", "chroma", "mfcc", "present", "summary", "pitch_classes")  # stored as fixed-size lists of their flattened per-window shape


class FeatureCache:
    """Feature cache rooted at a local folder (created on the first :meth:`put`).

    Args:
        root: the cache folder; shared by every process on the machine that extracts features.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    @staticmethod
    def key(*contents: bytes, config: FeatureConfig) -> str:
        """The cache key of an item: ``"<config fingerprint>-<sha256 hex>"``.

        The digest covers :data:`FEATURE_VERSION`, the config fingerprint and every content in order (each
        length-prefixed, so ``(b"ab", b"c")`` and ``(b"a", b"bc")`` differ). Pass the item's file bytes in a
        fixed order, e.g. ``key(midi_bytes, audio_bytes, config=...)``, with ``b""`` for a missing file.
        The item's name is not part of the key: identical files share their features.
        """
        if not contents:
            raise ValueError("a cache key needs at least one content")
        fingerprint = config_fingerprint(config)
        digest = hashlib.sha256(f"mer-features/{FEATURE_VERSION}/{fingerprint}/{len(contents)}/".encode())
        for content in contents:
            if not isinstance(content, (bytes, bytearray, memoryview)):
                raise TypeError(f"cache key contents must be bytes, got {type(content).__name__}")
            digest.update(len(content).to_bytes(8, "little"))
            digest.update(content)
        return f"{fingerprint}-{digest.hexdigest()}"

    def path(self, key: str) -> Path:
        """Where the item of ``key`` is stored: ``<root>/<fingerprint>/<digest[:2]>/<digest>.parquet``.

        Raises:
            ValueError: ``key`` is not a key made by :meth:`key` (it never becomes an arbitrary path).
        """
        match = _KEY.match(key)
        if match is None:
            raise ValueError(f"not a feature-cache key: {key!r}")
        fingerprint, digest = match.groups()
        return self.root / fingerprint / digest[:2] / f"{digest}.parquet"

    def get(self, key: str, *, name: str | None = None) -> ItemFeatures | None:
        """The cached features of ``key``, or None on a miss.

        Args:
            key: from :meth:`key`.
            name: if given, the returned features carry this name (the cache holds the name of whichever item
                with these contents was put first).

        Returns:
            The features, or None when nothing is cached or the file is unreadable (then it is removed).
        """
        path = self.path(key)
        try:
            features = _read(path)
        except FileNotFoundError:
            return None
        except Exception as error:  # any damage at all is a miss, never a crash
            log.warning("feature cache: removing unreadable %s (%s: %s)", path, type(error).__name__, error)
            try:
                path.unlink()
            except OSError:
                pass
            return None
        if name is not None and name != features.name:
            features = replace(features, name=name)
        return features

    def put(self, key: str, features: ItemFeatures) -> Path:
        """Store an item's features atomically; returns the file's path. An existing entry is replaced."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = _to_table(features)
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())  # the rename must never publish a file whose bytes are still in flight
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return path


def _to_table(features: ItemFeatures) -> pa.Table:
    """The item's window rows (:meth:`ItemFeatures.window_rows` layout) as an Arrow table."""
    windows = features.num_windows
    present = np.tile(features.present, (windows, 1))  # (W, 3): the item's flags on every row
    pitch_classes = np.tile(features.pitch_classes, (windows, 1))  # (W, 12): the piece's, on every row
    per_window = {
        "tokens": features.tokens, "chroma": features.chroma, "mfcc": features.mfcc, "present": present,
        "summary": features.summary, "pitch_classes": pitch_classes,
    }
    columns = {
        "name": pa.array([features.name] * windows, type=pa.string()),
        "window_index": pa.array(np.arange(windows, dtype=np.int64)),
        "window_start": pa.array(features.window_starts),
        "duration": pa.array(np.full(windows, features.duration, dtype=np.float64)),
        "token_length": pa.array(features.token_lengths),
    }
    shapes = {}
    for field_name, array in per_window.items():
        shapes[field_name] = list(array.shape[1:])
        flat = array.reshape(windows, -1)
        columns[field_name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
    metadata = {_METADATA_KEY: json.dumps({"format": _FORMAT, "shapes": shapes}).encode()}
    return pa.table(columns).replace_schema_metadata(metadata)


def _read(path: Path) -> ItemFeatures:
    """Load one cache file; raises on anything unexpected (the caller treats that as a miss)."""
    table = pq.read_table(path)
    metadata = json.loads(table.schema.metadata[_METADATA_KEY])
    if metadata.get("format") != _FORMAT:
        raise ValueError(f"cache format {metadata.get('format')!r}, expected {_FORMAT}")
    windows = table.num_rows
    index = table.column("window_index").to_numpy()
    if not np.array_equal(index, np.arange(windows)):
        raise ValueError("window rows out of order")
    arrays = {}
    for field_name in _ARRAYS:
        values = table.column(field_name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        # A copy: zero-copy views of Arrow buffers are read-only, which torch.from_numpy warns about.
        arrays[field_name] = np.array(values).reshape(windows, *metadata["shapes"][field_name])
    names = table.column("name").to_pylist()
    return ItemFeatures(
        name=names[0],
        duration=float(table.column("duration")[0].as_py()),
        window_starts=table.column("window_start").to_numpy(),
        tokens=arrays["tokens"],
        token_lengths=table.column("token_length").to_numpy(),
        chroma=arrays["chroma"],
        mfcc=arrays["mfcc"],
        present=arrays["present"][0],
        summary=arrays["summary"],
        pitch_classes=arrays["pitch_classes"][0],
    )
