"""Retention: remove old training runs from an output root, safely.

Which runs go: all committed runs but the `keep_last` newest (by finished_at), or those that finished
more than `older_than_days` ago. Never a run in progress (one with a staging area under
`<output>/_staging/<run_id>.*`: it is writing or committing right now). Partitions left without a
runs-index entry (an interrupted prune, a run that died mid-commit) are removed too, unless in progress.

Order, per run: its runs-index entry first (from then on no reader treats it as committed) and, on local
disk, the runs folder fsynced (so that no power loss can bring the entry back once its data is going),
then its weights, metrics, predictions, cv (a cross-validated run's) and report. An interrupted prune
therefore leaves only partitions without an index entry, which the next prune removes. Scores
(`scores/score_run_id=...`) are results of their own and are kept.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from linreg.errors import InputError
from linreg.outputs import commit, durable, runindex

log = logging.getLogger(__name__)

DATA = tuple(d for d in commit.DATASETS_WITH_CV if d != "runs") + (commit.REPORTS,)  # cv: a cross-validated run's


@dataclass
class PrunePlan:
    """Run ids to remove (committed, oldest first), to keep, protected because in progress, and orphans."""

    remove: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    def text(self, *, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        lines = [f"{verb} {len(self.remove)} run(s), kept {len(self.keep)}"
                 + (f", skipped {len(self.in_progress)} in progress" if self.in_progress else "")]
        lines += [f"  {verb}: {r}" for r in self.remove]
        lines += [f"  {verb} (incomplete, no runs-index entry): {r}" for r in self.orphans]
        lines += [f"  in progress, kept: {r}" for r in self.in_progress]
        return "\n".join(lines)


def plan_prune(output: str, *, keep_last: int | None = None, older_than_days: float | None = None,
               now: dt.datetime | None = None) -> PrunePlan:
    """Decide what `prune` removes, without touching anything."""
    if (keep_last is None) == (older_than_days is None):
        raise InputError("Give exactly one of --keep-last N or --older-than DAYS.")
    if keep_last is not None and keep_last < 0 or older_than_days is not None and older_than_days < 0:
        raise InputError("--keep-last and --older-than must not be negative.")
    runs = runindex.read_runs(output)  # oldest first
    busy = runindex.in_progress(output)
    if keep_last is not None:
        old = runs[:max(len(runs) - keep_last, 0)]
    else:
        cutoff = (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=older_than_days)
        old = [r for r in runs if r["finished_at"] < cutoff]
    plan = PrunePlan()
    old_ids = {r["run_id"] for r in old}
    for row in runs:
        run_id = row["run_id"]
        if run_id in busy:
            (plan.in_progress if run_id in old_ids else plan.keep).append(run_id)
        else:
            (plan.remove if run_id in old_ids else plan.keep).append(run_id)
    committed = {r["run_id"] for r in runs}
    leftover = {run_id for dataset in DATA for run_id in runindex.partitions(output, dataset)} - committed
    plan.orphans = sorted(leftover - busy)
    plan.in_progress += sorted(leftover & busy)
    return plan


def prune(output: str, *, keep_last: int | None = None, older_than_days: float | None = None,
          dry_run: bool = False, now: dt.datetime | None = None) -> PrunePlan:
    """Remove the runs `plan_prune` picks: each run's index entry first, then its data. Returns the plan."""
    plan = plan_prune(output, keep_last=keep_last, older_than_days=older_than_days, now=now)
    if dry_run:
        return plan
    filesystem, root, is_local = commit.resolve(output)
    for run_id in plan.remove + plan.orphans:
        if run_id in runindex.in_progress(output):  # started (a rerun of this id) since the plan was made
            plan.in_progress.append(run_id)
            continue
        for dataset in ("runs",) + DATA:
            path = commit.partition(root, dataset, run_id)
            if filesystem.get_file_info(path).type == pafs.FileType.Directory:
                _delete(filesystem, path)
                if dataset == "runs" and is_local:  # the entry's removal durable before any data goes
                    durable.fsync_dir(f"{root}/runs")
        log.info("pruned run %s from %s", run_id, output)
    plan.remove = [r for r in plan.remove if r not in plan.in_progress]
    plan.orphans = [r for r in plan.orphans if r not in plan.in_progress]
    return plan


def _delete(filesystem: pafs.FileSystem, path: str) -> None:
    """Remove one partition directory (a seam where tests interrupt a prune)."""
    filesystem.delete_dir(path)
