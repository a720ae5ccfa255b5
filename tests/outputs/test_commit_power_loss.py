"""Power loss at any instant of a commit: the SIGKILL invariants hold in every state the disk may be left in.

One real process is recorded under strace (tests/crash_model.py), in segments: a training run committing a
new run id, one replacing that run id, a scoring run, a retention prune (index entry first) and a snapshot
save, on an output root that already holds a committed run. At points of each recorded segment the model
lists the trees a power loss may leave (unsynced bytes lost, empty, half or with a zeroed tail; unsynced
folder changes present or absent, alone or together), and each tree is checked as a real output root:
- earlier runs byte-identical; every partition a reader sees (`<dataset>/<key>=<id>/`) whole: byte-equal to
  the version before the commit or the one after; the runs index lists a run only when every dataset holds it
  whole, from the same version; a snapshot is the previous one or the new one, never torn or missing;
- the next run repairs: `commit.recover` (what every run does first) keeps all of that, and recovering once
  the crashed run's lease is stale leaves no staging area, every dataset holding exactly the indexed runs,
  a replaced run never lost; a new commit into that root then succeeds;
- once the commit is decided (its journal durable), and after the recorded process returned, recovery
  publishes its result whole (a decided or returned commit is never lost).
Then each fsync of the protocol, grouped by what it syncs (its path with ids abstracted), is dropped from the
trace in turn: the model must find a violating state without it (else the fsync is not needed, and the test
says which). And the trace with every fsync dropped (what the code did before it had any) must fail.

CI checks a sample (every point that changes a folder or syncs, every third of the others, and the main
variants of each; the fsync drops on the replacing commit only): about a minute on 2 cores, most of it the
recording. LINREG_LONG_TESTS=1 checks every point with every variant. strace is required: CI installs it.

In the docs, this paragraph: "tests/outputs/test_commit_power_loss.py records each kind of commit (new and replacing
training runs, scoring, retention, snapshots) with strace, including the bytes pyarrow's C++ threads write,
and replays it on a model file system that keeps what was fsynced apart from what was only written (as ALICE,
OSDI 2014, and SQLite's crash-test file system do). At every point it materializes the states a power loss may
leave (unsynced bytes absent, empty, half or with a zeroed tail; unsynced folder entries present or absent) and
checks the SIGKILL invariants on each, then that the next run repairs it. Each fsync is shown necessary:
without it the model finds a state that breaks an invariant."
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import crash_model as cm
from tests.conftest import REPO, SAMPLE

LONG = os.environ.get("LINREG_LONG_TESTS") == "1"
DATASETS = ("weights", "metrics", "predictions", "runs")
JOURNAL = "_COMMIT"
SAMPLE_EVERY = 1 if LONG else 3  # CI: every 3rd crash point, plus every point that changes a folder


# ------------------------------------------------------------------------------------------ what is expected

def partitions(state: dict, dataset: str) -> dict[str, dict[str, bytes]]:
    """run id -> {file name: bytes} of each `<dataset>/<key>=<id>/` folder in a tree dict (files only)."""
    out: dict[str, dict[str, bytes]] = {}
    for rel, data in state.items():
        parts = rel.split("/")
        if parts[0] == dataset and len(parts) >= 2 and "=" in parts[1]:
            run = out.setdefault(parts[1].split("=", 1)[1], {})
            if len(parts) == 3 and data is not cm.DIR:
                run[parts[2]] = data
    return out


def dataset_names(state: dict) -> list[str]:
    """The top-level folders that are datasets (not `_staging`, `_locks`, ...)."""
    return sorted(rel for rel, data in state.items() if data is cm.DIR and "/" not in rel and not rel.startswith("_"))


def staging_areas(state: dict) -> list[str]:
    return sorted(rel for rel, data in state.items() if rel.startswith("_staging/") and rel.count("/") == 1)


@dataclass
class Commit:
    """What one recorded commit of `run_id` must keep: its datasets before (`old`, empty for a new id) and
    after (`new`), and every other partition of the root as it was."""

    rec: cm.Recording
    run_id: str
    datasets: tuple
    index: bool  # the runs index lists committed runs (training); scores have none
    checker: "CommitChecker" = field(default=None, repr=False)  # shared: a state met again is not re-checked
    old: dict = field(default_factory=dict)
    new: dict = field(default_factory=dict)
    others: dict = field(default_factory=dict)  # (dataset, id) -> files, every other partition

    def __post_init__(self):
        for d in self.datasets:
            self.old[d] = partitions(self.rec.initial, d).get(self.run_id, {})
            self.new[d] = partitions(self.rec.final, d)[self.run_id]
        for d in dataset_names(self.rec.initial):
            self.others.update({(d, i): files for i, files in partitions(self.rec.initial, d).items()
                                if not (d in self.datasets and i == self.run_id)})
        self.checker = CommitChecker(self)
        same = [d for d in self.datasets if self.old[d] == self.new[d]]
        assert not same, f"the replaced and the replacing {same} are byte-identical: a mix would go unseen"
        assert all(self.new[d] for d in self.datasets), "the recorded commit published nothing"


def published_problems(state: dict, c: Commit) -> list[str]:
    """Violations of 'earlier runs byte-identical, visible partitions whole, the index lists whole runs'."""
    problems = []
    for (d, i), files in c.others.items():
        if partitions(state, d).get(i, {}) != files:
            problems.append(f"earlier run {i!r} changed in {d}")
    seen = {d: partitions(state, d).get(c.run_id, {}) for d in c.datasets}
    for d, files in seen.items():
        if files and files not in (c.old[d], c.new[d]):
            problems.append(f"{d} partition of {c.run_id!r} visible but torn: {_sizes(files, c.old[d], c.new[d])}")
    if c.index and seen["runs"]:
        version = "old" if seen["runs"] == c.old["runs"] else "new" if seen["runs"] == c.new["runs"] else None
        expected = c.old if version == "old" else c.new
        for d in c.datasets:
            if version and seen[d] != expected[d]:
                problems.append(f"runs index lists {c.run_id!r} ({version} entry) but its {d} partition is "
                                f"{'absent' if not seen[d] else 'another version or torn'}")
    return problems


def _sizes(files: dict, old: dict, new: dict) -> str:
    return (f"{ {k: len(v) for k, v in files.items()} } (old { {k: len(v) for k, v in old.items()} }, "
            f"new { {k: len(v) for k, v in new.items()} })")


def repaired_problems(state: dict, c: Commit) -> list[str]:
    """After recovery with every dead run's lease stale: the above, no staging area, the datasets hold
    exactly the indexed runs, and a replaced run is still listed."""
    problems = published_problems(state, c)
    if staging_areas(state):
        problems.append(f"staging left after recovery: {staging_areas(state)}")
    if c.index:
        listed = set(partitions(state, "runs"))
        for d in c.datasets:
            if set(partitions(state, d)) - listed:
                problems.append(f"{d} holds unindexed runs {sorted(set(partitions(state, d)) - listed)}")
        if c.old["runs"] and c.run_id not in listed:
            problems.append(f"the replaced run {c.run_id!r} was lost (neither the old nor the new version listed)")
    else:
        d = c.datasets[0]
        if partitions(state, d).get(c.run_id) not in (None, c.new[d], c.old[d] or None):
            problems.append(f"{d} partition of {c.run_id!r} not whole after recovery")
    return problems


# ------------------------------------------------------------------------------------------ checking a state

SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None  # tmpfs: fast


class CommitChecker:
    """Checks crash states of one recorded commit; a state (or a recovered tree) met again is not re-run."""

    def __init__(self, commit: Commit):
        self.c = commit
        self.results: dict = {}
        self.further: dict = {}

    def __call__(self, state: dict, *, final: bool = False) -> list[str]:
        """Problems of a crash state; final: the commit was decided or returned, its result must survive."""
        key = (hash(tuple(sorted(state.items()))), final)
        if key not in self.results:
            logging.disable(logging.WARNING)  # recovery logs what it does, thousands of times here
            try:
                self.results[key] = self.check(state, final)
            finally:
                logging.disable(logging.NOTSET)
        return self.results[key]

    def check(self, state: dict, final: bool) -> list[str]:
        """Every problem of one crash state: as left, after the next run's recover(), after recovery of stale
        staging, and after a further commit into it."""
        from linreg.outputs import commit

        c = self.c
        problems = [f"as left: {p}" for p in published_problems(state, c)]
        problems += [f"as left: {p}" for p in torn_journals(state)]
        with tempfile.TemporaryDirectory(prefix="crash-state-", dir=SCRATCH) as work:
            root = os.path.join(work, "out")
            os.makedirs(root)
            cm.write_tree(root, state)
            try:
                commit.recover(root)
                problems += [f"after recover(): {p}" for p in published_problems(cm.tree(root), c)]
                commit.recover(root, stale_after=dt.timedelta(0))
            except Exception as exc:  # noqa: BLE001 - any exception of recovery is the finding
                return problems + [f"recover() raised {type(exc).__name__}: {exc}"]
            after = cm.tree(root)
            problems += [f"after recovery of stale staging: {p}" for p in repaired_problems(after, c)]
            result = "runs" if c.index else c.datasets[0]
            if final and partitions(after, result).get(c.run_id) != c.new[result]:
                problems.append("the commit was decided (its journal durable) or returned, but its result did not "
                                "survive the power loss")
            key = hash(tuple(sorted(after.items())))
            if key not in self.further:
                self.further[key] = further_commit(root, c) if c.index else []
            problems += self.further[key]
        return problems


def torn_journals(state: dict) -> list[str]:
    """The issue's rule for the journal itself: a visible `_COMMIT` is always whole (a JSON object naming the
    run, its datasets and key). Recovery survives a torn one too, but only by inferring from the area what a
    whole journal states; this is what makes the fsync of the journal's temporary file necessary."""
    torn = []
    for path, data in state.items():
        if path.startswith("_staging/") and path.endswith(f"/{JOURNAL}"):
            try:
                journal = json.loads(data) if data else None
            except ValueError:
                journal = None
            if not (isinstance(journal, dict) and {"run_id", "datasets", "key"} <= journal.keys()):
                torn.append(f"a visible journal {path} is not whole ({len(data or b'')} bytes)")
    return torn


def further_commit(root: str, c: Commit) -> list[str]:
    """A new run ('aftercrash', the recorded run's tables under another id) commits into the recovered root
    and reads back whole."""
    from linreg.outputs import commit, runindex

    try:
        staging = commit.Staging.create(root, "aftercrash")
        for d in DATASETS:
            (name, data), = c.new[d].items()
            table = pq.read_table(pa.BufferReader(data))
            if "run_id" in table.column_names:
                table = table.set_column(table.column_names.index("run_id"), "run_id",
                                         pa.array(["aftercrash"] * table.num_rows))
            commit.write_table(staging.file(d), table, table.schema.metadata or {})
        staging.commit()
        if "aftercrash" not in {r["run_id"] for r in runindex.read_runs(root)}:
            return ["a further commit is not listed"]
        for d in DATASETS:
            pq.read_table(f"{root}/{d}/run_id=aftercrash")
    except Exception as exc:  # noqa: BLE001
        return [f"a further commit failed: {type(exc).__name__}: {exc}"]
    return []


QUIET = ("write", "pwrite64", "writev", "pwritev", "pwritev2", "lseek", "close", "dup", "dup2", "dup3", "fcntl",
         "mmap", "openat", "open")  # points that change no folder (an openat that creates a file is not quiet)


def _whole_journal(path: str, data: bytes | None) -> bool:
    """A staging area's journal that a power loss cannot tear any more: durable and whole."""
    if not (path.startswith("_staging/") and path.endswith(f"/{JOURNAL}") and data):
        return False
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


def explore(rec: cm.Recording, check, events=None, *, sample: int = 1, full: bool = True, stop_first: bool = False,
            start: int = 0) -> tuple[int, list[str]]:
    """Check the crash states at points of `events` from event seq `start`: every point that changes a folder
    or syncs, the last one, and every `sample`-th of the others. Returns (states checked, violations)."""
    events = rec.events if events is None else events
    checked, found, seen, quiet, decided = 0, [], set(), 0, False
    for point in cm.crash_points(events, rec):
        # Once a journal is durable the commit is decided: from then on recovery must publish its result.
        decided = decided or any(_whole_journal(path, data)
                                 for path, data in point.model.crash_tree(set(), lambda node: node.durable).items())
        if point.event.seq < start:
            continue
        final = point.index == len(events) - 1
        creates = point.event.name in ("openat", "open") and "O_CREAT" in point.event.text
        if point.event.name in QUIET and not creates and not final:
            quiet += 1
            if quiet % sample:
                continue
        for label, state in point.model.states(full=full):
            must_publish = decided or (final and label == "only durable state")
            key = (hash(tuple(sorted(state.items()))), must_publish)
            if key in seen:
                continue
            seen.add(key)
            checked += 1
            problems = check(state, final=must_publish)
            if problems:
                found.append(f"after {point.event.describe(rec.root)}, {label}: {problems[0]}")
                if stop_first:
                    return checked, found
    return checked, found


# ------------------------------------------------------------------------------------------ recordings

RECORDED = cm.MARK_CODE + """
import logging, sys
sys.path.insert(0, ".")
logging.disable(logging.WARNING)
import torch
from linreg.config import TrainConfig
from linreg.outputs import retention
from linreg.outputs.snapshot import Snapshots
from linreg.pipeline.scoring import ScoreConfig, score
from linreg.pipeline.steps import run

ROOT, WEATHER, YIELDS = {root!r}, {weather!r}, {yields!r}


def train(seed):  # another seed: another holdout split, so every file of the replacing run differs
    run(TrainConfig(weather=WEATHER, yields=YIELDS, output=ROOT, run_id="nightly", trainer="exact", seed=seed))


def save(epoch):
    class Schedule:
        def state_dict(self):
            return {{"lr": 0.1}}
    Snapshots(ROOT, "snap", every=1, rank=0, identity="x").maybe_save(
        epoch, tensors={{"w": torch.arange(4.0) * epoch}}, schedule=Schedule(), losses=[1.0] * epoch,
        generator=torch.Generator().manual_seed(epoch))


mark("train-new")
train(1)
mark("train-replacing")
train(2)
mark("score")
score(ScoreConfig(model=ROOT, weather=WEATHER, score_run_id="s1"))
mark("prune")
retention.prune(ROOT, keep_last=1)
mark("snapshot-first")
save(1)
mark("snapshot")
save(2)
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One recorded process, in segments, on an output root that holds one committed run ('early'): a
    training run committing 'nightly', the same again (replacing it), a scoring run ('s1'), a prune that keeps
    the last run (so 'early' goes), then two snapshot saves (the second is checked). One process, so the
    imports are paid once; each segment starts from the tree the previous one left."""
    from linreg.config import make_config
    from linreg.pipeline import steps

    assert shutil.which("strace"), "strace is required by the crash-consistency tests (CI installs it: .ci/run)"
    root = str(tmp_path_factory.mktemp("crash") / "out")
    logging.disable(logging.WARNING)
    try:
        steps.run(make_config(weather=str(SAMPLE / "weather.parquet"), yields=str(SAMPLE / "yields.parquet"),
                                 output=root, run_id="early", trainer="exact"))
    finally:
        logging.disable(logging.NOTSET)
    code = RECORDED.format(root=root, weather=str(SAMPLE / "weather.parquet"), yields=str(SAMPLE / "yields.parquet"))
    rec = cm.record(code, root, cwd=str(REPO), python=sys.executable)
    rec.self_test()
    return rec


@pytest.fixture(scope="module")
def training(recorded):
    segments = recorded.segments()
    return {"new": Commit(segments["train-new"], "nightly", DATASETS, index=True),
            "replacing": Commit(segments["train-replacing"], "nightly", DATASETS, index=True)}


@pytest.fixture(scope="module")
def scoring(recorded):
    return Commit(recorded.segments()["score"], "s1", ("scores",), index=False)


@pytest.fixture(scope="module")
def pruning(recorded):
    return Prune(recorded.segments()["prune"], keep_last=1)


@pytest.fixture(scope="module")
def snapshotting(recorded):
    return recorded.segments()["snapshot"]


# ------------------------------------------------------------------------------------------ tests

def test_the_recorder_sees_every_byte_of_a_commit_including_pyarrows_threads(recorded, training):
    """Replaying the trace gives the output root on disk byte for byte, Parquet files written from C++ included."""
    assert recorded.replay().volatile_tree() == recorded.final  # no byte escaped the recorder (self_test)
    assert list(recorded.segments()) == ["train-new", "train-replacing", "score", "prune", "snapshot-first",
                                         "snapshot"]
    rec = training["new"].rec
    written = {e.args[0].path.rsplit("/", 3)[-3] for e in rec.events if e.name in ("write", "pwrite64", "writev")}
    assert {"weights", "metrics", "predictions", "runs"} <= written  # pyarrow's C++ writer, seen by no Python seam
    assert any(e.name in ("rename", "renameat", "renameat2") for e in rec.events)


@pytest.mark.parametrize("case", ["new", "replacing"])
def test_a_power_loss_at_any_point_of_a_training_commit_keeps_the_invariants(training, case):
    commit = training[case]
    checked, found = explore(commit.rec, commit.checker, sample=SAMPLE_EVERY, full=LONG)
    assert checked > 20
    assert not found, f"{len(found)} of {checked} crash states break an invariant, e.g.:\n" + "\n".join(found[:8])


def test_without_any_fsync_the_model_finds_a_broken_state(training):
    """The checker can fail: the commit as it was before any fsync loses data under a power loss."""
    commit = training["replacing"]
    events = cm.without_syncs(commit.rec.events)
    _, found = explore(commit.rec, commit.checker, events, sample=SAMPLE_EVERY, full=False, stop_first=True)
    assert found


def unneeded_syncs(rec: cm.Recording, check, *, sample: int = 1, full: bool = True) -> tuple[dict, list[str]]:
    """Drop each role's fsyncs in turn (see cm.sync_roles); return (roles, those without which the model
    still finds no violating state)."""
    roles = cm.sync_roles(rec)
    unneeded = []
    for role, seqs in sorted(roles.items()):
        events = cm.without(rec.events, seqs)
        _, found = explore(rec, check, events, sample=sample, full=full, stop_first=True, start=min(seqs))
        if not found:
            unneeded.append(f"{role} ({len(seqs)} call(s))")
    return roles, unneeded


@pytest.mark.parametrize("case", ["new", "replacing"] if LONG else ["replacing"])  # CI: replacing has every role
def test_each_fsync_of_a_training_commit_is_necessary(training, case):
    roles, unneeded = unneeded_syncs(training[case].rec, training[case].checker, sample=SAMPLE_EVERY, full=LONG)
    assert roles, "the commit makes no fsync at all"
    assert not unneeded, (
        "the model finds no state that needs these fsyncs (remove them, or say why the model is wrong about "
        "them; [nothing pending]: the call made nothing durable that an earlier fsync had not, e.g. the source "
        "folder of a rename whose destination folder was already fsynced):\n" + "\n".join(unneeded))


# ------------------------------------------------------------------------------------------ retention

@dataclass
class Prune:
    """A recorded prune: the runs it removed and those it kept, as partitions before it ran."""

    rec: cm.Recording
    keep_last: int
    before: dict = field(default_factory=dict)  # dataset -> run id -> files

    def __post_init__(self):
        self.before = {d: partitions(self.rec.initial, d) for d in dataset_names(self.rec.initial)}
        after = set(partitions(self.rec.final, "runs"))
        self.removed = sorted(set(self.before["runs"]) - after)
        self.kept = sorted(after)
        assert self.removed and self.kept, "the recorded prune removed nothing, or everything"


def prune_problems(state: dict, p: Prune) -> list[str]:
    """Kept runs byte-identical and listed; a removed run still listed only while all of it is there."""
    problems = []
    listed = partitions(state, "runs")
    for d, runs in p.before.items():
        for i, files in runs.items():
            seen = partitions(state, d).get(i, {})
            if i in p.kept and seen != files:
                problems.append(f"kept run {i!r} changed in {d}")
            if i in p.removed and listed.get(i) and seen != files:
                problems.append(f"runs index still lists the pruned run {i!r} but its {d} partition is "
                                f"{'gone' if not seen else 'torn'}")
    return problems


class PruneChecker:
    def __init__(self, p: Prune):
        self.p, self.results = p, {}

    def __call__(self, state: dict, *, final: bool = False) -> list[str]:
        key = (hash(tuple(sorted(state.items()))), final)
        if key not in self.results:
            self.results[key] = self.check(state, final)
        return self.results[key]

    def check(self, state: dict, final: bool) -> list[str]:
        """As left; then after the next prune (which removes what an interrupted one left)."""
        from linreg.outputs import retention

        problems = [f"as left: {x}" for x in prune_problems(state, self.p)]
        with tempfile.TemporaryDirectory(prefix="crash-state-", dir=SCRATCH) as work:
            root = os.path.join(work, "out")
            os.makedirs(root)
            cm.write_tree(root, state)
            logging.disable(logging.WARNING)
            try:
                retention.prune(root, keep_last=self.p.keep_last)
            except Exception as exc:  # noqa: BLE001
                return problems + [f"the next prune raised {type(exc).__name__}: {exc}"]
            finally:
                logging.disable(logging.NOTSET)
            after = cm.tree(root)
        problems += [f"after the next prune: {x}" for x in prune_problems(after, self.p)]
        listed = set(partitions(after, "runs"))
        for d in dataset_names(after):
            unindexed = sorted(set(partitions(after, d)) - listed)
            if d != "scores" and unindexed:
                problems.append(f"after the next prune: {d} holds unindexed runs {unindexed}")
        if final and set(partitions(self.p.rec.final, "runs")) != set(partitions(state, "runs")):
            problems.append("the prune returned but its removals did not survive the power loss")
        return problems


def test_a_power_loss_during_retention_never_lists_a_partly_removed_run(pruning):
    checked, found = explore(pruning.rec, PruneChecker(pruning), full=LONG)
    assert checked > 5
    assert not found, f"{len(found)} of {checked} crash states break an invariant, e.g.:\n" + "\n".join(found[:8])


def test_retention_without_fsync_would_list_a_partly_removed_run(pruning):
    """The index entry goes first only if its removal is durable before the data's: without the fsync the
    model finds the entry back and the data gone."""
    events = cm.without_syncs(pruning.rec.events)
    _, found = explore(pruning.rec, PruneChecker(pruning), events, full=True, stop_first=True)
    assert found and "lists the pruned run" in found[0], found


# ------------------------------------------------------------------------------------------ scores, snapshots

def test_a_power_loss_at_any_point_of_a_scoring_commit_keeps_the_invariants(scoring):
    checked, found = explore(scoring.rec, scoring.checker, sample=SAMPLE_EVERY, full=LONG)
    assert checked > 10
    assert not found, f"{len(found)} of {checked} crash states break an invariant, e.g.:\n" + "\n".join(found[:8])


def snapshot_checker(rec: cm.Recording):
    path = "_staging/snap.snapshots/snapshot.pt"
    old, new = rec.initial[path], rec.final[path]
    assert old != new

    def check(state: dict, final: bool = False) -> list[str]:
        if state.get(path) not in (old, new):
            return [f"the snapshot is {'missing' if path not in state else 'torn'} (neither the previous one nor "
                    "the new one)"]
        if final and state[path] != new:
            return ["the save returned but the new snapshot did not survive the power loss"]
        return []
    return check


def test_a_power_loss_during_a_snapshot_save_leaves_the_previous_or_the_new_snapshot(snapshotting):
    checked, found = explore(snapshotting, snapshot_checker(snapshotting), full=True)
    assert checked > 3
    assert not found, "\n".join(found[:8])
    unsynced = cm.without_syncs(snapshotting.events)
    assert explore(snapshotting, snapshot_checker(snapshotting), unsynced, full=True, stop_first=True)[1], \
        "without its fsyncs the snapshot save should be breakable"


# ------------------------------------------------------------------------------------------ the model itself

def _hex(text: str) -> str:
    return "".join(f"\\x{b:02x}" for b in text.encode())


def _trace(root: str, *, synced: bool) -> list[str]:
    """A hand-written strace -f -xx -y trace: write a temporary file (two threads, one call interrupted),
    fsync it if `synced`, rename it over `a`, fsync the folder if `synced`."""
    tmp, final, cwd = f"{root}/a.tmp", f"{root}/a", f'AT_FDCWD<{_hex("/")}>'
    lines = [f'7 openat({cwd}, "{_hex(tmp)}", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3<{_hex(tmp)}>',
             f'8 write(3<{_hex(tmp)}>, "{_hex("new ")}", 4 <unfinished ...>',
             '7 --- SIGCHLD {si_signo=SIGCHLD} ---',
             '8 <... write resumed>) = 4',
             f'7 pwrite64(3<{_hex(tmp)}>, "{_hex("data")}", 4, 4) = 4',
             f'7 write(3<{_hex(tmp)}>, "{_hex("!")}", 1) = -1 ENOSPC (No space left on device)']
    lines += [f'7 fsync(3<{_hex(tmp)}>) = 0'] * synced
    lines += [f'7 close(3<{_hex(tmp)}>) = 0', f'7 rename("{_hex(tmp)}", "{_hex(final)}") = 0']
    lines += [f'7 openat({cwd}, "{_hex(root)}", O_RDONLY|O_DIRECTORY) = 4<{_hex(root)}>',
              f'7 fsync(4<{_hex(root)}>) = 0'] * synced
    return [line + "\n" for line in lines]


@pytest.mark.parametrize("synced", [False, True])
def test_the_model_loses_exactly_what_was_not_fsynced(synced):
    root = "/crash-model-root"
    rec = cm.Recording(root=root, initial={"a": b"old bytes"}, final={"a": b"new data"},
                       events=cm.parse(_trace(root, synced=synced), root, cwd="/"))
    rec.self_test()  # the two threads' writes, the interrupted call joined, the failed write ignored
    model = rec.replay()
    states = {tuple(sorted(state.items())) for _, state in model.states(full=True)}
    if synced:
        assert states == {(("a", b"new data"),)}
        assert [role for _, role in model.syncs] == ["fsync a.tmp [its bytes]", "fsync ./ [create, rename within]"]
    else:
        assert (("a", b"old bytes"),) in states  # nothing persisted
        assert (("a", b""),) in states  # the rename persisted, the bytes did not (the classic bug)
        assert (("a", b"new "),) in states  # half the bytes
        assert (("a", b"old bytes"), ("a.tmp", b"new data")) in states  # the rename lost, the file kept
        assert all(dict(s).get("a") in (b"old bytes", b"new data", b"", b"new ", b"new \0\0\0\0") for s in states)
