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

    def epoch(self, epoch: int, seed: int, batch: int, device: torch.device, *, rank: int | None = None,
              sizes: list[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Mini-batches of one epoch; every kept row exactly once, in an order seeded by (seed, epoch), or by
        (seed, epoch, rank) for a rank of several. sizes: the rows of each block in turn (they add up to the
        kept rows; 0 is an empty block), instead of blocks of `batch` rows."""
        rng = np.random.default_rng([seed, epoch] if rank is None else [seed, epoch, rank])
        cut = _Blocks(batch, sizes)
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
                    leftover = yield from self._drain(pending, rng, cut, device, p, k, final=False)
                    pending, buffered = [leftover], len(leftover)
        yield from self._drain(pending, rng, cut, device, p, k, final=True)

    def _rows(self, record_batch: pa.RecordBatch, columns: list[str], width: int) -> np.ndarray:
        rows = matrix(record_batch, columns, np.float64, rows=self.keep(record_batch))
        rows[:, :width] = (rows[:, :width] - self.shift) / self.scale
        return rows.astype(np.float32)

    def _drain(self, pending, rng, cut: "_Blocks", device, p, k, *, final: bool):
        """Shuffle the buffer and yield the blocks it fills; return the rows left over (none when final)."""
        empty = np.empty((0, p + k + (1 if self.weight else 0)), np.float32)
        if not pending and cut.sizes is None:
            return empty
        rows = np.concatenate(pending) if pending else empty
        rows = rows[rng.permutation(len(rows))]
        import torch  # the gradient trainers' rows: an exact run never loads torch

        start = 0
        for stop in cut.ends(len(rows), final):
            block = torch.from_numpy(rows[start:stop]).to(device)
            yield block[:, :p], block[:, p:p + k], (block[:, p + k] if self.weight else None)
            start = stop
        return rows[start:]


class _Blocks:
    """Where an epoch's blocks end: every `batch` rows (the last block the rest), or after each of `sizes`."""

    def __init__(self, batch: int, sizes: list[int] | None):
        self.batch, self.sizes, self.next = batch, sizes, 0

    def ends(self, available: int, final: bool) -> Iterator[int]:
        """Block ends within `available` buffered rows: whole blocks only, unless `final` (then all rows)."""
        if self.sizes is None:
            stop = available if final else available - available % self.batch
            for i in range(0, stop, self.batch):
                yield min(i + self.batch, stop)
            return
        end = 0
        while self.next < len(self.sizes) and (final or end + self.sizes[self.next] <= available):
            end += self.sizes[self.next]
            self.next += 1
            yield end
        if final and end != available:
            raise RuntimeError(f"the streamed file held {available - end} training rows more than counted "
                               "before training: it changed during the run")
