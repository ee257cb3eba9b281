"""Content-addressed feature cache: one Parquet file per item, one row per window, on a folder or an S3 prefix.

Extraction (rendering, STFTs, tokens) costs far more than reading its result, so features are computed once per
(file contents, feature config) and kept here: training revisits every EMOPIA clip each run, and the tagger
reads them back when a new model version re-tags a store it has tagged before (the features do not depend on
the model's weights). The layout is ``<root>/<config fingerprint>/<digest[:2]>/<digest>.parquet``: one folder
per feature configuration (an old configuration's folder can be deleted whole), 256 shards below it so no
folder grows huge. ``root`` is a local (or shared network) folder or ``s3://bucket/prefix``, read and written
through :mod:`mer.storage`.

Nothing read back is trusted. Each file records its own key and a SHA-256 of every array it holds; a file that
does not parse, names another key, or whose arrays do not hash to the recorded digest (a torn or half-written
copy, a flipped bit, a foreign file) is a miss: it is removed and the caller extracts the features again.
Writes are atomic (:meth:`mer.storage.ObjectStore.write`) — on a folder a temporary file in the same folder,
then :func:`os.replace`; on S3 a single PUT, which publishes whole objects only — so concurrent workers putting
the same item never expose a partial file; whichever finishes last wins, and both wrote the same bytes' features.
Nothing is fsynced (``sync=False``): a file a crash leaves torn is found out by its SHA-256, so durability costs
no disk flush per item.

How big it gets, and how it is bounded: an entry holds each window's tokens (2 bytes each), chromagram and
MFCCs (float32, 12 + 23 rows of 1,292 frames for a 30-s window) and its summary: about 0.2 MB per 30-s window
(:data:`WINDOW_BYTES`), so 10 million four-minute tracks take about 16 TB. On a folder, :meth:`FeatureCache.prune`
keeps the cache under a size by deleting the least recently used entries (a hit refreshes an entry's time); on
S3 an object lifecycle rule on the prefix expires entries (``cluster/feature-cache-lifecycle.json``: 90 days,
about a model release cycle). An expired or pruned entry only costs its extraction again.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mer.config import FeatureConfig, config_fingerprint
from mer.features.extract import ItemFeatures
from mer.storage import LocalStore, open_store

log = logging.getLogger(__name__)

FEATURE_VERSION = 1
"""Part of every key. Bump it when extraction changes in a way :class:`FeatureConfig` does not capture (a fix in
the tokenizer, the renderer, the window rule), so old cache entries stop matching instead of being reused.
A new array that is only *added* (the per-window ``summary`` and the piece's ``pitch_classes``), or an array that
only grows new columns after the old ones (the summary's texture descriptors, 2026-12-07), needs no bump: an entry
written before lacks the column or has the wrong width, fails to read, and is recomputed like any damaged entry,
while the keys (and so the data fingerprints of models trained before) stay the same."""

WINDOW_BYTES = 200_000
"""About what one 30-s window of the default config takes in the cache (measured: Parquet barely compresses
float32 frames), for sizing a cache: bytes ≈ windows × this."""

_FORMAT = 2  # 2: the entry's key and a SHA-256 of its arrays in the metadata; tokens in the smallest integer type
_METADATA_KEY = b"mer.features"
_KEY = re.compile(r"^([0-9a-f]{8,64})-([0-9a-f]{64})$")
_ARRAYS = ("tokens", "chroma", "mfcc", "present", "summary", "pitch_classes")  # fixed-size lists, one per window
_CHUNK = 1 << 20  # bytes hashed at a time when a key is computed from a file
_STALE_TEMPORARY_SECONDS = 3600  # a writer's temporary file this old is left by a writer that died: prune removes it


class FeatureCache:
    """Feature cache rooted at a local folder (created on the first :meth:`put`) or at ``s3://bucket/prefix``.

    Args:
        root: the cache folder or S3 prefix; shared by every process (on every node) that extracts features.
        endpoint_url: S3-compatible endpoint for an ``s3://`` root (None: AWS).

    Picklable (Ray tasks carry it): its store (:func:`mer.storage.open_store`) opens its S3 client lazily in each
    process.
    """

    def __init__(self, root: str | os.PathLike, *, endpoint_url: str | None = None) -> None:
        text = os.fspath(root)
        self.endpoint_url = endpoint_url
        if text.startswith("s3://"):
            self.root: Path | None = None
            self.url = text.rstrip("/")
        else:
            self.root = Path(text)
            self.url = str(self.root)
        self.store = open_store(text, endpoint_url=endpoint_url)

    def __repr__(self) -> str:
        return f"FeatureCache({self.url!r})"

    @staticmethod
    def key(*contents: bytes | BinaryIO, config: FeatureConfig) -> str:
        """The cache key of an item: ``"<config fingerprint>-<sha256 hex>"``.

        The digest covers :data:`FEATURE_VERSION`, the config fingerprint and every content in order (each
        length-prefixed, so ``(b"ab", b"c")`` and ``(b"a", b"bc")`` differ). Pass the item's file bytes in a
        fixed order, e.g. ``key(midi_bytes, audio_bytes, config=...)``, with ``b""`` for a missing file; a
        content may also be a seekable binary file (an hour of audio is hashed without being held in memory;
        the key is the same as for its bytes, and the file is left at its start). The item's name is not part of
        the key: identical files share their features.
        """
        if not contents:
            raise ValueError("a cache key needs at least one content")
        fingerprint = config_fingerprint(config)
        digest = hashlib.sha256(f"mer-features/{FEATURE_VERSION}/{fingerprint}/{len(contents)}/".encode())
        for content in contents:
            if isinstance(content, (bytes, bytearray, memoryview)):
                digest.update(len(content).to_bytes(8, "little"))
                digest.update(content)
            elif hasattr(content, "read") and hasattr(content, "seek"):
                size = content.seek(0, io.SEEK_END)
                content.seek(0)
                digest.update(size.to_bytes(8, "little"))
                while chunk := content.read(_CHUNK):
                    digest.update(chunk)
                content.seek(0)
            else:
                raise TypeError(f"cache key contents must be bytes or a binary file, got {type(content).__name__}")
        return f"{fingerprint}-{digest.hexdigest()}"

    def path(self, key: str) -> Path | str:
        """Where the item of ``key`` is stored: ``<root>/<fingerprint>/<digest[:2]>/<digest>.parquet`` (a
        :class:`~pathlib.Path` under a folder, an ``s3://`` URL under a prefix).

        Raises:
            ValueError: ``key`` is not a key made by :meth:`key` (it never becomes an arbitrary path).
        """
        entry = self._entry(key)
        return self.root.joinpath(*entry.split("/")) if self.root is not None else f"{self.url}/{entry}"

    @staticmethod
    def _entry(key: str) -> str:
        """The store key of ``key``'s entry: ``<fingerprint>/<digest[:2]>/<digest>.parquet``."""
        match = _KEY.match(key)
        if match is None:
            raise ValueError(f"not a feature-cache key: {key!r}")
        fingerprint, digest = match.groups()
        return f"{fingerprint}/{digest[:2]}/{digest}.parquet"

    def get(self, key: str, *, name: str | None = None) -> ItemFeatures | None:
        """The cached features of ``key``, or None on a miss.

        Args:
            key: from :meth:`key`.
            name: if given, the returned features carry this name (the cache holds the name of whichever item
                with these contents was put first).

        Returns:
            The features, or None when nothing is cached or the entry cannot be trusted (then it is removed).
        """
        entry = self._entry(key)
        try:
            data = self.store.read(entry)
        except FileNotFoundError:
            return None
        if isinstance(self.store, LocalStore):  # a hit refreshes the entry's time, for prune
            try:
                self.store.touch(entry)
            except OSError:
                pass
        try:
            features = _from_parquet(data, key=key)
        except Exception as error:  # any damage at all is a miss, never a crash and never a wrong feature
            log.warning("feature cache: removing unreadable %s (%s: %s)", self.path(key), type(error).__name__,
                        error)
            try:
                self.store.delete(entry)
            except OSError:
                pass
            return None
        if name is not None and name != features.name:
            features = replace(features, name=name)
        return features

    def put(self, key: str, features: ItemFeatures) -> Path | str:
        """Store an item's features atomically; returns the entry's path. An existing entry is replaced."""
        buffer = io.BytesIO()
        pq.write_table(_to_table(features, key=key), buffer)
        # No fsync: a file that a crash leaves torn fails its SHA-256 when read and is recomputed.
        self.store.write(self._entry(key), buffer.getvalue(), sync=False)
        return self.path(key)

    def prune(self, max_bytes: int) -> int:
        """Delete the least recently used entries of a folder cache until it holds at most ``max_bytes``.

        An entry's time is its modification time, which a hit refreshes, so what re-tagging keeps reading stays.
        Leftover temporary files of writers that died are removed too. Returns the bytes removed. (An S3 cache
        is bounded by a lifecycle rule on its prefix instead; see the module docstring.)
        """
        if not isinstance(self.store, LocalStore):
            raise ValueError(f"{self!r}: an S3 cache is bounded by a lifecycle rule on its prefix, not by prune")
        if not self.store.root.is_dir():
            return 0
        removed = self.store.remove_temporaries(older_than=_STALE_TEMPORARY_SECONDS)
        entries = [obj for obj in self.store.list() if obj.key.endswith(".parquet")]
        total = sum(obj.size for obj in entries)
        for obj in sorted(entries, key=lambda obj: (obj.modified, obj.key)):
            if total <= max_bytes:
                break
            try:
                self.store.delete(obj.key)
            except OSError:
                continue
            removed += obj.size
            total -= obj.size
        return removed


def _digest(features: ItemFeatures) -> str:
    """SHA-256 of everything an entry holds but the name: a reader recomputes it and trusts nothing else."""
    digest = hashlib.sha256(repr(float(features.duration)).encode())
    for field_name in ("window_starts", "tokens", "token_lengths", "chroma", "mfcc", "present", "summary",
                       "pitch_classes"):
        array = getattr(features, field_name)
        digest.update(f"{field_name}{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _to_table(features: ItemFeatures, *, key: str) -> pa.Table:
    """The item's window rows (:meth:`ItemFeatures.window_rows` layout) as an Arrow table, with its key and
    digest in the schema metadata. Tokens are stored in the smallest integer type holding the vocabulary."""
    windows = features.num_windows
    present = np.tile(features.present, (windows, 1))  # (W, 3): the item's flags on every row
    pitch_classes = np.tile(features.pitch_classes, (windows, 1))  # (W, 12): the piece's, on every row
    tokens = features.tokens
    if tokens.size and tokens.min() >= 0:
        tokens = tokens.astype(np.min_scalar_type(int(tokens.max())))  # uint16 for the 389 token ids
    per_window = {
        "tokens": tokens, "chroma": features.chroma, "mfcc": features.mfcc, "present": present,
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
    metadata = {"format": _FORMAT, "shapes": shapes, "key": key, "sha256": _digest(features)}
    return pa.table(columns).replace_schema_metadata({_METADATA_KEY: json.dumps(metadata).encode()})


def _from_parquet(data: bytes, *, key: str) -> ItemFeatures:
    """Load one cache entry; raises on anything unexpected (the caller treats that as a miss)."""
    table = pq.read_table(io.BytesIO(data))
    metadata = json.loads(table.schema.metadata[_METADATA_KEY])
    if metadata.get("format") != _FORMAT:
        raise ValueError(f"cache format {metadata.get('format')!r}, expected {_FORMAT}")
    if metadata.get("key") != key:
        raise ValueError(f"the entry holds key {metadata.get('key')!r}, not {key!r}")
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
    features = ItemFeatures(
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
    if _digest(features) != metadata.get("sha256"):
        raise ValueError("the arrays do not match the entry's SHA-256: damaged")
    return features
