"""The output datasets and their commit protocol, on local disk and on object storage.

Layout under the output root (a local path or any URI pyarrow understands, e.g. s3://bucket/prefix):

    <root>/<dataset>/run_id=<id>/part-0.parquet     weights, metrics, predictions, cv (cross-validated runs only),
                                                     runs (the index)
    <root>/_staging/<id>.<token>/                    a run's files until it commits (never inside a dataset)

Protocol (the same in spirit on both kinds of storage; docs/commit-protocol.md has every fsync and why):
1. A run writes its files to a local directory (`Staging.file`): straight into its staging area when
   the output is local, into its work directory otherwise.
2. `commit()`: locally every staged file and folder is fsynced (`durable.sync_tree`); files of a remote
   run are uploaded into the staging area. Then a journal `_COMMIT` is written there, whole or not at all
   (locally `durable.write_atomic`: a temporary name, fsync, rename, fsync of the folder): from this
   point the commit is decided and will be rolled forward.
3. Each dataset's partition is moved into place, the runs index last; a rerun's old runs-index entry is
   withdrawn first, and so is its old partition of a dataset the new run does not write (`cv`, when a
   cross-validated run is replaced by one that is not). Locally the `run_id=<id>`
   directory is renamed (an existing one is first renamed away into `replaced-<dataset>`), and the
   destination folder is fsynced after each rename (`durable.rename`): a reader globbing the dataset sees the
   partition whole or not at all, and so does a restart after a power loss. On object storage each
   partition is a single object (however many row groups it holds), copied into place: its creation is
   atomic, and an acknowledged PUT is durable.
4. The staging area is deleted.
`recover()`, which every run calls before anything else, rolls forward any staging area with a journal
(a commit interrupted between datasets) and removes staging areas without one whose lease is stale
(runs killed before they committed). A journal that cannot be read (empty, torn, garbage: written by an
older version, or damaged) is judged from what the area holds: if a move had begun (a `replaced-*` folder,
or a staged partition gone) the commit is completed, else the area is removed (not committed). Locally a
runs-index entry that is not a readable Parquet file is removed (that run is not committed). A run is
committed when its runs-index entry exists.

Steps 2-4, and recover's roll-forward and sweep, hold the run id's commit lock (`linreg.outputs.locks`), so one
process at a time moves a run id's partitions. Two runs with the same id at the same time: the commit
checks, under the lock, that the run id's runs-index entry is still the one the run saw when it started
(`Staging.base`); if another run committed the id meanwhile, or holds its lock, it raises
RunConflictError and publishes nothing. A later run (started after the other committed) replaces it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from linreg import redact
from linreg.errors import RunConflictError
from linreg.outputs import durable, locks

log = logging.getLogger(__name__)

DATASETS = ("weights", "metrics", "predictions", "runs")  # a training run's in commit order: the runs index last
CV = "cv"  # a cross-validated run's scores per l2, fold and target (linreg.inputs.schema.cv_schema)
DATASETS_WITH_CV = ("weights", "metrics", "predictions", CV, "runs")  # a cross-validated run's, in commit order
REPORTS = "reports"  # each run's report (linreg.pipeline.report), beside the datasets; removed with the run
PART_FILE = "part-0.parquet"
STAGING = "_staging"
JOURNAL = "_COMMIT"
LEASE = "_LEASE"
PREDICTION_ROW_GROUP = 256 * 1024  # rows per row group of the predictions: bounded writer memory
STALE_LEASE = dt.timedelta(hours=24)  # an uncommitted staging area untouched this long belongs to a dead run


def resolve(output: str) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, root path within it, is_local) for an output root given as a path or URI."""
    if "://" in output:
        filesystem, root = pafs.FileSystem.from_uri(redact.reveal(output))  # the real URI (linreg/redact.py)
    else:
        filesystem, root = pafs.LocalFileSystem(), os.path.abspath(output)
    return filesystem, root.rstrip("/"), isinstance(filesystem, pafs.LocalFileSystem)


def location(output: str, path: str, is_local: bool) -> str:
    """Where `path` (a path in the filesystem that `resolve(output)` gave) is, as a user writes it: the path
    itself on local disk, `<scheme>://<path>` on object storage (the scheme of the output's URI)."""
    return path if is_local else output.split("://", 1)[0] + "://" + path


def partition(root: str, dataset: str, run_id: str, key: str = "run_id") -> str:
    return f"{root}/{dataset}/{key}={run_id}"


def part_path(root: str, dataset: str, run_id: str, key: str = "run_id", part: int = 0) -> str:
    """The path of one partition file: `<root>/<dataset>/<key>=<run_id>/part-<part>.parquet`."""
    return f"{partition(root, dataset, run_id, key)}/{part_file(part)}"


@dataclass
class Staging:
    """Where a run's files wait for the commit; see the module docstring for the protocol."""

    output: str
    run_id: str
    name: str  # <run_id>.<token>
    local_dir: str  # where the run writes its files
    datasets: tuple = DATASETS
    filesystem: pafs.FileSystem = field(default=None, repr=False)
    root: str = ""
    is_local: bool = True
    key: str = "run_id"  # the hive partition column (the scores dataset uses score_run_id)
    base: str | None = None  # the run id's runs-index entry (a digest) when the run started; None: absent

    @classmethod
    def create(cls, output: str, run_id: str, datasets: tuple = DATASETS, key: str = "run_id") -> "Staging":
        filesystem, root, is_local = resolve(output)
        name = f"{run_id}.{secrets.token_hex(4)}"
        area = f"{root}/{STAGING}/{name}"
        if is_local:  # the area's own entry must survive a power loss once its journal does
            durable.makedirs(area)
        else:
            filesystem.create_dir(area, recursive=True)
        local_dir = area if is_local else tempfile.mkdtemp(prefix=f"linreg-stage-{run_id}-")
        staging = cls(output=output, run_id=run_id, name=name, local_dir=local_dir, datasets=tuple(datasets),
                      filesystem=filesystem, root=root, is_local=is_local, key=key,
                      base=index_entry(filesystem, root, run_id) if "runs" in datasets else None)
        for dataset in staging.datasets:
            os.makedirs(os.path.dirname(staging.file(dataset)), exist_ok=True)
        staging.renew_lease()
        return staging

    @property
    def area(self) -> str:
        return f"{self.root}/{STAGING}/{self.name}"

    def file(self, dataset: str, part: int = 0) -> str:
        """Local path where the run writes `dataset`'s partition file (part > 0: another rank's share)."""
        return os.path.join(self.local_dir, dataset, f"{self.key}={self.run_id}", part_file(part))

    def upload(self, dataset: str, local_path: str, part: int) -> None:
        """Put a part file written elsewhere (a rank's work directory) into the staging area on object storage."""
        target = f"{self.area}/{dataset}/{self.key}={self.run_id}/{part_file(part)}"
        pafs.copy_files(local_path, target, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem)

    def renew_lease(self) -> None:
        """Mark the staging area as used by a live run (checked by `recover` of other runs)."""
        _write_text(self.filesystem, f"{self.area}/{LEASE}", dt.datetime.now(dt.timezone.utc).isoformat())

    def discard(self) -> None:
        """Remove the staging area (and local files) of a run that will not commit. A decided commit (its
        journal written) is kept for `recover` to roll forward, never discarded half-moved."""
        if not self.is_local:  # the local copies: on object storage a decided commit's files are already staged
            shutil.rmtree(self.local_dir, ignore_errors=True)
        if file_type(self.filesystem, f"{self.area}/{JOURNAL}") == pafs.FileType.File:
            log.warning("commit of %s was interrupted; the next run will roll it forward", self.name)
            return
        _delete_dir(self.filesystem, self.area)

    def commit(self) -> dict[str, str]:
        """Publish every dataset's partition, the runs index last; return dataset -> final location.

        Raises RunConflictError (publishing nothing) when another run with the same id holds the commit
        lock, or committed the id after this run started."""
        if self.is_local:  # the data before the journal: a durable journal must never point at lost bytes
            durable.sync_tree(self.area, skip=(LEASE,))  # a lost or torn lease is tolerated (mtime fallback)
        else:
            for dataset in self.datasets:
                local = os.path.dirname(self.file(dataset))
                for name in sorted(os.listdir(local)) if os.path.isdir(local) else []:  # every rank's part
                    pafs.copy_files(os.path.join(local, name), f"{self.area}/{dataset}/{self.key}={self.run_id}/{name}",
                                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.filesystem)
        try:
            with locks.commit_lock(self.output, self.filesystem, self.root, self.run_id, key=self.key, owner=self.name):
                self._check_still_ours()
                journal = {"run_id": self.run_id, "datasets": list(self.datasets), "key": self.key}
                before_file_operation()
                if self.is_local:
                    durable.write_atomic(f"{self.area}/{JOURNAL}", json.dumps(journal).encode())
                else:  # a PUT: the object appears whole, and durable, or not at all
                    _write_text(self.filesystem, f"{self.area}/{JOURNAL}", json.dumps(journal))
                roll_forward(self.filesystem, self.root, self.name, journal, self.is_local)
        except locks.LockBusy as exc:
            raise RunConflictError(
                f"Run {self.run_id!r} was not committed: another run with the same id is committing it right now "
                f"({locks.describe(exc.holder)}). Two runs with one id at the same time: exactly one commits. "
                "Rerun later to replace that run, or choose another --run-id.") from None
        if not self.is_local:
            shutil.rmtree(self.local_dir, ignore_errors=True)
        return {d: location(self.output, partition(self.root, d, self.run_id, self.key), self.is_local)
                for d in self.datasets}

    def _check_still_ours(self) -> None:
        """Under the commit lock: the run id's runs-index entry is the one seen when this run started, and the
        staging area still exists (a run whose lease went stale may have been swept)."""
        if "runs" in self.datasets and index_entry(self.filesystem, self.root, self.run_id) != self.base:
            raise RunConflictError(
                f"Run {self.run_id!r} was not committed: another run with the same id committed it after this run "
                f"started (see {self.output}/runs/{self.key}={self.run_id}). Two runs with one id at the same time: "
                "exactly one commits. Rerun to replace that run, or choose another --run-id.")
        if file_type(self.filesystem, f"{self.area}/{LEASE}") != pafs.FileType.File:
            raise RuntimeError(f"The staging area {self.area} of run {self.run_id!r} was removed before its commit "
                               "(its lease was older than the stale limit); nothing was committed.")


def index_entry(filesystem: pafs.FileSystem, root: str, run_id: str) -> str | None:
    """A digest of run `run_id`'s runs-index entry (one small file), None when the run is not committed."""
    path = part_path(root, "runs", run_id)
    try:
        with filesystem.open_input_stream(path) as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError:
        if file_type(filesystem, path) == pafs.FileType.NotFound:
            return None
        raise


def part_file(part: int) -> str:
    """part-0.parquet, part-1.parquet, ...: one file per rank that wrote a share of a dataset."""
    return PART_FILE if part == 0 else f"part-{part}.parquet"


def before_file_operation() -> None:
    """Called before every file operation of a commit: a seam where tests inject crashes."""


def roll_forward(filesystem: pafs.FileSystem, root: str, name: str, journal: dict, is_local: bool) -> None:
    """Finish a decided commit (idempotent): withdraw the run's old runs-index entry and its old partitions of
    the training datasets this commit does not write (`cv` of a replaced cross-validated run), move each staged
    partition into its dataset, the new runs-index entry last, then remove the staging area."""
    area = f"{root}/{STAGING}/{name}"
    run_id = journal["run_id"]
    datasets = list(journal["datasets"])
    key = journal.get("key", "run_id")
    if "runs" in datasets and file_type(filesystem, f"{area}/runs/run_id={run_id}") == pafs.FileType.Directory:
        # While datasets are swapped, a replaced run must not look committed. (Only while the new entry is
        # staged: once it moved in, this commit's withdrawals are done, and a later commit's are its own.)
        _remove_partition(filesystem, partition(root, "runs", run_id), f"{area}/replaced-runs", is_local)
        for dataset in DATASETS_WITH_CV:
            if dataset not in datasets:  # the replaced run's cv must not show beside a run without one
                _remove_partition(filesystem, partition(root, dataset, run_id, key), f"{area}/replaced-{dataset}",
                                  is_local)
    for dataset in datasets:
        staged, final = f"{area}/{dataset}/{key}={run_id}", partition(root, dataset, run_id, key)
        if file_type(filesystem, staged) != pafs.FileType.Directory:
            continue  # moved by an earlier attempt
        if is_local:
            _remove_partition(filesystem, final, f"{area}/replaced-{dataset}", is_local)
            before_file_operation()
            durable.makedirs(os.path.dirname(final))
            durable.rename(staged, final)  # its folder fsynced: the next move relies on this one
        else:
            parts = sorted((i.base_name for i in filesystem.get_file_info(pafs.FileSelector(staged))), key=_part_number)
            for old in filesystem.get_file_info(pafs.FileSelector(final, allow_not_found=True)):
                if old.base_name != PART_FILE:  # parts of a partition written before parts were merged
                    before_file_operation()
                    filesystem.delete_file(old.path)
            before_file_operation()
            if len(parts) == 1:
                filesystem.copy_file(f"{staged}/{parts[0]}", f"{final}/{PART_FILE}")
            else:  # one part per rank: copied one by one, a reader could see some parts and not others
                merge_parts(filesystem, [f"{staged}/{name}" for name in parts], f"{final}/{PART_FILE}")
            before_file_operation()
            filesystem.delete_dir(staged)
    before_file_operation()
    _delete_dir(filesystem, area)


def merge_parts(filesystem: pafs.FileSystem, sources: list[str], target: str) -> None:
    """Write the row groups of several Parquet part files (one schema) into one object, one row group in
    memory at a time. On object storage the object appears only when its (multipart) upload completes, so
    a reader sees the partition whole or not at all."""
    first = pq.ParquetFile(filesystem.open_input_file(sources[0]))
    schema = first.schema_arrow
    with filesystem.open_output_stream(target) as sink, \
            pq.ParquetWriter(sink, schema, compression="snappy",
                             use_dictionary=[f.name for f in schema if not pa.types.is_floating(f.type)]) as writer:
        for source in sources:
            part = first if source == sources[0] else pq.ParquetFile(filesystem.open_input_file(source))
            for group in range(part.num_row_groups):
                writer.write_table(part.read_row_group(group).cast(schema))


def _part_number(name: str) -> int:
    """part-0.parquet -> 0, part-12.parquet -> 12 (rank order, not text order)."""
    try:
        return int(name.split("-", 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return 1 << 30


def _remove_partition(filesystem: pafs.FileSystem, final: str, trash: str, is_local: bool) -> None:
    """Take a committed partition out of its dataset (locally by a rename into the staging area)."""
    if file_type(filesystem, final) != pafs.FileType.Directory:
        return
    before_file_operation()
    if is_local:
        durable.rename(final, trash)  # durably out of the dataset (and kept in the area) before the new one moves in
    else:
        filesystem.delete_dir(final)


def recover(output: str, *, stale_after: dt.timedelta = STALE_LEASE,
            entries: dict[str, pa.Schema] | None = None) -> list[str]:
    """Roll forward interrupted commits, settle areas whose journal is unreadable, sweep stale uncommitted
    staging areas and (locally) unreadable runs-index entries; return what was done, one line each.
    `entries`, when given, receives run id -> schema of each runs-index entry that this read whole and found
    readable (locally: so that a caller needing the entries' footers does not read them again)."""
    filesystem, root, is_local = resolve(output)
    done = []
    infos = filesystem.get_file_info(pafs.FileSelector(f"{root}/{STAGING}", allow_not_found=True))
    now = dt.datetime.now(dt.timezone.utc)
    for info in infos:
        if info.type != pafs.FileType.Directory:
            continue
        name = info.base_name
        state, journal = read_journal(filesystem, info.path)
        if state == "absent" and not _lease_stale(filesystem, info.path, now, stale_after):
            continue  # a live run's staging area
        run_id = journal["run_id"] if state == "whole" else name.rsplit(".", 1)[0]
        key = journal.get("key", "run_id") if state == "whole" else _staged_key(filesystem, info.path)
        try:
            with locks.commit_lock(output, filesystem, root, run_id, key=key, owner=f"recover of {name}"):
                # Look again under the lock: the owner may have finished, or written its journal, meanwhile.
                message = _settle(filesystem, root, name, run_id, key, is_local, now, stale_after)
        except locks.LockBusy as exc:  # a live process is committing that run id: its business
            log.info("left %s alone: its run id is being committed by %s", name, locks.describe(exc.holder))
            continue
        if message:
            done.append(message)
            log.warning("%s", message)
    if is_local:
        done += _drop_torn_entries(output, filesystem, root, entries)
    return done


def _settle(filesystem: pafs.FileSystem, root: str, name: str, run_id: str, key: str, is_local: bool,
            now: dt.datetime, stale_after: dt.timedelta) -> str | None:
    """Under the run id's commit lock: finish, remove or keep one staging area; what was done, or None."""
    area = f"{root}/{STAGING}/{name}"
    if file_type(filesystem, area) != pafs.FileType.Directory:
        return None  # its owner finished or discarded it meanwhile
    state, journal = read_journal(filesystem, area)
    if state == "whole":
        roll_forward(filesystem, root, name, journal, is_local)
        return f"rolled forward the interrupted commit of {name}"
    if state == "torn":
        datasets = _staged_datasets(filesystem, area)
        if _moves_begun(filesystem, area, run_id, key, datasets):
            roll_forward(filesystem, root, name, {"run_id": run_id, "datasets": datasets, "key": key}, is_local)
            return (f"completed the interrupted commit of {name} from what its staging area holds "
                    f"({', '.join(datasets)}): its journal was unreadable ({journal}) but its moves had begun")
        _delete_dir(filesystem, area)
        return (f"removed the staging area {name}: its journal was unreadable ({journal}) and none of its "
                "partitions had been moved, so it was not committed")
    if state == "pending":  # only the writer holds the lock while writing it: that writer is gone
        _delete_dir(filesystem, area)
        return (f"removed the staging area {name}: its commit stopped while its journal was being written "
                "(not committed)")
    if _lease_stale(filesystem, area, now, stale_after):
        _delete_dir(filesystem, area)
        return f"swept the stale staging area {name}"
    return None


def read_journal(filesystem: pafs.FileSystem, area: str) -> tuple[str, dict | str | None]:
    """The state of a staging area's journal: ("whole", journal dict), ("torn", why it cannot be used),
    ("pending", None) when only a temporary journal exists (a commit stopped while writing it), or
    ("absent", None). Never raises on the journal's bytes: empty, truncated and garbage are "torn"."""
    try:
        with filesystem.open_input_stream(f"{area}/{JOURNAL}") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        data = None
    except OSError:
        if file_type(filesystem, f"{area}/{JOURNAL}") == pafs.FileType.File:
            raise
        data = None
    if data is None:
        names = [i.base_name for i in filesystem.get_file_info(pafs.FileSelector(area, allow_not_found=True))]
        return ("pending" if any(durable.is_temporary(n, JOURNAL) for n in names) else "absent"), None
    try:
        journal = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "torn", f"{len(data)} byte(s), not JSON" if data else "empty"
    if not (isinstance(journal, dict) and isinstance(journal.get("run_id"), str)
            and isinstance(journal.get("datasets"), list) and journal["datasets"]
            and all(isinstance(d, str) for d in journal["datasets"])
            and isinstance(journal.get("key", "run_id"), str)):
        return "torn", "JSON without run_id and datasets"
    return "whole", journal


def _staged_datasets(filesystem: pafs.FileSystem, area: str) -> list[str]:
    """The datasets a staging area was made for, in commit order (the runs index last): the folders that
    `Staging.create` made (they stay after their partition moved out) and those of `replaced-*`."""
    names = set()
    for info in filesystem.get_file_info(pafs.FileSelector(area, allow_not_found=True)):
        if info.type == pafs.FileType.Directory:
            names.add(info.base_name.removeprefix("replaced-"))
    return sorted(names, key=lambda d: (d == "runs", DATASETS_WITH_CV.index(d) if d in DATASETS_WITH_CV else -1, d))


def _moves_begun(filesystem: pafs.FileSystem, area: str, run_id: str, key: str, datasets: list[str]) -> bool:
    """Whether a commit had started moving partitions: an earlier partition was taken out (`replaced-*`), or a
    staged partition is gone (`Staging.create` made one folder per dataset)."""
    for dataset in datasets:
        if file_type(filesystem, f"{area}/replaced-{dataset}") != pafs.FileType.NotFound:
            return True
        if file_type(filesystem, f"{area}/{dataset}/{key}={run_id}") != pafs.FileType.Directory:
            return True
    return False


def read_entry(filesystem: pafs.FileSystem, path: str) -> pa.Table:
    """A runs-index entry's table, read whole and validated (text is UTF-8, offsets in bounds); raises
    (OSError, pyarrow.ArrowException) when it is torn or damaged."""
    table = pq.read_table(path, filesystem=filesystem, partitioning=None)
    table.validate(full=True)
    return table


def _drop_torn_entries(output: str, filesystem: pafs.FileSystem, root: str,
                       entries: dict[str, pa.Schema] | None = None) -> list[str]:
    """Remove every runs-index entry that is not a readable Parquet file (that run is not committed), so that
    readers of the whole runs dataset work again; the run's other partitions are then orphans for retention.
    Local disk only: on object storage an entry is a single PUT, whole or absent. The schema of each entry
    read and found readable goes into `entries` (when given)."""
    done = []
    busy = {i.base_name.rsplit(".", 1)[0] for i in filesystem.get_file_info(
        pafs.FileSelector(f"{root}/{STAGING}", allow_not_found=True))}  # a rerun of that id replaces the entry
    for info in filesystem.get_file_info(pafs.FileSelector(f"{root}/runs", allow_not_found=True)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("run_id="):
            continue
        run_id, path = info.base_name.split("=", 1)[1], f"{info.path}/{PART_FILE}"
        if run_id in busy:
            continue
        problem, schema = _entry_problem(filesystem, path)
        if problem is None:
            if schema is not None and entries is not None:
                entries[run_id] = schema
            continue
        try:
            with locks.commit_lock(output, filesystem, root, run_id, owner="recover of a torn runs-index entry"):
                problem, _ = _entry_problem(filesystem, path)  # a commit may have replaced it meanwhile
                if problem is None:
                    continue
                shutil.rmtree(info.path, ignore_errors=True)
                durable.fsync_dir(f"{root}/runs")
        except locks.LockBusy:
            continue
        message = f"removed the unreadable runs-index entry of run {run_id!r} ({path}: {problem}): it is not committed"
        log.warning("%s", message)
        done.append(message)
    return done


def _entry_problem(filesystem: pafs.FileSystem, path: str) -> tuple[str | None, pa.Schema | None]:
    """(why an existing runs-index entry cannot be read, None), or (None, its schema) when it is readable,
    or (None, None) when it is gone."""
    try:
        return None, read_entry(filesystem, path).schema
    except FileNotFoundError:
        return None, None
    except (OSError, pa.ArrowException) as exc:
        if file_type(filesystem, path) != pafs.FileType.File:
            return None, None
        return (str(exc).splitlines()[0] if str(exc) else type(exc).__name__), None


def _lease_stale(filesystem: pafs.FileSystem, area: str, now: dt.datetime, stale_after: dt.timedelta) -> bool:
    """A staging area's lease is older than `stale_after`. Without a readable lease (a run killed before
    writing it, or one creating its area right now) the area's newest modification time counts instead."""
    renewed = _lease_time(_read_text(filesystem, f"{area}/{LEASE}"))
    if renewed is None:
        infos = [filesystem.get_file_info(area)] + filesystem.get_file_info(
            pafs.FileSelector(area, recursive=True, allow_not_found=True))
        times = [i.mtime for i in infos if i.mtime is not None]
        renewed = max(times) if times else None
        if renewed is not None and renewed.tzinfo is None:
            renewed = renewed.replace(tzinfo=dt.timezone.utc)
    return renewed is None or now - renewed > stale_after


def _lease_time(text: str | None) -> dt.datetime | None:
    """The time a lease records, or None when it is missing or torn (empty, cut short, garbage). A lease cut
    short can still parse (`2026-12-04T19`, an earlier time without its zone): only a zoned time counts."""
    try:
        renewed = dt.datetime.fromisoformat(text.strip()) if text else None
    except ValueError:
        return None
    return renewed if renewed is not None and renewed.tzinfo is not None else None


def _staged_key(filesystem: pafs.FileSystem, area: str) -> str:
    """The partition key of a staging area's datasets (run_id, or score_run_id for scores): from a staged
    partition, else (all moved) from the published partition of the area's run id in one of its datasets."""
    root, name = area.rsplit(f"/{STAGING}/", 1)
    run_id = name.rsplit(".", 1)[0]
    datasets = [i for i in filesystem.get_file_info(pafs.FileSelector(area, allow_not_found=True))
                if i.type == pafs.FileType.Directory and not i.base_name.startswith("replaced-")]
    for dataset in datasets:
        for part in filesystem.get_file_info(pafs.FileSelector(dataset.path, allow_not_found=True)):
            if "=" in part.base_name:
                return part.base_name.split("=", 1)[0]
    for dataset in datasets:
        for part in filesystem.get_file_info(pafs.FileSelector(f"{root}/{dataset.base_name}", allow_not_found=True)):
            if part.base_name.endswith(f"={run_id}"):
                return part.base_name.split("=", 1)[0]
    return "run_id"


def file_metadata(*, run_id: str, trainer: str, config: dict, fingerprint: dict, versions: dict,
                  schema_version: str) -> dict[bytes, bytes]:
    """Key-value metadata recorded in every output file."""
    items = {"schema_version": schema_version, "run_id": run_id, "trainer": trainer,
             "config": json.dumps(config, sort_keys=True), "input_fingerprint": json.dumps(fingerprint, sort_keys=True),
             "versions": json.dumps(versions, sort_keys=True)}
    return {f"linreg.{k}".encode(): v.encode() for k, v in items.items()}


def write_table(path: str, table: pa.Table, metadata: dict[bytes, bytes]) -> None:
    """Write one small output table with the run's metadata."""
    pq.write_table(table.replace_schema_metadata(metadata), path, compression="snappy")


def open_writer(path: str, schema: pa.Schema, metadata: dict[bytes, bytes], *,
                write_back: bool = False, plain: list[str] = ()) -> pq.ParquetWriter:
    """A writer for a large output (predictions); float columns and the columns `plain` skip dictionary
    encoding. With `write_back` (a file the commit will fsync: one in a local staging area, `Staging.is_local`)
    it pushes the file to disk as it grows (`FlushingWriter`)."""
    schema = schema.with_metadata(metadata)
    dictionary = [f.name for f in schema if not pa.types.is_floating(f.type) and f.name not in plain]
    kind = FlushingWriter if write_back else pq.ParquetWriter
    return kind(path, schema, compression="snappy", use_dictionary=dictionary)


class FlushingWriter(pq.ParquetWriter):
    """A ParquetWriter that starts the write-back of its file to disk every FLUSH_BYTES of growth, without
    waiting for it (as PostgreSQL's checkpoint_flush_after does), so the disk works while the run computes
    and the commit's fsync of the file (`durable.sync_tree`) finds little left to write."""

    FLUSH_BYTES = 32 << 20  # measured at 10M rows: the commit's fsync 0.6-1.1 s -> 0.1-0.3 s, the pass unchanged

    def __init__(self, where: str, *args, **kwargs):
        super().__init__(where, *args, **kwargs)
        self._where, self._flushed = where, 0

    def write_table(self, table: pa.Table, row_group_size: int | None = None) -> None:
        super().write_table(table, row_group_size)
        size = os.path.getsize(self._where)
        if size - self._flushed >= self.FLUSH_BYTES and hasattr(os, "posix_fadvise"):
            fd = os.open(self._where, os.O_RDONLY)
            try:  # Linux: DONTNEED starts the write-back of the range's dirty pages and returns
                os.posix_fadvise(fd, self._flushed, size - self._flushed, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            self._flushed = size


def file_type(filesystem: pafs.FileSystem, path: str) -> pafs.FileType:
    """File, Directory or NotFound: what `path` is in `filesystem`."""
    return filesystem.get_file_info(path).type


def _write_text(filesystem: pafs.FileSystem, path: str, text: str) -> None:
    with filesystem.open_output_stream(path) as out:
        out.write(text.encode())


def _read_text(filesystem: pafs.FileSystem, path: str) -> str | None:
    """A small file's text (bytes that are not UTF-8 replaced: a torn file is the caller's to judge)."""
    if file_type(filesystem, path) != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as f:
        return f.read().decode(errors="replace")


def _delete_dir(filesystem: pafs.FileSystem, path: str) -> None:
    if file_type(filesystem, path) == pafs.FileType.Directory:
        filesystem.delete_dir(path)
    parent = path.rsplit("/", 1)[0]
    if isinstance(filesystem, pafs.LocalFileSystem):  # rmdir: only when empty, even if another run just made one
        if parent.endswith(f"/{STAGING}"):
            try:
                os.rmdir(parent)
            except OSError:
                pass
        return
    # Object storage: pyarrow leaves a marker for the empty parent; remove it. (Another run may remove it
    # at the same time, and a run creating its area in between can lose its marker and lease: it then fails
    # at its commit, `_check_still_ours`, rather than publish anything.)
    if parent.endswith(f"/{STAGING}") and file_type(filesystem, parent) == pafs.FileType.Directory:
        if not filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
            try:
                filesystem.delete_dir(parent)
            except FileNotFoundError:
                pass
