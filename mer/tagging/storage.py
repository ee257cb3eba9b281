"""Object storage for the tagger: a local folder (the embedded default) or S3 and S3-compatible stores.

A store is rooted at a folder or at ``s3://bucket/prefix``; every key it lists, reads or writes is relative to that
root and uses ``/`` as separator, so the same key names the same piece in both kinds of store.

An *item* is a key stem with up to two objects: ``<stem>.mid|.midi`` (the score) and ``<stem>.wav|.flac|.mp3|.ogg``
(a recording). :func:`list_items` pairs them and says, for every object it could not use, why.

Reads can be pinned to the version a listing saw (``read(key, version=..., version_id=...)``): an S3 object by its
``VersionId`` when the bucket is versioned, else by ``If-Match`` on its ETag; a local file by its size and mtime,
checked on the open file before and after reading. An object that changed since it was listed raises
:class:`~mer.errors.ObjectChangedError` instead of returning bytes of another version.

Stores are picklable so Ray tasks can carry them: the boto3 client is created lazily in each process and never
pickled. Credentials come from boto3's standard chain (environment, shared config, instance role) and are never
stored, logged or shown in a repr.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import unquote, urlsplit

from mer.errors import BadInputError, MerError, ObjectChangedError

MIDI_EXTENSIONS: tuple[str, ...] = (".mid", ".midi")
# Order = preference when one stem has several recordings: lossless first, then the lossy formats.
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg")

MAX_OBJECT_BYTES = 2 * 1024**3
"""Objects larger than this (2 GiB: hours of uncompressed audio) are listing rejects: a worker reads an object whole,
and one giant file must not take a feature task (and the night's run) down with it."""

SPOOL_BYTES = 64 * 1024**2
"""An S3 object opened as a file (:meth:`S3Store.open`) is held in memory up to this size, beyond on local disk."""

# LocalStore.write's temporary files; listing skips them so a half-written object is never seen.
_TEMP_MARKER = ".mer-tmp-"


@dataclass(frozen=True)
class StoredObject:
    """One object in a store.

    ``key`` is relative to the store root (``/``-separated); ``size`` is in bytes; ``version`` changes whenever the
    content may have changed: the ETag for S3, ``f"{size}-{mtime_ns}"`` for a local file. ``version_id``: the S3
    ``VersionId`` in a versioned bucket (a read can fetch exactly that version even after an overwrite), else "".
    """

    key: str
    size: int
    version: str
    version_id: str = ""


class Reject(NamedTuple):
    """An object :func:`list_items` cannot use: its :func:`printable_key`, why, and its version (so a nightly run
    records it once per version, not every night)."""

    key: str
    reason: str
    version: str


@dataclass(frozen=True)
class Item:
    """A piece: the objects sharing one key stem (the key without its extension).

    At least one of ``midi`` and ``audio`` is set. ``stem`` is the item's key in the catalog.
    """

    stem: str
    midi: StoredObject | None
    audio: StoredObject | None

    @property
    def version(self) -> str:
        """The item's object version: changes when either object changes, appears or disappears."""
        parts = []
        if self.midi is not None:
            parts.append(f"midi:{self.midi.version}")
        if self.audio is not None:
            parts.append(f"audio:{self.audio.version}")
        return ";".join(parts)

    @property
    def modalities(self) -> tuple[str, ...]:
        """``("midi",)``, ``("audio",)`` or ``("midi", "audio")``."""
        return tuple(name for name, obj in (("midi", self.midi), ("audio", self.audio)) if obj is not None)


_CONTROL = re.compile("[\x00-\x1f\x7f]")  # checked on every listed key: a regex, not a loop over characters


def key_problem(key: str) -> str | None:
    """Why ``key`` is unsafe to use as a store key, or None when it is fine.

    Rejected: empty keys, absolute paths (leading ``/`` or ``\\``, drive letters), ``..`` segments (with either
    separator: a local mirror or a Windows reader would climb out of the root) and control characters. Spaces and
    non-ASCII letters are fine.
    """
    if not key:
        return "empty key"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:  # a local file name with bytes that are not UTF-8 (os.walk keeps them as surrogates)
        return "key is not valid UTF-8 (the file name holds undecodable bytes)"
    if _CONTROL.search(key):
        return "key contains a control character"
    if key.startswith(("/", "\\")) or (len(key) > 1 and key[1] == ":" and key[0].isalpha()):
        return "key is an absolute path"
    if ".." in key.replace("\\", "/").split("/"):
        return "key contains a '..' path segment"
    return None


def printable_key(key: str) -> str:
    """``key`` as text any database and log accepts: undecodable file-name bytes become ``\\xNN`` escapes."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _check_key(key: str) -> str:
    problem = key_problem(key)
    if problem is not None:
        raise BadInputError(key or "<empty key>", problem)
    return key


def _check_prefix(prefix: str) -> str:
    # An empty prefix lists everything; otherwise the same rules as keys apply.
    if prefix:
        _check_key(prefix)
    return prefix


class ObjectStore(ABC):
    """A flat namespace of ``/``-separated keys under a root. Subclasses: :class:`LocalStore`, :class:`S3Store`."""

    url: str

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object whose key starts with ``prefix`` (a string prefix, as in S3), sorted by key.

        Raises FileNotFoundError when the store's root (folder or bucket) does not exist.
        """

    @abstractmethod
    def read(self, key: str, *, version: str | None = None, version_id: str = "") -> bytes:
        """The object's bytes. FileNotFoundError if absent; BadInputError for an unsafe key (see key_problem).

        ``version`` (and, on S3, ``version_id``) as a listing gave them in :class:`StoredObject`: the bytes of
        exactly that version, or ObjectChangedError when the object changed since (never bytes of another version
        under the listed one's name).
        """

    def open(self, key: str, *, version: str | None = None, version_id: str = "") -> BinaryIO:
        """The object as a seekable binary file, to be closed by the caller: how big objects (an hour of audio)
        are read without holding their bytes. ``version``/``version_id`` pin it as in :meth:`read`. This default
        reads the bytes; stores override it to stream."""
        return io.BytesIO(self.read(key, version=version, version_id=version_id))

    @abstractmethod
    def write(self, key: str, data: bytes) -> StoredObject:
        """Create or replace the object (atomically: readers see the old or the new bytes, never a mix)."""

    @abstractmethod
    def stat(self, key: str) -> StoredObject:
        """Size and version of one object without reading it. FileNotFoundError if absent."""

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        try:
            self.stat(key)
        except FileNotFoundError:
            return False
        return True


class LocalStore(ObjectStore):
    """Objects are files under ``root``; keys are their paths relative to it.

    Nothing outside ``root`` is ever read or written: keys with ``..`` or absolute paths are rejected, and a
    symlink leading out of the root is refused when read.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        _check_key(key)
        path = self.root.joinpath(*key.split("/"))
        # Resolve symlinks: a link inside the root may point anywhere. Compare against the resolved root because
        # the root itself may legitimately sit behind a symlink (e.g. /tmp on macOS).
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise BadInputError(key, "resolves to a path outside the store root (symlink?)")
        return path

    @staticmethod
    def _object(key: str, st: os.stat_result) -> StoredObject:
        return StoredObject(key=key, size=st.st_size, version=f"{st.st_size}-{st.st_mtime_ns}")

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        _check_prefix(prefix)
        if not self.root.is_dir():
            raise FileNotFoundError(f"store root {self.root} is not a folder")
        # Walk only the deepest folder the prefix names, then filter by string prefix (S3 semantics:
        # prefix "a/b" matches "a/bc.mid" and "a/b/c.mid").
        folder = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        yield from self._walk(self.root.joinpath(*folder.split("/")), folder, prefix)

    def _walk(self, folder: Path, relative: str, prefix: str) -> Iterator[StoredObject]:
        """The files under ``folder`` (whose keys start with ``relative``) in key order, streamed: one folder's
        names are held at a time. A subfolder sorts as its name plus ``/``, which is where its keys sort."""
        try:
            scan = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        entries = []
        with scan:
            for entry in scan:
                try:
                    is_folder = entry.is_dir()
                except OSError:
                    continue
                if is_folder:
                    if not entry.is_symlink():  # a linked folder is not walked (as os.walk(followlinks=False))
                        entries.append((entry.name + "/", entry.path))
                elif _TEMP_MARKER not in entry.name:
                    entries.append((entry.name, entry.path))
        entries.sort()
        for name, path in entries:
            key = relative + name
            if name.endswith("/"):
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(path), key, prefix)
                continue
            if not key.startswith(prefix):
                continue
            try:
                st = os.stat(path)  # follows a file symlink: size of the target
            except OSError:
                continue  # vanished while listing, or a dangling symlink: not an object
            yield self._object(key, st)

    def read(self, key: str, *, version: str | None = None, version_id: str = "") -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as handle:
                # The open file is one inode: a file replaced (os.replace) after the open still reads as the
                # version checked here; one rewritten in place shows a new size or mtime afterwards.
                self._check_version(key, os.fstat(handle.fileno()), version)
                data = handle.read()
                self._check_version(key, os.fstat(handle.fileno()), version)
                return data
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(f"{self.url}: no object {key!r}") from None

    def open(self, key: str, *, version: str | None = None, version_id: str = "") -> BinaryIO:
        path = self._path(key)
        try:
            handle = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(f"{self.url}: no object {key!r}") from None
        try:
            # The open file is one inode: a file replaced (os.replace) after the open still reads as the version
            # checked here.
            self._check_version(key, os.fstat(handle.fileno()), version)
        except BaseException:
            handle.close()
            raise
        return handle

    def _check_version(self, key: str, st: os.stat_result, version: str | None) -> None:
        if version is not None and (now := self._object(key, st).version) != version:
            raise ObjectChangedError(key, f"the file changed after it was listed (size-mtime {version} listed, "
                                          f"{now} read); retried by the next run")

    def stat(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"{self.url}: no object {key!r}") from None
        if not path.is_file():
            raise FileNotFoundError(f"{self.url}: no object {key!r}")
        return self._object(key, st)

    def write(self, key: str, data: bytes) -> StoredObject:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file in the same folder + os.replace = atomic on POSIX, so concurrent readers (or a crash) never
        # see a half-written object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{_TEMP_MARKER}")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self._object(key, path.stat())


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix`` on AWS S3 or an S3-compatible store (MinIO, moto, Ceph...).

    ``endpoint_url`` selects a non-AWS endpoint (None: boto3's default, which also honours the
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` environment variables). Credentials and region come from the
    standard AWS chain. The client is created on first use in each process, so the store pickles cheaply.
    """

    def __init__(
        self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region_name: str | None = None
    ) -> None:
        if not bucket:
            raise ValueError("S3Store needs a bucket name")
        prefix = prefix.strip("/")
        if prefix:
            _check_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self.url = f"s3://{bucket}/{self.prefix}"
        self._client: Any = None
        self._versioned: bool | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        # Bucket, prefix and endpoint only: nothing of the credentials.
        return f"S3Store({self.url!r}, endpoint_url={self.endpoint_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None  # each process builds its own client (and re-reads the credential chain)
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use; boto3 clients are thread-safe once created)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    # Path-style addressing for custom endpoints: S3-compatible servers rarely have the wildcard
                    # DNS that virtual-host style needs.
                    config = Config(
                        retries={"max_attempts": 5, "mode": "standard"},
                        s3={"addressing_style": "path"} if self.endpoint_url else {},
                    )
                    session = boto3.session.Session()
                    self._client = session.client(
                        "s3", endpoint_url=self.endpoint_url, region_name=self.region_name, config=config
                    )
        return self._client

    @staticmethod
    def _code(error: Exception) -> str:
        return getattr(error, "response", {}).get("Error", {}).get("Code", "")

    @classmethod
    def _missing(cls, error: Exception) -> bool:
        return cls._code(error) in ("NoSuchKey", "404", "NotFound", "NoSuchBucket", "NoSuchVersion")

    @property
    def versioned(self) -> bool:
        """Whether the bucket keeps versions (versioning ``Enabled``): then listings carry each object's VersionId
        and reads fetch exactly that version. Asked once per process; a caller that may not ask
        (``s3:GetBucketVersioning`` denied) is treated as unversioned, and reads are pinned by ETag instead."""
        if self._versioned is None:
            from botocore.exceptions import ClientError

            try:
                status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            except ClientError as error:
                if self._missing(error):
                    raise FileNotFoundError(f"{self.url}: bucket does not exist") from None
                status = None
            self._versioned = status == "Enabled"
        return self._versioned

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        # Keys are listed as S3 holds them, unsafe ones included: list_items reports them rather than hiding them.
        _check_prefix(prefix)
        from botocore.exceptions import ClientError

        versioned = self.versioned
        # A versioned bucket is listed by version: the current version of each key (IsLatest), with its VersionId.
        # Keys whose newest entry is a delete marker have no current version and are not listed.
        operation, entries = ("list_object_versions", "Versions") if versioned else ("list_objects_v2", "Contents")
        paginator = self.client.get_paginator(operation)
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for entry in page.get(entries, []):
                    key = entry["Key"][len(self.prefix):]
                    if not key or key.endswith("/") or (versioned and not entry["IsLatest"]):
                        continue  # "folder" marker objects made by consoles; older versions
                    yield StoredObject(key=key, size=int(entry["Size"]), version=entry["ETag"].strip('"'),
                                       version_id=entry.get("VersionId", "") if versioned else "")
        except ClientError as error:
            if self._missing(error):
                raise FileNotFoundError(f"{self.url}: bucket does not exist") from None
            raise

    def read(self, key: str, *, version: str | None = None, version_id: str = "") -> bytes:
        _check_key(key)
        from botocore.exceptions import ClientError

        pin: dict[str, str] = {}
        if version_id:
            pin["VersionId"] = version_id  # that version's bytes, even if the key was overwritten since
        elif version is not None:
            pin["IfMatch"] = f'"{version}"'  # refused (412) once the object is no longer that version
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **pin)
            return response["Body"].read()
        except ClientError as error:
            if self._missing(error):
                raise FileNotFoundError(f"{self.url}: no object {key!r}") from None
            if self._code(error) in ("PreconditionFailed", "412"):
                raise ObjectChangedError(key, f"the object changed after it was listed (ETag {version} listed); "
                                              "retried by the next run") from None
            raise

    def open(self, key: str, *, version: str | None = None, version_id: str = "") -> BinaryIO:
        """The object downloaded into a temporary file: in memory up to :data:`SPOOL_BYTES`, on local disk beyond,
        so a big object never sits in memory whole. Pinned as :meth:`read`: by ``VersionId`` (parallel ranged
        GETs), else by ``If-Match`` on the ETag (one streamed GET)."""
        _check_key(key)
        import shutil

        from botocore.exceptions import ClientError

        handle = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        try:
            if version_id or version is None:
                extra = {"VersionId": version_id} if version_id else None
                self.client.download_fileobj(self.bucket, self.prefix + key, handle, ExtraArgs=extra)
            else:
                response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, IfMatch=f'"{version}"')
                shutil.copyfileobj(response["Body"], handle, 1024 * 1024)
        except ClientError as error:
            handle.close()
            if self._missing(error):
                raise FileNotFoundError(f"{self.url}: no object {key!r}") from None
            if self._code(error) in ("PreconditionFailed", "412"):
                raise ObjectChangedError(key, f"the object changed after it was listed (ETag {version} listed); "
                                              "retried by the next run") from None
            raise
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        return handle

    def stat(self, key: str) -> StoredObject:
        _check_key(key)
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as error:
            if self._missing(error):
                raise FileNotFoundError(f"{self.url}: no object {key!r}") from None
            raise
        return self._stored(key, int(head["ContentLength"]), head)

    def write(self, key: str, data: bytes) -> StoredObject:
        _check_key(key)
        response = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
        return self._stored(key, len(data), response)

    def _stored(self, key: str, size: int, response: dict[str, Any]) -> StoredObject:
        """The StoredObject of a HEAD or PUT response (with its VersionId in a versioned bucket, as a listing has)."""
        version_id = response.get("VersionId", "") if self.versioned else ""
        return StoredObject(key=key, size=size, version=response["ETag"].strip('"'), version_id=version_id)


def open_store(url: str | os.PathLike[str], *, endpoint_url: str | None = None) -> ObjectStore:
    """The store a URL names: ``s3://bucket[/prefix]`` → S3Store; ``file:///path`` or a plain path → LocalStore.

    ``endpoint_url`` only applies to S3 (e.g. ``http://127.0.0.1:9000`` for MinIO).
    """
    text = os.fspath(url)
    parts = urlsplit(text)
    if parts.scheme == "s3":
        return S3Store(parts.netloc, unquote(parts.path), endpoint_url=endpoint_url)
    if parts.scheme == "file":
        return LocalStore(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # one letter = a Windows drive, i.e. a plain path
        raise ValueError(f"unsupported store URL scheme {parts.scheme!r} in {text!r} (use a path, file:// or s3://)")
    return LocalStore(text)


def _split_extension(key: str) -> tuple[str, str]:
    """(stem, lower-case extension) of a key; the extension is "" when the last segment has none."""
    name = key.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    if dot <= 0:  # no dot, or a dot-file like ".mid" with no stem
        return key, ""
    return key[: len(key) - len(name) + dot], name[dot:].lower()


def iter_items(store: ObjectStore, prefix: str = "", *, max_bytes: int = MAX_OBJECT_BYTES) -> Iterator[Item | Reject]:
    """Pair the objects under ``prefix`` into items as the listing streams by: what :func:`list_items` returns,
    one :class:`Item` or reject at a time, holding only the few stems still open.

    The listing is sorted by key, and every key of a stem ``s`` starts with ``s + "."``; those keys are
    contiguous in key order, so once a key sorts past ``s + "."`` without starting with it, ``s`` can get no more
    objects and is paired and yielded. Items come out nearly in stem order (a stem that is a prefix of another,
    like ``a/b`` and ``a/b.x``, may close after it).

    Raises:
        MerError: the store listed a key before the previous one (pairing relies on the order).
    """
    open_stems: dict[str, tuple[list[tuple[int, StoredObject]], list[tuple[int, StoredObject]]]] = {}
    previous = None
    for obj in store.list(prefix):
        if previous is not None and obj.key < previous:
            raise MerError(f"{store!r} listed {obj.key!r} after {previous!r}: a listing must be sorted by key")
        previous = obj.key
        for stem in [s for s in open_stems if obj.key > s + "." and not obj.key.startswith(s + ".")]:
            yield from _pair(stem, *open_stems.pop(stem))
        stem, ext = _split_extension(obj.key)
        if ext in MIDI_EXTENSIONS:
            kind, rank = 0, MIDI_EXTENSIONS.index(ext)
        elif ext in AUDIO_EXTENSIONS:
            kind, rank = 1, AUDIO_EXTENSIONS.index(ext)
        else:
            continue
        problem = key_problem(obj.key)
        if problem is None and obj.size > max_bytes:
            problem = f"object is {obj.size:,} bytes, more than the {max_bytes:,}-byte limit"
        if problem is not None:
            yield Reject(printable_key(obj.key), problem, obj.version)
            continue
        open_stems.setdefault(stem, ([], []))[kind].append((rank, obj))
    for stem in list(open_stems):
        yield from _pair(stem, *open_stems.pop(stem))


def _pair(stem: str, midis: list[tuple[int, StoredObject]], audios: list[tuple[int, StoredObject]]
          ) -> Iterator[Item | Reject]:
    """A stem's item (the preferred file of each kind: extension order, then key order) and its other files as
    rejects."""
    chosen: dict[str, StoredObject] = {}
    extra: list[Reject] = []
    for kind, objs in (("MIDI", midis), ("audio", audios)):
        objs.sort(key=lambda ranked: (ranked[0], ranked[1].key))
        if objs:
            chosen[kind] = objs[0][1]
            extra.extend(Reject(other.key, f"another {kind} file for the same item is used: {objs[0][1].key}",
                                other.version) for _, other in objs[1:])
    yield Item(stem=stem, midi=chosen.get("MIDI"), audio=chosen.get("audio"))
    yield from extra


def list_pages(store: ObjectStore, prefix: str = "", *, page_size: int,
               max_bytes: int = MAX_OBJECT_BYTES) -> Iterator[tuple[list[Item], list[Reject]]]:
    """:func:`iter_items` in pages of ``page_size`` items (and the rejects met meanwhile): a listing of millions
    of keys is never held whole."""
    items: list[Item] = []
    rejects: list[Reject] = []
    for entry in iter_items(store, prefix, max_bytes=max_bytes):
        if isinstance(entry, Item):
            items.append(entry)
            if len(items) >= page_size:
                yield items, rejects
                items, rejects = [], []
        else:
            rejects.append(entry)
    if items or rejects:
        yield items, rejects


def list_items(
    store: ObjectStore, prefix: str = "", *, max_bytes: int = MAX_OBJECT_BYTES
) -> tuple[list[Item], list[Reject]]:
    """Pair the objects under ``prefix`` into items (all of them: for a store that fits in memory; a run lists
    in pages, :func:`list_pages`).

    Returns ``(items, rejects)``: items sorted by stem; rejects (:class:`Reject`) sorted by key, for objects with
    a MIDI or audio extension that cannot be used (unsafe key, larger than ``max_bytes``, or a second file of the
    same kind for one stem — the preferred one by extension order, then key order, is kept); a reject's key is
    :func:`printable_key` of the object's. Objects with other extensions are ignored.
    Extensions match case-insensitively.
    """
    items: list[Item] = []
    rejects: list[Reject] = []
    for entry in iter_items(store, prefix, max_bytes=max_bytes):
        (items if isinstance(entry, Item) else rejects).append(entry)
    return sorted(items, key=lambda item: item.stem), sorted(rejects)
