"""Work on a background thread beside the main loop of a pass: Arrow and NumPy release the GIL while they
decode, filter, copy and encode, so on two cores reading the next batch (or writing the last one)
overlaps the arithmetic on this one. Both keep order and bound what waits (two items)."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, TypeVar

import pyarrow as pa

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """The items of `items`, in order, produced on a background thread at most `depth` ahead of the
    consumer. An exception raised by `items` is raised here; closing this iterator early (or an exception
    in the consumer) stops the producer and closes `items` on its own thread."""
    waiting: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = waiting.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


class BackgroundWriter:
    """Writes tables to a ParquetWriter on one background thread (encoding and compression release the
    GIL), so that the next batch is computed meanwhile; at most two tables wait, so memory stays bounded."""

    def __init__(self, writer):
        self._writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self._pending = []

    def write(self, table: pa.Table) -> None:
        while len(self._pending) >= 2:
            self._pending.pop(0).result()  # re-raises a failed write here
        self._pending.append(self._pool.submit(self._writer.write_table, table, row_group_size=table.num_rows))

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pool.shutdown(wait=True)
