"""Where the joined rows go: record batches kept in memory while they fit a limit, else an Arrow IPC file.

The joined rows are read twice after the join (the fit pass, the evaluation pass; every epoch when a gradient
trainer streams them). When they are small enough they stay in this process's memory, as Python's
`tempfile.SpooledTemporaryFile` keeps a small file: writing 630 MB of joined rows to the work directory and
reading them back cost a 10M-row exact run 0.4-0.6 s of its 5-6 s on two cores. Past `limit` bytes the batches
held so far are written to the file and the rest follows them there.

Readers ask by the file's path (`held(path)`, which `linreg.inputs.batches.GroupedFile` does): the rows kept are
registered under it for as long as their `HeldRows` lives, and the `JoinResult` of the join holds it, so they
are freed with the join's result. Pickling a `HeldRows` (a rank's result sent to the flow, or a task result
Prefect persists) keeps no rows: the receiving process reads nothing from it.
"""

from __future__ import annotations

import weakref

import pyarrow as pa

_HELD: "weakref.WeakValueDictionary[str, HeldRows]" = weakref.WeakValueDictionary()


class HeldRows:
    """The joined rows of one file path kept in memory: `batches` in file order, with their `schema`."""

    def __init__(self, path: str, schema: pa.Schema, batches: list[pa.RecordBatch]):
        self.path, self.schema, self.batches = path, schema, batches

    def __reduce__(self):  # another process never sees this one's memory: it gets no rows
        return (_released, (self.path,))


def _released(path: str) -> None:
    return None


def held(path: str) -> HeldRows | None:
    """The rows kept in memory for `path`, or None (they are in the file, or were freed)."""
    return _HELD.get(path)


class JoinedSink:
    """Takes the joined record batches in order (`write_batch`) and keeps them in memory until they exceed
    `limit` bytes (0: never keep, write the file at once), then writes them and every later batch to the Arrow
    IPC file at `path`. `close()` returns the `HeldRows` when the rows stayed in memory (the caller keeps it
    alive for as long as the rows are read), else None, the file being complete."""

    def __init__(self, path: str, schema: pa.Schema, limit: int):
        self.path, self.schema, self.limit = path, schema, limit
        self._batches: list[pa.RecordBatch] | None = []
        self._bytes = 0
        self._sink = self._writer = None
        if limit <= 0:
            self._spill()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if self._batches is None:
            self._writer.write_batch(batch)
            return
        self._batches.append(batch)
        self._bytes += batch.nbytes
        if self._bytes > self.limit:
            self._spill()

    def _spill(self) -> None:
        """From now on to the file: first the batches held so far."""
        self._sink = pa.OSFile(self.path, "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        for batch in self._batches:
            self._writer.write_batch(batch)
        self._batches = None

    def close(self) -> HeldRows | None:
        if self._batches is not None:
            rows = HeldRows(self.path, self.schema, self._batches)
            _HELD[self.path] = rows
            return rows
        self._writer.close()
        self._sink.close()
        return None

    def abort(self) -> None:
        """After an error: release what is held, close the file (the caller removes the work directory)."""
        self._batches = None
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._sink.close()
