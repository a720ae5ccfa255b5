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
import pyarrow.parquet as pq

from linreg import redact
from linreg.errors import InputError, TransientIOError, first_line, format_examples, is_transient

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
    """Open `path` as a Parquet dataset, with a clear error when it is missing, empty or not Parquet.

    `path` may carry credentials or be the redacted form of a URI that does (`linreg.redact`): the table
    opens the real one, and `Table.path`, its messages and its fingerprint name the redacted one.

    Every file's footer is read once here (a few KB each), so a truncated, empty or non-Parquet file is an
    InputError naming it before any scan. Files and directories starting with `_` or `.` (`_SUCCESS`,
    `.part-0.parquet.crc`, `_metadata`) are skipped, as Spark and Hadoop write them beside the data.
    """
    real, path = redact.reveal(path), redact.redact(path)  # open the real URI; name only the redacted one
    try:
        filesystem, root = pafs.FileSystem.from_uri(real)
    except (pa.ArrowInvalid, ValueError):
        filesystem, root = pafs.LocalFileSystem(), real
    try:
        info = filesystem.get_file_info(root)
    except OSError as exc:
        raise InputError(f"The {role} table {path!r} cannot be read: {redact.redact(str(exc))}") from None
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"The {role} table {path!r} does not exist.")
    try:
        dataset = ds.dataset(root, format="parquet", filesystem=filesystem, partitioning="hive")
    except pa.ArrowTypeError as exc:  # a hive directory level and a file column of the same name, typed differently
        raise InputError(f"The {role} table {path!r} cannot be read as one table: {first_line(exc)}. "
                         f"{_partition_clash_hint(filesystem, root)}") from None
    except (pa.ArrowException, OSError) as exc:
        if not is_input_fault(exc):
            raise
        duplicate = _duplicate_columns(filesystem, root, info.type)
        if duplicate is not None:
            file, names = duplicate
            raise InputError(f"The {role} table {path!r}: file {file!r} has more than one column named "
                             f"{format_examples(names)}. Column names must be unique within a file: rename or "
                             "drop the repeated column(s).") from None
        raise InputError(f"The {role} table {path!r} is not a readable Parquet dataset: {first_line(exc)}") from None
    files = sorted(dataset.files)
    if not files:
        raise InputError(f"The {role} table {path!r} holds no Parquet files.")
    table = Table(role=role, path=path, dataset=dataset, filesystem=filesystem, files=files)
    check_footers(table)
    return table


def check_footers(table: Table) -> None:
    """Read every file's footer: InputError naming the first file that is not Parquet (truncated, empty,
    another format), that repeats a column name, or that holds a column also given by its hive partition directory (`year=2020/` and a
    `year` column: which one is meant is ambiguous, and Spark rejects it too)."""
    for fragment in table.fragments():
        try:
            physical = fragment.physical_schema
            physical.names  # noqa: B018 (column names must decode as UTF-8)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            if not isinstance(exc, UnicodeDecodeError) and not is_input_fault(exc):
                raise
            raise InputError(f"The {table.describe()}: file {fragment.path!r} is not a readable Parquet file "
                             f"({first_line(exc)}). Remove it, or write it again; files named _* or .* "
                             "are skipped.") from None
        repeated = sorted({n for n in physical.names if physical.names.count(n) > 1})
        if repeated:
            raise InputError(f"The {table.describe()}: file {fragment.path!r} has more than one column named "
                             f"{format_examples(repeated)}. Column names must be unique within a file: rename or "
                             "drop the repeated column(s).")
        both = [n for n in ds.get_partition_keys(fragment.partition_expression) if n in physical.names]
        if both:
            raise InputError(f"The {table.describe()}: file {fragment.path!r} has a column {both[0]!r} and also lies "
                             f"in a hive partition directory {both[0]}=...; the column must come from one of them. "
                             "Remove the column from the files or the directory level from the paths.")


def is_input_fault(exc: BaseException) -> bool:
    """True when a pyarrow error opening or reading an input is the input's fault (damaged bytes, a missing
    permission): an InputError. False for transient I/O failures, which are re-raised so they are retried."""
    return is_data_error(exc) or not is_transient(exc)


def is_data_error(exc: BaseException) -> bool:
    """True when a pyarrow error is about the bytes of a file (corrupt, truncated, not Parquet), False for
    I/O failures (a dropped connection, a timeout) that are not the data's fault."""
    if isinstance(exc, pa.ArrowException) and not isinstance(exc, OSError):
        return True  # ArrowInvalid, ArrowTypeError, ArrowNotImplementedError, ArrowCapacityError...
    if isinstance(exc, TransientIOError):
        return False
    text = str(exc)
    if any(sign in text for sign in NETWORK_SIGNS):  # a storage request failed: retryable, not the data
        return False
    # pyarrow's decoding errors ("Dictionary page must be before data page", "Couldn't deserialize thrift")
    # are OSErrors without an errno; failed system calls carry one.
    return getattr(exc, "errno", None) is None or any(sign in text for sign in DATA_ERROR_SIGNS)


NETWORK_SIGNS = ("AWS Error", "curl", "Curl", "onnection", "imed out", "imeout", "google::cloud", "HTTP",
                 "Temporary failure", "Broken pipe", "Too many open files")
DATA_ERROR_SIGNS = ("magic bytes", "Parquet file size", "thrift", "Thrift", "deserializ", "Corrupt", "corrupt",
                    "Unexpected end of stream", "page header", "ecompress")


def _duplicate_columns(filesystem: pafs.FileSystem, root: str, kind: pafs.FileType) -> tuple[str, list[str]] | None:
    """(file, repeated column names) of the first file under `root` whose schema repeats a column name, or
    None. Only called on the error path: reads footers until it finds one."""
    if kind == pafs.FileType.File:
        paths = [root]
    else:
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        paths = sorted(i.path for i in infos if i.type == pafs.FileType.File
                       and not any(part.startswith(("_", ".")) for part in i.path[len(root):].split("/")))
    for file in paths:
        try:
            names = pq.read_schema(file, filesystem=filesystem).names
        except (pa.ArrowException, OSError):
            continue
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            return file, repeated
    return None


def _partition_clash_hint(filesystem: pafs.FileSystem, root: str) -> str:
    """Name the hive partition levels that are also file columns, for the message above."""
    try:
        names = ds.dataset(root, format="parquet", filesystem=filesystem).schema.names
        levels = set()
        for f in ds.dataset(root, format="parquet", filesystem=filesystem).files[:1000]:
            levels |= {part.split("=", 1)[0] for part in f[len(root):].split("/") if "=" in part}
    except (pa.ArrowException, OSError):
        return ""
    both = sorted(levels & set(names))
    if not both:
        return ""
    return (f"Column(s) {', '.join(map(repr, both))} are both hive partition directories (name=value) and columns "
            "in the files; the column must come from one of them. Remove the column from the files or the "
            "directory level from the paths.")


def fingerprint(tables: list[Table]) -> dict:
    """What identifies the inputs of a run: every file's path, size and modification time, and each schema.

    Equal fingerprints mean the run would read the same bytes (as far as the filesystem tells). Paths are
    redacted: a credential is not hashed, and changing only a credential keeps the fingerprint.
    """
    entries = []
    for table in tables:
        infos = table.filesystem.get_file_info(table.files)
        entries.append({
            "role": table.role,
            "path": redact.redact(table.path),
            "schema": table.schema.to_string(show_schema_metadata=False),
            "files": [{"path": i.path, "size": i.size,
                       "mtime": i.mtime.isoformat() if i.mtime is not None else None} for i in infos],
        })
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
    return {"sha256": digest, "tables": entries}


def check_unchanged(planned: dict, tables: list[Table]) -> None:
    """Raise InputError naming the files when `tables` no longer match the plan's fingerprint (`planned`,
    `fingerprint`'s dict): a file written, added or removed after the run planned, or while it read them, so
    that the rows read could mix two versions of the inputs (and the run would record the wrong fingerprint)."""
    now = fingerprint(tables)
    if now["sha256"] == planned["sha256"]:
        return
    changes = []
    for before, after in zip(planned["tables"], now["tables"]):
        old = {f["path"]: f for f in before["files"]}
        new = {f["path"]: f for f in after["files"]}
        for path in sorted(old.keys() | new.keys()):
            if path not in old:
                changes.append(f"the {after['role']} file {path!r} is new")
            elif path not in new or (new[path]["size"] is None and old[path]["size"] is not None):
                changes.append(f"the {after['role']} file {path!r} is gone")
            elif old[path] != new[path]:
                changes.append(f"the {after['role']} file {path!r} was rewritten (size {old[path]['size']} -> "
                               f"{new[path]['size']} bytes, modified {old[path]['mtime']} -> {new[path]['mtime']})")
        if not changes and before["schema"] != after["schema"]:
            changes.append(f"the {after['role']} table's schema changed")
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more change(s)" if len(changes) > 3 else "")
    raise InputError(f"The inputs changed while the run read them: {shown or 'the files differ'}. The rows read "
                     "could mix two versions of the inputs, so nothing was written. Run again once the inputs "
                     "are complete.")

