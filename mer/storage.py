"""Object storage: a local folder or an S3 (or S3-compatible) prefix, behind one interface, :class:`ObjectStore`.

Every piece of ours that keeps files — the tagger's input store, the feature cache, model artifacts, training
runs — goes through this module, on boto3 for S3: one stack, because the tagger needs what only the S3 API gives
(object versions, reads pinned by ``VersionId`` or ``If-Match``). The one exception is Ray Train's own checkpoint
storage, whose interface is a pyarrow filesystem (:func:`mer.train.loop.ray_storage`).

(Over 500 lines on purpose: the two implementations of one interface sit side by side so that a change to one is
made to the other in the same place; each is about 200 lines.)

A store is rooted at a folder or at ``s3://bucket/prefix``; every key it lists, reads or writes is relative to that
root and uses ``/`` as separator, so the same key names the same object in both kinds of store. A "folder" is a key
prefix ending in ``/`` (:meth:`ObjectStore.list_folders`), as S3 has it.

Reads can be pinned to the version a listing saw (``read(key, version=..., version_id=...)``): an S3 object by its
``VersionId`` when the bucket is versioned, else by ``If-Match`` on its ETag; a local file by its size and mtime,
checked on the open file before and after reading. An object that changed since it was listed raises
:class:`~mer.errors.ObjectChangedError` instead of returning bytes of another version.

The S3 endpoint is always passed explicitly (``endpoint_url``; None: AWS): the environment's
``AWS_ENDPOINT_URL`` is read by the command-line jobs, which pass it on, never by boto3 behind their back.
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
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from mer.errors import BadInputError, ObjectChangedError
from mer.readahead import read_ahead

SPOOL_BYTES = 64 * 1024**2
"""An S3 object opened as a file (:meth:`S3Store.open`) is held in memory up to this size, beyond on local disk."""

DELETE_BATCH = 1000
"""Keys per S3 ``DeleteObjects`` request (the API's maximum)."""

FIRST_LEVEL_PAGE = 1000
"""An S3 listing walks the prefix folder by folder when its first level (folders and keys) fits in one page of
this many entries (S3's largest), else it lists the prefix flat (:meth:`S3Store._listing`)."""

LIST_FOLDERS_AHEAD = 8
"""Folders an S3 walk pages at once (:func:`mer.readahead.read_ahead`): a listing waits on round trips, and the
next folders' pages are fetched while one is consumed. Keys still come in S3's order; 1 lists them one by one."""

# LocalStore.write's temporary files; listing skips them so a half-written object is never seen.
_TEMP_MARKER = ".mer-tmp-"


@dataclass(frozen=True)
class StoredObject:
    """One object in a store.

    ``key`` is relative to the store root (``/``-separated); ``size`` is in bytes; ``version`` changes whenever the
    content may have changed: the ETag for S3, ``f"{size}-{mtime_ns}"`` for a local file. ``version_id``: the S3
    ``VersionId`` in a versioned bucket (a read can fetch exactly that version even after an overwrite), else "".
    ``modified``: when the object was last written (or, in a folder, :meth:`LocalStore.touch`-ed), in seconds since
    the epoch, as listings and :meth:`ObjectStore.stat` give it; None where the store did not say (an S3 PUT's
    answer). It takes no part in equality: ``version`` already changes with the object.
    """

    key: str
    size: int
    version: str
    version_id: str = ""
    modified: float | None = field(default=None, compare=False)



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
    def write(self, key: str, data: bytes, *, sync: bool = True) -> StoredObject:
        """Create or replace the object (atomically: readers see the old or the new bytes, never a mix).

        ``sync=False`` skips the flush to disk that makes a folder's write survive a power cut (S3 has none to
        skip): for what is checked when read back and cheap to redo, like a feature-cache entry.
        """

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

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object; one that is not there is no error (as in S3). In a versioned bucket the older
        versions stay (the key gets a delete marker)."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object :meth:`list` gives for ``prefix`` (a string prefix: ``"run/"`` for a folder);
        returns how many. Raises FileNotFoundError when the store's root does not exist."""
        keys = [obj.key for obj in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    @abstractmethod
    def list_folders(self, prefix: str = "") -> Iterator[str]:
        """The "folders" right below ``prefix`` (``""`` or a key prefix ending in ``/``): every distinct
        ``prefix + name + "/"`` that some object's key starts with, sorted. Raises FileNotFoundError when the
        store's root does not exist."""


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
        return StoredObject(key=key, size=st.st_size, version=f"{st.st_size}-{st.st_mtime_ns}",
                            modified=st.st_mtime)

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

    def write(self, key: str, data: bytes, *, sync: bool = True) -> StoredObject:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file in the same folder + os.replace = atomic on POSIX, so concurrent readers (or a crash) never
        # see a half-written object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{_TEMP_MARKER}")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if sync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self._object(key, path.stat())

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass

    def delete_prefix(self, prefix: str) -> int:
        """As :meth:`ObjectStore.delete_prefix`; the folders it leaves empty under the prefix go too (the root
        stays). A missing root holds nothing to delete: 0."""
        _check_prefix(prefix)
        if not self.root.is_dir():
            return 0
        deleted = super().delete_prefix(prefix)
        folder = self.root.joinpath(*prefix.rsplit("/", 1)[0].split("/")) if "/" in prefix else self.root
        for parent, _, _ in os.walk(folder, topdown=False):
            relative = Path(parent).relative_to(self.root).as_posix() + "/"
            if Path(parent) != self.root and relative.startswith(prefix):
                try:
                    os.rmdir(parent)
                except OSError:  # not empty: holds what the listing skips, or a new object
                    pass
        return deleted

    def list_folders(self, prefix: str = "") -> Iterator[str]:
        _check_prefix(prefix)
        if not self.root.is_dir():
            raise FileNotFoundError(f"store root {self.root} is not a folder")
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"a folder prefix ends with '/': {prefix!r}")
        try:
            scan = os.scandir(self.root.joinpath(*prefix.split("/")))
        except (FileNotFoundError, NotADirectoryError):
            return
        with scan:
            names = sorted(entry.name for entry in scan if entry.is_dir() and not entry.is_symlink())
        # A folder is there when an object is (as in S3): empty folders and ones holding only temp files are not.
        yield from (f"{prefix}{name}/" for name in names if next(self.list(f"{prefix}{name}/"), None) is not None)

    def touch(self, key: str) -> None:
        """Make the object's modified time now, leaving its bytes: a folder cache's hit, so that
        least-recently-used pruning keeps what is read. FileNotFoundError if absent."""
        try:
            os.utime(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"{self.url}: no object {key!r}") from None

    def remove_temporaries(self, *, older_than: float) -> int:
        """Delete the temporary files of writes that died before their rename (a killed process), if last
        modified more than ``older_than`` seconds ago (younger ones may still be being written); returns the bytes
        freed."""
        freed, cutoff = 0, time.time() - older_than
        for parent, _, names in os.walk(self.root):
            for name in names:
                if _TEMP_MARKER not in name:
                    continue
                path = os.path.join(parent, name)
                try:
                    st = os.stat(path)
                    if st.st_mtime < cutoff:
                        os.unlink(path)
                        freed += st.st_size
                except OSError:  # renamed by its writer meanwhile, or removed by another pruner
                    pass
        return freed


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix`` on AWS S3 or an S3-compatible store (MinIO, moto, Ceph...).

    ``endpoint_url`` selects a non-AWS endpoint (None: AWS; the ``AWS_ENDPOINT_URL*`` environment variables are
    ignored here, the jobs read them and pass them on). Credentials and region come from the standard AWS chain.
    The client is created on first use in each process, so the store pickles cheaply.
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
                    # ignore_configured_endpoint_urls: the endpoint is ours to pass (None: AWS), never taken from
                    # AWS_ENDPOINT_URL* or the shared config behind the caller's back.
                    config = Config(
                        retries={"max_attempts": 5, "mode": "standard"},
                        s3={"addressing_style": "path"} if self.endpoint_url else {},
                        ignore_configured_endpoint_urls=True,
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
        try:
            for entry in self._listing(operation, entries, self.prefix + prefix):
                key = entry["Key"][len(self.prefix):]
                if not key or key.endswith("/") or (versioned and not entry["IsLatest"]):
                    continue  # "folder" marker objects made by consoles; older versions
                yield StoredObject(key=key, size=int(entry["Size"]), version=entry["ETag"].strip('"'),
                                   version_id=entry.get("VersionId", "") if versioned else "",
                                   modified=entry["LastModified"].timestamp())
        except ClientError as error:
            if self._missing(error):
                raise FileNotFoundError(f"{self.url}: bucket does not exist") from None
            raise

    def _listing(self, operation: str, entries: str, prefix: str) -> Iterator[dict[str, Any]]:
        """The ``entries`` of a listing of ``prefix`` in key order, folder by folder where that is cheap.

        One request with ``Delimiter="/"`` shows the prefix's first level. If it fits in that one page (at most
        :data:`FIRST_LEVEL_PAGE` folders and keys), each folder is listed on its own, in key order, with its keys:
        at most one request more than a flat listing per folder, and a folder's page costs a server that filters by
        prefix before it sorts (moto) a sort of that folder instead of the whole bucket's. Otherwise (many small
        folders, where the walk would multiply the requests) the prefix is listed flat. Either way the keys come in
        S3's order, page by page, never held whole. The walk pages up to :data:`LIST_FOLDERS_AHEAD` folders at once.
        """
        paginator = self.client.get_paginator(operation)
        top = getattr(self.client, operation)(Bucket=self.bucket, Prefix=prefix, Delimiter="/",
                                              MaxKeys=FIRST_LEVEL_PAGE)
        if top.get("IsTruncated"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get(entries, [])
            return
        # A folder's keys all sort between it and the next name of the first level: merging keeps S3's order.
        first_level = [(entry["Key"], entry) for entry in top.get(entries, [])]
        first_level += [(folder["Prefix"], None) for folder in top.get("CommonPrefixes", [])]
        first_level.sort(key=lambda pair: pair[0])  # stable: a key's versions keep their order

        def pages(name: str, entry: dict[str, Any] | None) -> Callable[[], Iterator[list[dict[str, Any]]]]:
            if entry is not None:
                return lambda: iter([[entry]])
            return lambda: (page.get(entries, []) for page in paginator.paginate(Bucket=self.bucket, Prefix=name))

        for page in read_ahead((pages(name, entry) for name, entry in first_level), workers=LIST_FOLDERS_AHEAD):
            yield from page

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
            raise self._read_error(error, key, version) from None

    def _read_error(self, error: Exception, key: str, version: str | None) -> Exception:
        """What a failed pinned read raises: FileNotFoundError, ObjectChangedError (412), or the error itself."""
        if self._missing(error):
            return FileNotFoundError(f"{self.url}: no object {key!r}")
        if self._code(error) in ("PreconditionFailed", "412"):
            return ObjectChangedError(key, f"the object changed after it was listed (ETag {version} listed); "
                                           "retried by the next run")
        return error

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
            raise self._read_error(error, key, version) from None
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

    def write(self, key: str, data: bytes, *, sync: bool = True) -> StoredObject:
        _check_key(key)
        response = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
        return self._stored(key, len(data), response)

    def _stored(self, key: str, size: int, response: dict[str, Any]) -> StoredObject:
        """The StoredObject of a HEAD or PUT response (with its VersionId in a versioned bucket, as a listing has;
        a PUT's answer has no LastModified)."""
        version_id = response.get("VersionId", "") if self.versioned else ""
        modified = response["LastModified"].timestamp() if "LastModified" in response else None
        return StoredObject(key=key, size=size, version=response["ETag"].strip('"'), version_id=version_id,
                            modified=modified)

    def delete(self, key: str) -> None:
        _check_key(key)
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def delete_prefix(self, prefix: str) -> int:
        """As :meth:`ObjectStore.delete_prefix`, :data:`DELETE_BATCH` keys per request."""
        keys = [obj.key for obj in self.list(prefix)]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": self.prefix + key} for key in keys[start:start + DELETE_BATCH]]
            response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                error = response["Errors"][0]
                raise OSError(f"{self.url}: cannot delete {error.get('Key')!r}: {error.get('Code')} "
                              f"{error.get('Message')} ({len(response['Errors'])} key(s) not deleted)")
        return len(keys)

    def list_folders(self, prefix: str = "") -> Iterator[str]:
        _check_prefix(prefix)
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"a folder prefix ends with '/': {prefix!r}")
        from botocore.exceptions import ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        folders = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, Delimiter="/"):
                folders.extend(entry["Prefix"][len(self.prefix):] for entry in page.get("CommonPrefixes", []))
        except ClientError as error:
            if self._missing(error):
                raise FileNotFoundError(f"{self.url}: bucket does not exist") from None
            raise
        yield from sorted(folders)


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


