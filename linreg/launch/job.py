"""One rank of a data-parallel training job, as launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK set).

Every rank runs the same steps on its own shard of regions: rank 0 plans (or reads the plan the Prefect
flow made) and broadcasts it; each rank validates its share of the files, joins its regions, fits
(merging the exact factor and moments across ranks; gradients all-reduced), evaluates and writes its
share of the predictions (part-<rank>.parquet in the staging area). After a barrier, that is once every
rank's share is staged, rank 0 commits the run (or, under Prefect, hands its results to the commit task).

Credentials: the command line of a rank carries only redacted URIs, and a plan crosses processes (the
pickled plan file, rank 0's broadcast) without its filesystem object, which holds the credentials it was
made with; each rank reveals the real URIs from its environment (`linreg.redact`) and makes its own.

Failures: a rank that fails writes its error (type, message) to $LINREG_ERROR_DIR/rank-<rank>.json, which
`linreg.launch.torchrun` reports as the job's error; a rank that dies or hangs leaves the others in a collective
that fails after --dist-timeout-seconds at most (sooner when the peer's connection closes), so the job
ends and nothing is committed. SIGTERM (torchrun stopping the survivors) ends a rank through the same
cleanup as an exception.

    torchrun --nproc-per-node 2 -m flows.train --trainer nn ...     (flows.train hands ranks to `rank_main`)
    torchrun --nproc-per-node 2 -m linreg.launch.job --plan-file P --result-file R   (the Prefect job task)
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import traceback
from typing import TYPE_CHECKING

from linreg import redact
from linreg.config import TrainConfig, build_parser, config_from_args
from linreg.errors import EXIT_FAILURE, EXIT_OK, InputError, report_error
from linreg.launch.ending import exit_now
from linreg.launch.identity import job_run_id, restart_count
from linreg.models.fit import GRADIENT_TRAINERS, uses_ddp
from linreg.outputs import commit
from linreg.parallel import dist
from linreg.pipeline import steps

if TYPE_CHECKING:
    from linreg.outputs import snapshot

log = logging.getLogger(__name__)

ERROR_DIR_ENV = "LINREG_ERROR_DIR"


class Terminated(BaseException):
    """SIGTERM: torchrun stops the surviving ranks after one failed; clean up as for an error."""


@dataclasses.dataclass
class RankResult:
    """What rank 0 hands to the commit step: the join's totals over ranks, the fit and the evaluation."""

    joined: object
    fit: object
    evaluation: object


def run_rank(config: TrainConfig, *, plan_file: str | None = None, result_file: str | None = None,
             cluster: dist.Cluster | None = None):
    """Run this rank's part of the job; rank 0 returns the RunSummary (or writes `result_file`), others None."""
    signal.signal(signal.SIGTERM, _terminate)
    device = config.device if config.trainer in GRADIENT_TRAINERS else "cpu"  # exact: CPU and gloo, whatever the GPUs
    try:  # a rank that never joins, or hangs before the plan is shared, times the others out here
        cluster = cluster or dist.setup(device, timeout_seconds=config.dist_timeout_seconds,
                                        process_group=uses_ddp(config.trainer, config.average_every))
        plan = _shared_plan(config, cluster, plan_file)
    except Exception as exc:
        if not isinstance(exc, InputError):  # input errors are reported as they are, by every rank
            _record_error(int(os.environ.get("RANK", 0)), exc)
        raise
    own_work_dir = cluster.is_main and plan_file is None  # rank 0 made the plan here: its work dir is ours
    if not own_work_dir:
        plan = dataclasses.replace(plan, work_dir=tempfile.mkdtemp(prefix=f"linreg-{plan.run_id}-rank{cluster.rank}-"))
    if cluster.is_main and plan_file is None and restart_count() > 0:
        sweep_attempts(plan.config.output, plan.run_id, keep=plan.staging.name)
    snaps = _snapshots(plan, cluster)
    committed = False
    try:
        joined = steps.join_inputs(plan, cluster)
        split = steps.split_rows(plan, joined, cluster)
        fit = steps.fit_model(plan, joined, split, cluster, checkpoint=snaps)
        evaluation = steps.evaluate_model(plan, joined, split, fit, cluster)
        total = steps.global_join(cluster, joined)
        cluster.barrier()  # every rank's share of the predictions is staged
        if not cluster.is_main:
            return None
        if result_file:  # under Prefect the flow's commit task commits
            _write_pickle(result_file, RankResult(joined=total, fit=fit, evaluation=evaluation))
            return None
        summary = steps.commit_run(plan, total, fit, evaluation)
        committed = True
        if snaps is not None:
            snaps.clear()
        return summary
    except BaseException as exc:
        _record_error(cluster.rank, exc)
        if cluster.is_main and plan_file is None and not committed:
            steps.discard(plan)  # this attempt's staging; a decided commit is kept to roll forward
        raise
    finally:
        shutil.rmtree(plan.work_dir, ignore_errors=True)


def _shared_plan(config: TrainConfig, cluster: dist.Cluster, plan_file: str | None) -> steps.RunPlan:
    """Rank 0's plan on every rank (or rank 0's input error on every rank)."""
    plan = None
    if cluster.is_main:
        try:
            if plan_file:
                plan = read_plan(plan_file)
            else:
                plan = steps.plan_run(config.model_copy(update={"run_id": job_run_id(config)}))
        except Exception as exc:  # the other ranks fail with it instead of waiting for a plan
            if cluster.distributed:
                cluster.broadcast_object(("input" if isinstance(exc, InputError) else "failure", str(exc)))
            raise
    shared = portable(plan) if cluster.distributed and plan is not None else plan  # pickled to the other ranks
    kind, value = cluster.broadcast_object(("plan", shared))
    if kind == "input":
        raise InputError(value)
    if kind == "failure":
        raise RuntimeError(f"rank 0 could not plan the run: {value}")
    return restored(value)


def portable(plan: steps.RunPlan) -> steps.RunPlan:
    """The plan without its staging area's filesystem object: pickled, that object holds the credentials it
    was made with. `restored` makes it again from the (redacted) output URI."""
    return dataclasses.replace(plan, staging=dataclasses.replace(plan.staging, filesystem=None))


def restored(plan: steps.RunPlan) -> steps.RunPlan:
    """A plan from `portable` with its staging filesystem made in this process (real URI revealed here)."""
    if plan.staging.filesystem is not None:
        return plan
    filesystem = commit.resolve(plan.staging.output)[0]
    return dataclasses.replace(plan, staging=dataclasses.replace(plan.staging, filesystem=filesystem))


def write_plan(plan: steps.RunPlan, path: str) -> None:
    """Pickle a plan for the ranks (`portable`: no credentials in the file)."""
    _write_pickle(path, portable(plan))


def read_plan(path: str) -> steps.RunPlan:
    with open(path, "rb") as f:
        return restored(pickle.load(f))


def _snapshots(plan: steps.RunPlan, cluster: dist.Cluster) -> snapshot.Snapshots | None:
    config = plan.config
    if config.trainer not in GRADIENT_TRAINERS or not config.snapshot_every:
        return None
    from linreg.outputs import snapshot  # torch's save and load: the gradient trainers' runs only

    attempt = restart_count()
    snaps = snapshot.Snapshots(config.output, plan.run_id, every=config.snapshot_every, rank=cluster.rank,
                               identity=snapshot.identity(config, plan.fingerprint["sha256"]),
                               resume=config.resume or attempt > 0)  # --no-resume: not against our own restarts
    if cluster.is_main:
        if not config.resume and attempt == 0:
            snaps.clear()
        snaps.renew_lease()
    cluster.barrier()
    return snaps


def sweep_attempts(output: str, run_id: str, keep: str | None = None) -> list[str]:
    """Remove the staging areas of earlier attempts of `run_id` (dead ranks of a restarted or failed job)
    that have no commit journal; snapshots and decided commits stay. Returns the names removed."""
    filesystem, root, _ = commit.resolve(output)
    removed = []
    for info in filesystem.get_file_info(commit.pafs.FileSelector(f"{root}/{commit.STAGING}", allow_not_found=True)):
        name = info.base_name
        if (info.type != commit.pafs.FileType.Directory or not name.startswith(run_id + ".") or name == keep
                or name.endswith(".snapshots")):
            continue
        if filesystem.get_file_info(f"{info.path}/{commit.JOURNAL}").type == commit.pafs.FileType.File:
            continue
        filesystem.delete_dir(info.path)
        removed.append(name)
        log.warning("removed the staging area %s of a failed attempt of run %s", name, run_id)
    return removed


def _terminate(signum, frame):
    raise Terminated(f"signal {signum}")


def _record_error(rank: int, exc: BaseException) -> None:
    """Write this rank's error for the launcher (not for SIGTERM: that is torchrun stopping us)."""
    where = os.environ.get(ERROR_DIR_ENV)
    if not where or isinstance(exc, Terminated):
        return
    os.makedirs(where, exist_ok=True)
    record = {"rank": rank, "type": type(exc).__name__, "input_error": isinstance(exc, InputError),
              "message": redact.redact(str(exc) or type(exc).__name__), "time": time.time(),
              "traceback": redact.redact("".join(traceback.format_exception(exc))[-4000:])}
    temporary = os.path.join(where, f".rank-{rank}.json.tmp")
    with open(temporary, "w") as f:
        json.dump(record, f)
    os.replace(temporary, os.path.join(where, f"rank-{rank}.json"))


def _write_pickle(path: str, value) -> None:
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        pickle.dump(value, f)
    os.replace(temporary, path)


def configure_logging(rank: int) -> None:
    """Log lines name the rank: '[rank 1] INFO linreg.pipeline.steps: ...' (the launcher streams them)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("linreg")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def rank_main(argv: list[str] | None = None, *, plan_file: str | None = None, result_file: str | None = None) -> int:
    """A torchrun rank's main: parse the command line (the flows.train options), run, exit code."""
    rank = int(os.environ.get("RANK", "0"))
    redact.install_log_redaction()
    configure_logging(rank)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints a stuck rank's Python stacks
    try:
        if plan_file:
            with open(plan_file, "rb") as f:
                config = pickle.load(f).config  # the plan carries the configuration (redacted URIs)
        else:  # torchrun -m flows.train with URIs as given: only their redacted forms go further
            config = redact.protect_config(config_from_args(build_parser().parse_args(argv)))
        summary = run_rank(config, plan_file=plan_file, result_file=result_file)
    except InputError as exc:
        return report_error(exc, prefix=f"[rank {rank}] ")
    except Terminated:
        print(f"[rank {rank}] stopped by SIGTERM", file=sys.stderr)
        return EXIT_FAILURE
    except Exception:
        print(redact.redact(f"[rank {rank}] unexpected failure:\n" + traceback.format_exc()), file=sys.stderr)
        return EXIT_FAILURE
    finally:
        dist.teardown()
    if summary is not None:
        print(redact.redact(summary.text()), flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m linreg.launch.job", description="One rank of a job planned by "
                                     "the Prefect flow (launched by torchrun).")
    parser.add_argument("--plan-file", required=True, help="The pickled RunPlan made by the flow's plan task.")
    parser.add_argument("--result-file", required=True, help="Where rank 0 writes its results for the commit task.")
    args = parser.parse_args(argv)
    return rank_main(plan_file=args.plan_file, result_file=args.result_file)


if __name__ == "__main__":
    from linreg.launch import job  # run as linreg.launch.job, not __main__: rank 0's pickled RankResult must unpickle elsewhere

    exit_now(job.main())
