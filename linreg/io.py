"""Open the input tables: a Parquet file, a directory of files or a hive-partitioned dataset, local or on any
filesystem pyarrow understands (s3://, gs://, file://). Reads only the columns asked for, batch by batch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from linreg.errors import InputError

BATCH_ROWS = 256 * 1024  # rows per record batch handed to numpy/torch: large enough to amortize, small enough to bound memory


@dataclass
class Table:
    """One input table opened as a pyarrow dataset. `role` ('weather' or 'yields') names it in messages."""

    role: str
    path: str
    dataset: ds.Dataset
    filesystem: pafs.FileSystem
    files: list[str] = field(default_factory=list)

    @property
    def schema(self) -> pa.Schema:
        return self.dataset.schema

    def describe(self) -> str:
        return f"{self.role} table {self.path!r}"

    def batches(self, columns: list[str], *, batch_rows: int = BATCH_ROWS, filter=None) -> Iterator[pa.RecordBatch]:
        """Record batches of `columns` across all files, in file order."""
        yield from self.dataset.to_batches(columns=columns, filter=filter, batch_size=batch_rows,
                                           batch_readahead=2, fragment_readahead=1)

    def fragments(self) -> Iterator[ds.Fragment]:
        yield from self.dataset.get_fragments()


def open_table(path: str, role: str) -> Table:
    """Open `path` as a Parquet dataset, with a clear error when it is missing, empty or not Parquet."""
    try:
        filesystem, root = pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, ValueError):
        filesystem, root = pafs.LocalFileSystem(), path
    try:
        info = filesystem.get_file_info(root)
    except OSError as exc:
        raise InputError(f"The {role} table {path!r} cannot be read: {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"The {role} table {path!r} does not exist.")
    try:
        dataset = ds.dataset(root, format="parquet", filesystem=filesystem, partitioning="hive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"The {role} table {path!r} is not a readable Parquet dataset: {_first_line(exc)}") from None
    files = sorted(dataset.files)
    if not files:
        raise InputError(f"The {role} table {path!r} holds no Parquet files.")
    return Table(role=role, path=path, dataset=dataset, filesystem=filesystem, files=files)


def fingerprint(tables: list[Table]) -> dict:
    """What identifies the inputs of a run: every file's path, size and modification time, and each schema.

    Equal fingerprints mean the run would read the same bytes (as far as the filesystem tells).
    """
    entries = []
    for table in tables:
        infos = table.filesystem.get_file_info(table.files)
        entries.append({
            "role": table.role,
            "path": table.path,
            "schema": table.schema.to_string(show_schema_metadata=False),
            "files": [{"path": i.path, "size": i.size,
                       "mtime": i.mtime.isoformat() if i.mtime is not None else None} for i in infos],
        })
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
    return {"sha256": digest, "tables": entries}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
