"""Launch a data-parallel job with torch's own launcher (`python -m torch.distributed.run`, i.e. torchrun).

`launch` starts torchrun with the job's ranks, streams every output line (ranks name themselves:
'[rank 1] INFO ...') to a callback as it comes (the Prefect task logs them into the flow run's log), and,
when the job fails, raises the failing rank's own error instead of torchrun's "exit code 1":
- an InputError of any rank (bad data) is raised as an InputError (exit code 2), message unchanged;
- a rank killed by a signal (the OOM killer, SIGKILL) is named with its signal;
- otherwise the earliest error a rank recorded (`linreg.job` writes $LINREG_ERROR_DIR/rank-<r>.json).
After a failure the staging areas of the run's attempts are removed (snapshots stay, to resume).

`cli` is `python -m flows.train --nproc-per-node N ...`: the same job as `torchrun --nproc-per-node N -m
flows.train ...`, with a fixed run id so restarts (--max-restarts) resume from snapshots.
`run_planned` is the Prefect flow's job task: ranks get the plan made in the flow process.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Callable

from linreg.config import TrainConfig
from linreg.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, InputError

DEFAULT_RDZV_PORT = 29400


class JobFailed(RuntimeError):
    """The distributed job failed; the message is the failing rank's own."""


def torchrun_command(config: TrainConfig, rank_args: list[str]) -> list[str]:
    """`python -m torch.distributed.run <launcher options> <rank_args>` for the job's configuration."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={config.nproc_per_node or 1}",
               f"--max-restarts={config.max_restarts}", "--monitor-interval=0.5"]
    if config.nnodes == 1 and not config.rdzv_endpoint:
        command.append("--standalone")  # a local rendezvous on a free port
    else:
        rdzv_id = config.rdzv_id or config.run_id
        if not rdzv_id:
            raise InputError("A job on several machines needs the same --rdzv-id (or --run-id) on every machine.")
        command += [f"--nnodes={config.nnodes}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={config.rdzv_endpoint or f'127.0.0.1:{DEFAULT_RDZV_PORT}'}",
                    f"--rdzv-id={rdzv_id}"]
        if config.node_rank is not None:
            command.append(f"--node-rank={config.node_rank}")
    return command + rank_args


def launch(config: TrainConfig, rank_args: list[str], *, on_line: Callable[[str], None] = print,
           env: dict | None = None, cwd: str | None = None) -> None:
    """Run the job to completion, streaming its lines to `on_line`; raise InputError or JobFailed on failure."""
    error_dir = tempfile.mkdtemp(prefix="linreg-errors-")
    environment = dict(os.environ if env is None else env, LINREG_ERROR_DIR=error_dir, PYTHONUNBUFFERED="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # ranks import linreg and flows
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (root, environment.get("PYTHONPATH")) if p)
    tail: collections.deque[str] = collections.deque(maxlen=400)
    try:
        with subprocess.Popen(torchrun_command(config, rank_args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1, env=environment, cwd=cwd) as proc:
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                on_line(line)
            code = proc.wait()
        if code != 0:
            raise failure(code, error_dir, list(tail))
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)


def failure(code: int, error_dir: str, tail: list[str]) -> Exception:
    """The job's error from the ranks' error records and torchrun's failure report."""
    records = []
    for path in glob.glob(os.path.join(error_dir, "rank-*.json")):
        with open(path) as f:
            records.append(json.load(f))
    records.sort(key=lambda r: r["time"])
    inputs = [r for r in records if r["input_error"]]
    if inputs:
        return InputError(inputs[0]["message"])
    reported = torchrun_failures(tail)
    for rank, exitcode in reported:
        if exitcode < 0 and -exitcode != signal.SIGTERM:
            name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else -exitcode
            then = f"; then {_describe(records[0])}" if records else ""
            return JobFailed(f"rank {rank} was killed by signal {name} (out of memory, or killed by hand); "
                             f"the job stopped and nothing was committed{then}")
    if records:
        return JobFailed(_describe(records[0]) + "; the job stopped and nothing was committed")
    if reported:
        rank, exitcode = reported[0]
        return JobFailed(f"rank {rank} exited with code {exitcode}; the job stopped and nothing was committed. "
                         "Last lines:\n" + "\n".join(tail[-20:]))
    return JobFailed(f"torchrun exited with code {code}; nothing was committed. Last lines:\n" + "\n".join(tail[-20:]))


def _describe(record: dict) -> str:
    return f"rank {record['rank']} failed: {record['type']}: {record['message']}"


def torchrun_failures(lines: list[str]) -> list[tuple[int, int]]:
    """(rank, exit code) of every failure in torchrun's report ('rank : 1 (local_rank: 1)', 'exitcode : -9')."""
    found, rank = [], None
    for line in lines:
        m = re.search(r"\brank\s*:\s*(\d+)", line)
        if m:
            rank = int(m.group(1))
            continue
        m = re.search(r"\bexitcode\s*:\s*(-?\d+)", line)
        if m and rank is not None:
            found.append((rank, int(m.group(1))))
            rank = None
    return found


def job_run_id(config: TrainConfig) -> str:
    """The run id of a launched job: given, else from --rdzv-id, else a new one (one machine only)."""
    from linreg import job, pipeline

    run_id = job.job_run_id(config)
    if run_id is None:
        if config.nnodes > 1:
            raise InputError("A job on several machines needs the same --run-id or --rdzv-id on every machine.")
        run_id = pipeline.new_run_id()
    return run_id


def cleanup(config: TrainConfig, run_id: str) -> None:
    """After a failed job: remove its attempts' staging areas (its snapshots stay, for a rerun to resume)."""
    from linreg import job

    try:
        job.sweep_attempts(config.output, run_id)
    except OSError:
        pass  # best effort: stale staging is swept by later runs anyway


def cli(config: TrainConfig, argv: list[str]) -> int:
    """`python -m flows.train --nproc-per-node N ...`: launch the job, print its lines, return the exit code."""
    try:
        run_id = job_run_id(config)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    config = config.model_copy(update={"run_id": run_id})
    args = list(argv) + ([] if "--run-id" in argv else ["--run-id", run_id])
    try:
        launch(config, ["-m", "flows.train", *args], on_line=lambda line: print(line, flush=True))
    except InputError as exc:
        cleanup(config, run_id)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except JobFailed as exc:
        if config.nnodes == 1:
            cleanup(config, run_id)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def run_planned(plan, *, on_line: Callable[[str], None] = print):
    """Run the job of a plan made in this process (the Prefect flow's): returns rank 0's `job.RankResult`."""
    work = tempfile.mkdtemp(prefix=f"linreg-job-{plan.run_id}-")
    try:
        plan_file, result_file = os.path.join(work, "plan.pkl"), os.path.join(work, "result.pkl")
        with open(plan_file, "wb") as f:
            pickle.dump(plan, f)
        launch(plan.config, ["-m", "linreg.job", "--plan-file", plan_file, "--result-file", result_file],
               on_line=on_line)
        with open(result_file, "rb") as f:
            return pickle.load(f)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cli_main(argv: list[str]) -> int:
    """Parse the flows.train command line and launch (`python -m flows.train --nproc-per-node N ...`)."""
    from linreg.config import build_parser, config_from_args

    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return cli(config, argv)
