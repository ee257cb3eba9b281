"""Read several slow sources at once and yield their items in order: the order of reading them one after the
other, the wall time of reading ``workers`` of them side by side.

An S3 listing walks a prefix folder by folder (:meth:`mer.storage.S3Store.list`); each folder's pages are a round
trip each, and the walk spends its time waiting on them. With :func:`read_ahead` the next folders are paged on
threads while the current one is consumed, each holding at most ``buffered`` unconsumed items, so memory stays
bounded by ``workers × buffered`` pages however large a folder is.
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _ERROR, _END = range(3)
_POLL_SECONDS = 0.05  # how soon a blocked reader notices that the consumer has gone


def read_ahead(sources: Iterable[Callable[[], Iterable[T]]], *, workers: int, buffered: int = 2) -> Iterator[T]:
    """The items of ``source()`` for each source in turn, up to ``workers`` sources read at once on threads.

    A source's exception is raised here, where its items would have been, after the items it gave before it.
    Closing the iterator early (or an exception in the consumer) stops the readers and waits for them: no thread
    outlives the iterator. ``workers <= 1`` reads the sources in this thread, one after the other.
    """
    if workers <= 1:
        for source in sources:
            yield from source()
        return
    stop = threading.Event()

    def put(out: queue.Queue, entry: tuple[int, object]) -> bool:
        while not stop.is_set():
            try:
                out.put(entry, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def read(source: Callable[[], Iterable[T]], out: queue.Queue) -> None:
        try:
            for item in source():
                if not put(out, (_ITEM, item)):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            put(out, (_ERROR, error))
            return
        put(out, (_END, None))

    remaining = iter(sources)
    # One thread per source in flight (at most ``workers``): a source never waits for a thread while the consumer
    # waits for it. Daemon threads: an iterator dropped without being closed cannot hold the interpreter at exit.
    pending: deque[queue.Queue] = deque()
    readers: list[threading.Thread] = []

    def start_next() -> None:
        source = next(remaining, None)
        if source is not None:
            out: queue.Queue = queue.Queue(maxsize=buffered)
            reader = threading.Thread(target=read, args=(source, out), daemon=True, name="mer-read-ahead")
            reader.start()
            readers[:] = [*(r for r in readers if r.is_alive()), reader]
            pending.append(out)

    try:
        for _ in range(workers):
            start_next()
        while pending:
            kind, value = pending[0].get()
            if kind == _ITEM:
                yield value  # type: ignore[misc]
            elif kind == _ERROR:
                raise value  # type: ignore[misc]
            else:
                pending.popleft()
                start_next()
    finally:
        stop.set()
        for reader in readers:
            reader.join()
