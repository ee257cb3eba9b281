"""The tagger's view of an object store (:mod:`mer.storage`): its objects paired into items, page by page.

An *item* is a key stem with up to two objects: ``<stem>.mid|.midi`` (the score) and ``<stem>.wav|.flac|.mp3|.ogg``
(a recording). :func:`list_items` pairs them and says, for every object it could not use, why.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from mer.errors import MerError
from mer.storage import ObjectStore, StoredObject, key_problem

MIDI_EXTENSIONS: tuple[str, ...] = (".mid", ".midi")
# Order = preference when one stem has several recordings: lossless first, then the lossy formats.
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg")

MAX_OBJECT_BYTES = 2 * 1024**3
"""Objects larger than this (2 GiB: hours of uncompressed audio) are listing rejects: a worker reads an object whole,
and one giant file must not take a feature task (and the night's run) down with it."""


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


def printable_key(key: str) -> str:
    """``key`` as text any database and log accepts: undecodable file-name bytes become ``\\xNN`` escapes."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
