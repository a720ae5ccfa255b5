"""Output roots written by an older schema version: the check that refuses them and the migration.

    python -m flows.migrate --output output --dry-run     # list the runs to migrate
    python -m flows.migrate --output output               # rewrite them in place

The schema versions (`linreg.inputs.schema.SCHEMA_VERSION`, recorded as `linreg.schema_version` in every file):
- 1: the first layout.
- 2 changed two things of version 1, which a migration rewrites:
  - `metrics`: the totals have region null and target null (version 1 wrote 'all', which a region named
    'all' could not be told apart from);
  - `runs`: the entry has no `run_id` column (version 1 had it in the file and in the hive folder
    `run_id=<id>`, which pandas and Spark cannot read as one dataset).
  `weights`, `predictions` and `scores` are the same in both; they are not rewritten and keep their
  `linreg.schema_version` metadata of 1.
- 3 only adds, for cross-validated runs: the `cv` dataset, and `fold` and `<target>_cv_pred` in their
  predictions. Every file of version 2 is a file of version 3 as it is, so versions 2 and 3 are compatible
  (`COMPATIBLE_SINCE`): a root of version 2 runs takes version 3 runs without a migration, and nothing of
  version 2 is rewritten.

A training or scoring run into a root that holds runs of an incompatible version (1, or newer than this
one) stops before doing anything (`check_schema_version`, InputError, exit code 2): mixed in one dataset,
the two layouts would break every reader. The check reads only the footers of the runs entries (one small
file per run), and not even those when `commit.recover` has just read the entries whole
(`recover_and_check`: a run's first step).

`migrate` rewrites each run of version 1, under its run id's commit lock: its metrics file, then its runs
entry last (the entry's version is what the check reads, so a run is migrated once its entry is), each
with the current version in its metadata. Each file is replaced whole: locally by `durable.replace` (a
temporary file in the same folder, fsynced, renamed over the old one, the folder fsynced: as the commit's
journal); on object storage written as one object. A file already at a compatible version is left alone,
so a migration interrupted at any point is finished by running it again.

Version 1 metrics of a region literally named 'all': its rows and the totals share region 'all'. The
writer always wrote the totals first and the per-region rows after them, so the first row of each
(split, target, metric) with region 'all' is the total (region -> null) and a later one is the region's.
Target 'all' always meant the mean over targets (version 1 refused a target named 'all'): -> null.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from linreg.errors import InputError, format_examples
from linreg.inputs.schema import SCHEMA_VERSION
from linreg.outputs import commit, durable, locks, runindex

log = logging.getLogger(__name__)

VERSION_KEY = b"linreg.schema_version"
MIGRATED_KEY = b"linreg.migrated_from"  # the schema version a rewritten file had before
COMPATIBLE_SINCE = "2"  # runs of this version up to SCHEMA_VERSION sit together: later versions only added
OLD_TOTAL = "all"  # version 1's word for "over all regions" and "over all targets"
BATCH_ROWS = 1 << 16  # metrics rows rewritten at a time: memory stays bounded for millions of regions


def command(output: str) -> str:
    return f"python -m flows.migrate --output {output}"


def file_version(filesystem: pafs.FileSystem, path: str, *, runs_entry: bool = False) -> str:
    """The schema version of one output file, from its footer: its `linreg.schema_version` metadata (none:
    "1"), and "1" for a runs entry with a `run_id` column whatever its metadata says (version 1's layout)."""
    with filesystem.open_input_file(path) as f:
        return schema_version(pq.read_schema(f), runs_entry=runs_entry)


def schema_version(schema: pa.Schema, *, runs_entry: bool = False) -> str:
    """The schema version a file's schema records (see `file_version`)."""
    if runs_entry and "run_id" in schema.names:
        return "1"
    return (schema.metadata or {}).get(VERSION_KEY, b"1").decode()


def run_versions(output: str, entries: dict[str, pa.Schema] | None = None) -> dict[str, str]:
    """run id -> schema version of every committed run (its runs entry's footer; nothing else is read).
    `entries`: run id -> schema of entries already read (by `commit.recover`), not read again."""
    filesystem, root, _ = commit.resolve(output)
    found = {}
    for run_id in runindex.partitions(output, "runs"):
        if entries and run_id in entries:
            found[run_id] = schema_version(entries[run_id], runs_entry=True)
            continue
        path = commit.part_path(root, "runs", run_id)
        try:
            found[run_id] = file_version(filesystem, path, runs_entry=True)
        except (OSError, pa.ArrowException):
            continue  # no file (an interrupted prune) or a torn one: not a committed run (see runindex)
    return found


def recover_and_check(output: str) -> list[str]:
    """`commit.recover(output)`, then `check_schema_version(output)`, each runs entry read once: locally recover
    reads every entry whole (to find torn ones) and the check takes the versions from what it read."""
    entries: dict[str, pa.Schema] = {}
    done = commit.recover(output, entries=entries)
    check_schema_version(output, entries)
    return done


def check_schema_version(output: str, entries: dict[str, pa.Schema] | None = None) -> None:
    """Refuse (InputError, exit 2) an output root that holds runs written with a schema version this one
    cannot write beside: older than COMPATIBLE_SINCE (migrate them), or newer than SCHEMA_VERSION.
    `entries`: run id -> schema of runs entries already read (`run_versions`)."""
    versions = run_versions(output, entries)
    older = sorted(r for r, v in versions.items() if _older(v))
    newer = sorted(r for r, v in versions.items() if _newer(v))
    if newer:
        raise InputError(f"The output {output!r} holds run(s) {format_examples(newer)} written by a newer version "
                         f"of this project (schema version {versions[newer[0]]}; this one writes "
                         f"{SCHEMA_VERSION}). Upgrade it to write into this output, or choose another --output.")
    if older:
        raise InputError(
            f"The output {output!r} holds {len(older)} run(s) written with schema version "
            f"{versions[older[0]]} (this version writes {SCHEMA_VERSION}): {format_examples(older)}. Since "
            f"version 2 the metrics totals have null region and target (version 1 wrote 'all') and a runs entry "
            f"has no run_id column; mixed in one dataset, the two layouts would break its readers. Migrate the "
            f"output in place first (it rewrites only the metrics and runs entries of those runs, and is safe to "
            f"rerun if interrupted): {command(output)}")


@dataclass
class Migration:
    """What `migrate` did (or would do, dry_run): run ids migrated, and the files rewritten."""

    runs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    current: int = 0  # runs already at a compatible schema version (COMPATIBLE_SINCE to SCHEMA_VERSION)

    def text(self, *, dry_run: bool) -> str:
        verb = "would migrate" if dry_run else "migrated"
        lines = [f"{verb} {len(self.runs)} run(s) to schema version {SCHEMA_VERSION}; {self.current} run(s) "
                 f"already at version {_span()} (nothing to rewrite)"]
        lines += [f"  {'would rewrite' if dry_run else 'rewrote'}: {path}" for path in self.files]
        return "\n".join(lines)


def migrate(output: str, *, dry_run: bool = False) -> Migration:
    """Rewrite every run of schema version 1 of `output` to the current version (idempotent); runs of a
    compatible version are left as they are."""
    filesystem, root, is_local = commit.resolve(output)
    if commit.file_type(filesystem, root) != pafs.FileType.Directory:
        raise InputError(f"The output {output!r} does not exist (or is not a directory): nothing to migrate.")
    entries: dict[str, pa.Schema] = {}
    if not dry_run:  # interrupted commits (of either version) are finished first, then migrated
        commit.recover(output, entries=entries)
    versions = run_versions(output, entries)
    newer = sorted(r for r, v in versions.items() if _newer(v))
    if newer:
        raise InputError(f"The output {output!r} holds run(s) {format_examples(newer)} of schema version "
                         f"{versions[newer[0]]}, newer than this version's {SCHEMA_VERSION}: nothing to migrate "
                         "with this version of the project.")
    done = Migration(current=sum(_compatible(v) for v in versions.values()))
    for run_id in sorted(r for r, v in versions.items() if _older(v)):
        files = [commit.part_path(root, d, run_id) for d in ("metrics", "runs")]  # the runs entry last
        if dry_run:
            done.runs.append(run_id)
            done.files += [p for p in files if commit.file_type(filesystem, p) == pafs.FileType.File]
            continue
        try:
            with locks.commit_lock(output, filesystem, root, run_id, owner=f"migrate of {run_id}"):
                done.files += _migrate_run(filesystem, files, is_local)
        except locks.LockBusy as exc:
            raise InputError(f"Run {run_id!r} of {output!r} is being committed right now by "
                             f"{locks.describe(exc.holder)}; it was not migrated. Rerun {command(output)} "
                             "when that commit is done.") from None
        done.runs.append(run_id)
        log.info("migrated run %s to schema version %s", run_id, SCHEMA_VERSION)
    return done


def _migrate_run(filesystem: pafs.FileSystem, files: list[str], is_local: bool) -> list[str]:
    """Rewrite a run's metrics file and then its runs entry, each only if still at version 1."""
    rewritten = []
    metrics_path, runs_path = files
    if (commit.file_type(filesystem, metrics_path) == pafs.FileType.File
            and _older(file_version(filesystem, metrics_path))):
        seen: set[tuple] = set()
        _rewrite(filesystem, metrics_path, lambda batch: metrics_v2(batch, seen), is_local)
        rewritten.append(metrics_path)
    if _older(file_version(filesystem, runs_path, runs_entry=True)):
        _rewrite(filesystem, runs_path, runs_v2, is_local)
        rewritten.append(runs_path)
    return rewritten


def metrics_v2(batch: pa.RecordBatch, seen: set[tuple]) -> pa.RecordBatch:
    """Version 1 metrics rows -> version 2: a total's region 'all' -> null (the first row of its (split,
    target, metric) in the file; `seen` carries those keys across the file's batches), target 'all' -> null."""
    region, target = batch.column("region"), batch.column("target")
    total = np.zeros(batch.num_rows, dtype=bool)
    named_all = np.flatnonzero(pc.fill_null(pc.equal(region, OLD_TOTAL), False).to_numpy(zero_copy_only=False))
    keys = batch.select(["split", "target", "metric"]).take(pa.array(named_all, pa.int64())).to_pylist()
    for i, row in zip(named_all, keys):
        key = tuple(row.values())
        if key not in seen:  # written first: the total; a later one is a region called 'all'
            seen.add(key)
            total[i] = True
    null = pa.scalar(None, pa.string())
    columns = {name: batch.column(name) for name in batch.schema.names}
    columns["region"] = pc.if_else(pa.array(total), null, region)
    columns["target"] = pc.if_else(pc.fill_null(pc.equal(target, OLD_TOTAL), False), null, target)
    return pa.record_batch(list(columns.values()), schema=batch.schema)


def runs_v2(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A version 1 runs entry -> version 2: without its run_id column (the folder name holds it)."""
    keep = [name for name in batch.schema.names if name != "run_id"]
    return batch.select(keep)


def _rewrite(filesystem: pafs.FileSystem, path: str, change, is_local: bool) -> None:
    """Replace the Parquet file `path` whole by its batches passed through `change`, with its metadata's
    schema version set to the current one (and the old one recorded)."""
    with filesystem.open_input_file(path) as source:
        reader = pq.ParquetFile(source)
        old = reader.schema_arrow
        metadata = dict(old.metadata or {})
        metadata[MIGRATED_KEY] = metadata.get(VERSION_KEY, b"1")
        metadata[VERSION_KEY] = SCHEMA_VERSION.encode()
        schema = change(pa.RecordBatch.from_pylist([], schema=old)).schema.remove_metadata().with_metadata(metadata)
        dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)]

        def write(sink):
            with pq.ParquetWriter(sink, schema, compression="snappy", use_dictionary=dictionary) as writer:
                for batch in reader.iter_batches(batch_size=BATCH_ROWS):
                    writer.write_batch(change(batch).replace_schema_metadata(metadata))

        if is_local:
            durable.replace(path, write)
        else:  # one object, visible only when its upload completes
            with filesystem.open_output_stream(path) as sink:
                write(sink)


def _older(version: str) -> bool:
    """An older version this one migrates (anything unknown is left alone: refused, never rewritten)."""
    return version.isdigit() and int(version) < int(COMPATIBLE_SINCE)


def _compatible(version: str) -> bool:
    """A version whose files are files of this one as they are (later versions only added): no rewrite."""
    return version.isdigit() and int(COMPATIBLE_SINCE) <= int(version) <= int(SCHEMA_VERSION)


def _newer(version: str) -> bool:
    """A version this one can neither write beside nor migrate: newer, or not a version number."""
    return not (_older(version) or _compatible(version))


def _span() -> str:
    """The compatible versions, as text: "2 to 3" (or "2" while they are one)."""
    return SCHEMA_VERSION if COMPATIBLE_SINCE == SCHEMA_VERSION else f"{COMPATIBLE_SINCE} to {SCHEMA_VERSION}"
