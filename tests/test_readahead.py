"""read_ahead: several sources read at once on threads, their items given in the order of reading them one by one,
errors where they happened, nothing left running once the consumer is done."""
from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mer.readahead import read_ahead


def reader_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("mer-read-ahead")]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("workers", [1, 2, 8])
def test_items_come_in_the_order_of_reading_the_sources_one_after_the_other(seed: int, workers: int) -> None:
    rng = random.Random(seed)
    contents = [[rng.randrange(1000) for _ in range(rng.randrange(0, 40))] for _ in range(rng.randrange(0, 30))]
    sources = [lambda items=items: iter(items) for items in contents]
    buffered = rng.choice([1, 2, 5])
    assert list(read_ahead(sources, workers=workers, buffered=buffered)) == [x for items in contents for x in items]
    assert reader_threads() == []


def test_sources_are_read_side_by_side() -> None:
    # Each source waits until all four are being read: one after the other, the first would wait for ever.
    together = threading.Barrier(4, timeout=30)

    def source(index: int) -> Callable[[], Iterator[int]]:
        def read() -> Iterator[int]:
            together.wait()
            yield index
        return read

    assert list(read_ahead([source(i) for i in range(4)], workers=4)) == [0, 1, 2, 3]


def test_a_sources_error_is_raised_where_its_items_would_have_come() -> None:
    def failing() -> Iterator[int]:
        yield 3
        raise PermissionError("folder b/: access denied")

    given = []
    with pytest.raises(PermissionError, match="folder b/"):
        for item in read_ahead([lambda: iter([1, 2]), failing, lambda: iter([4])], workers=3):
            given.append(item)
    assert given == [1, 2, 3]
    assert reader_threads() == []


def test_closing_early_stops_the_readers_and_a_reader_runs_at_most_its_buffer_ahead() -> None:
    produced = {"long": 0}

    def long() -> Iterator[int]:
        for _ in range(10_000):  # long enough to show a reader running ahead, short enough to fit in memory if one did
            produced["long"] += 1
            yield -1

    def slow() -> Iterator[int]:
        for item in range(50):
            time.sleep(0.01)  # time for the long source's reader to run ahead, if it could
            yield item

    listing = read_ahead([slow, long], workers=2, buffered=3)
    assert [next(listing) for _ in range(50)] == list(range(50))
    # The long source is held at its buffer (3 queued, one more waiting to go in).
    assert produced["long"] <= 3 + 1
    listing.close()
    assert reader_threads() == []


def test_an_iterator_dropped_unclosed_does_not_keep_the_process_from_exiting() -> None:
    # A caller that keeps the iterator (here in a global) and exits: readers blocked on a full buffer must not
    # hold the interpreter open.
    program = textwrap.dedent("""
        import itertools, sys
        from mer.readahead import read_ahead
        endless = lambda: itertools.count()
        listing = read_ahead([endless, endless, endless], workers=3, buffered=1)
        print(next(listing))
        sys.modules["__main__"].kept = listing
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
