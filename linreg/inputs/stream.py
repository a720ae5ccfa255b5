"""Training rows streamed from a local file (the joined rows: Arrow IPC, or Parquet) epoch by epoch, in bounded memory.

Used by the gradient trainers when the training rows do not fit the memory budget. Each epoch reads
the file's record batches (Parquet: row groups) in an order reshuffled from (seed, epoch), keeps only the training rows, fills a
buffer of `buffer_rows` rows, shuffles the buffer and hands out standardized float32 mini-batches.
The trade-off against the in-memory path: rows are only shuffled within a buffer (plus the row-group
order), not globally, and every epoch pays a scan of the file (a few hundred MB/s per core).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pyarrow as pa

from linreg.inputs.batches import GroupedFile, matrix

if TYPE_CHECKING:
    import torch


@dataclass
class StreamedRows:
    """The rows of `path` for which `keep(batch)` is True, as (X, Y, w) float32 batches per epoch.

    shift, scale (p + k,): standardization of [X | Y]; w (sample weights) stays unscaled, None if unweighted.
    """

    path: str
    features: list[str]
    targets: list[str]
    weight: str | None
    keep: Callable[[pa.RecordBatch], np.ndarray]
    keep_columns: list[str]  # columns `keep` looks at (e.g. the region and year)
    shift: np.ndarray
    scale: np.ndarray
    n_rows: int
    buffer_rows: int = 1 << 20
    mean_weight: float = 1.0  # mean sample weight over the kept rows (1 without weights)

    def epoch(self, epoch: int, seed: int, batch: int, device: torch.device
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Mini-batches of one epoch; every kept row exactly once, in an order seeded by (seed, epoch)."""
        rng = np.random.default_rng([seed, epoch])
        columns = self.features + self.targets + ([self.weight] if self.weight else [])
        p, k = len(self.features), len(self.targets)
        pending: list[np.ndarray] = []
        buffered = 0
        needed = list(dict.fromkeys(columns + self.keep_columns))
        with GroupedFile(self.path, needed) as f:
            for group in rng.permutation(f.num_groups):
                for record_batch in f.read(int(group)):
                    rows = self._rows(record_batch, columns, p + k)
                    if len(rows):
                        pending.append(rows)
                        buffered += len(rows)
                if buffered >= self.buffer_rows:
                    leftover = yield from self._drain(pending, rng, batch, device, p, k, final=False)
                    pending, buffered = [leftover], len(leftover)
        yield from self._drain(pending, rng, batch, device, p, k, final=True)

    def _rows(self, record_batch: pa.RecordBatch, columns: list[str], width: int) -> np.ndarray:
        rows = matrix(record_batch, columns, np.float64, rows=self.keep(record_batch))
        rows[:, :width] = (rows[:, :width] - self.shift) / self.scale
        return rows.astype(np.float32)

    def _drain(self, pending, rng, batch, device, p, k, *, final: bool):
        """Shuffle the buffer and yield full batches; return the rows left over (all of them when final)."""
        if not pending:
            return np.empty((0, p + k + (1 if self.weight else 0)), np.float32)
        rows = np.concatenate(pending)
        rows = rows[rng.permutation(len(rows))]
        stop = len(rows) if final else len(rows) - len(rows) % batch
        import torch  # the gradient trainers' rows: an exact run never loads torch

        for i in range(0, stop, batch):
            block = torch.from_numpy(rows[i:i + batch]).to(device)
            yield block[:, :p], block[:, p:p + k], (block[:, p + k] if self.weight else None)
        return rows[stop:]
