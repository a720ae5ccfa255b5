"""Arrow record batches to NumPy matrices and float32 torch tensors, with as few copies as possible."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from linreg.io import BATCH_ROWS


def matrix(batch: pa.RecordBatch, names: list[str], dtype=None) -> np.ndarray:
    """(m, len(names)) matrix of the columns. dtype None keeps the stored precision (float64 if mixed)."""
    arrays = [batch.column(n).to_numpy(zero_copy_only=False) for n in names]
    if dtype is None:
        dtype = np.result_type(*arrays) if arrays else np.float64
        if not np.issubdtype(dtype, np.floating):
            dtype = np.float64
    out = np.empty((len(names), batch.num_rows), dtype=dtype)  # fill rows, then transpose: no strided writes
    for i, arr in enumerate(arrays):
        out[i] = arr
    return out.T


def read_batches(path: str, columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` from one local Parquet file."""
    with pq.ParquetFile(path) as f:
        yield from f.iter_batches(batch_size=batch_rows, columns=columns)


def stack_float32(parts: list[np.ndarray], width: int, device: torch.device) -> torch.Tensor:
    """Concatenate (m_i, width) float32 blocks into one (n, width) tensor on `device` (one copy)."""
    if not parts:
        return torch.empty((0, width), dtype=torch.float32, device=device)
    return torch.from_numpy(np.concatenate(parts, axis=0)).to(device)
