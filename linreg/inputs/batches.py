"""Arrow record batches to NumPy matrices and float32 torch tensors, with as few copies as possible (torch is
imported only by `stack_float32`, which the gradient trainers call: an exact run never loads it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from linreg.inputs.spool import held
from linreg.inputs.tables import BATCH_ROWS

if TYPE_CHECKING:
    import torch


def matrix(batch: pa.RecordBatch, names: list[str], dtype=None, rows: np.ndarray | None = None) -> np.ndarray:
    """(m, len(names)) matrix of the columns (only the `rows`, a boolean mask, if given). dtype None keeps
    the stored precision (float64 if mixed). The result is the transpose of a C-contiguous
    (len(names), m) array: each column is contiguous."""
    if rows is not None:  # Arrow's filter kernel: 4.5x faster than NumPy's boolean indexing of each column
        batch = batch.select(names).filter(pa.array(rows, type=pa.bool_()))
    arrays = [batch.column(n).to_numpy(zero_copy_only=False) for n in names]
    if dtype is None:
        dtype = np.result_type(*arrays) if arrays else np.float64
        if not np.issubdtype(dtype, np.floating):
            dtype = np.float64
    out = np.empty((len(names), len(arrays[0]) if arrays else batch.num_rows), dtype=dtype)
    for i, arr in enumerate(arrays):  # fill rows, then transpose: no strided writes
        out[i] = arr
    return out.T


def read_batches(path: str, columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches (at most `batch_rows` rows) of `columns` from one local Parquet or Arrow IPC file, in
    file order."""
    with GroupedFile(path, columns) as f:
        for group in range(f.num_groups):
            for batch in f.read(group):
                for start in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(start, batch_rows)


class GroupedFile:
    """Random access to the groups of rows of a local file: an Arrow IPC file's record batches (`.arrow`,
    the joined rows, or the batches kept in memory under its name: `linreg.inputs.spool`), or a Parquet file's
    row groups; only `columns` are read.

    IPC files are read with plain reads, not memory-mapped (so that the pages read do not stay in the
    process's resident memory), and only the buffers of `columns` (the key strings are most of the bytes
    of the joined rows; the fit pass needs none of them)."""

    def __init__(self, path: str, columns: list[str]):
        self.path, self.columns = path, list(dict.fromkeys(columns))  # a key may also be a feature (a trend)

    def __enter__(self) -> "GroupedFile":
        self._held = held(self.path)
        if self._held is not None:  # the joined rows kept in memory (`linreg.inputs.spool`)
            self._parquet, self._source = None, None
            self.num_groups = len(self._held.batches)
        elif self.path.endswith(".parquet"):
            self._parquet = pq.ParquetFile(self.path)
            self.num_groups = self._parquet.num_row_groups
        else:
            self._parquet = None
            self._source = pa.OSFile(self.path)
            schema = pa.ipc.open_file(self._source).schema
            fields = sorted({schema.get_field_index(c) for c in self.columns})
            self._ipc = pa.ipc.open_file(self._source, options=pa.ipc.IpcReadOptions(included_fields=fields))
            self.num_groups = self._ipc.num_record_batches
        return self

    def read(self, group: int) -> list[pa.RecordBatch]:
        """The record batches of group `group`, with `columns` in that order."""
        if self._held is not None:
            return [self._held.batches[group].select(self.columns)]
        if self._parquet is not None:
            return self._parquet.read_row_group(group, columns=self.columns).to_batches()
        return [self._ipc.get_batch(group).select(self.columns)]

    def __exit__(self, *exc) -> None:
        if self._parquet is not None:
            self._parquet.close()
        elif self._source is not None:
            self._source.close()


def read_joined(path: str, columns: list[str] | None = None) -> pa.Table:
    """The whole joined file (Arrow IPC, or the rows kept in memory under its name) as a table: for tests and
    small data."""
    rows = held(path)
    if rows is not None:
        table = pa.Table.from_batches(rows.batches, schema=rows.schema)
    else:
        with pa.OSFile(path) as source:
            table = pa.ipc.open_file(source).read_all()
    return table.select(columns) if columns else table


def stack_float32(parts: list[np.ndarray], width: int, device: torch.device) -> torch.Tensor:
    """Concatenate (m_i, width) float32 blocks into one row-major (n, width) tensor on `device` (one copy):
    the trainers gather whole rows, which a column-major tensor makes ten times slower."""
    import torch

    if not parts:
        return torch.empty((0, width), dtype=torch.float32, device=device)
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=0))).to(device)
