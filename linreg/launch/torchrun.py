"""Launch a data-parallel job: on one machine with `linreg.launch.local` (the ranks start at once), on several
with torch's own launcher (`python -m torch.distributed.run`, i.e. torchrun, for its rendezvous).

`launch` starts the job's ranks, streams every output line (ranks name themselves:
'[rank 1] INFO ...') to a callback as it comes (the Prefect task logs them into the flow run's log), and,
when the job fails, raises the failing rank's own error instead of the launcher's "exit code 1":
- an InputError of any rank (bad data) is raised as an InputError (exit code 2), message unchanged;
- a rank that hung (stopped with SIGSTOP, stuck): the others fail after --dist-timeout-seconds in their
  next collective, the launcher stops the job, and the rank still alive SHUTDOWN_SECONDS after its
  SIGTERM is killed (by `linreg.launch.local`, or `Reaper` under torchrun) and named as the hung one, with
  its state (stopped, stuck);
- a rank killed by a signal (the OOM killer, SIGKILL) is named with its signal;
- otherwise the earliest error a rank recorded (`linreg.launch.job` writes $LINREG_ERROR_DIR/rank-<r>.json).
After a failure the staging areas of the run's attempts are removed (snapshots stay, to resume).

`cli` is `python -m flows.train --nproc-per-node N ...`: the same job as `torchrun --nproc-per-node N -m
flows.train ...`, with a fixed run id so restarts (--max-restarts) resume from snapshots.
`run_planned` is the Prefect flow's job task: ranks get the plan made in the flow process.

Credentials never reach a rank's command line (`ps` shows it to every user) or the pickled plan: the ranks
get redacted URIs and inherit the real ones through the environment (`linreg.redact`, LINREG_SECRET_URIS).
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
import threading
from typing import Callable

from linreg import redact
from linreg.config import TrainConfig
from linreg.launch import identity, local
from linreg.outputs.locks import proc_stat
from linreg.errors import EXIT_OK, InputError, report_error

DEFAULT_RDZV_PORT = 29400
# Grace between torchrun's SIGTERM to a rank (the job is stopping) and SIGKILL. A rank cleans up on SIGTERM
# in well under a second; a hung (stopped, stuck) rank never does, and torchrun 2.13 waits 30 s whatever
# its --shutdown-timeout says (its failure path ignores it), so `Reaper` kills such a rank itself.
SHUTDOWN_SECONDS = 5


class JobFailed(RuntimeError):
    """The distributed job failed; the message is the failing rank's own."""


def is_local(config: TrainConfig) -> bool:
    """A job on this machine alone (`linreg.launch.local` starts its ranks); else torchrun, for its rendezvous."""
    return config.nnodes == 1 and not config.rdzv_endpoint


def torchrun_command(config: TrainConfig, rank_args: list[str]) -> list[str]:
    """`python -m torch.distributed.run <launcher options> <rank_args>` for the job's configuration."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={config.nproc_per_node or 1}",
               f"--max-restarts={config.max_restarts}", "--monitor-interval=0.1",
               f"--shutdown-timeout={SHUTDOWN_SECONDS}"]
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
    # The ranks' temporary files (work directories, DuckDB's spill) go to a directory of the job's, removed when
    # it ends: a rank that is killed cannot remove its own.
    rank_tmp = tempfile.mkdtemp(prefix="linreg-job-tmp-")
    environment = dict(os.environ if env is None else env, LINREG_ERROR_DIR=error_dir, PYTHONUNBUFFERED="1",
                       TMPDIR=rank_tmp)
    if os.environ.get(redact.ENV):  # the real URIs behind the redacted ones the ranks are given
        environment.setdefault(redact.ENV, os.environ[redact.ENV])
    rank_args = redact.redact_argv(rank_args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # ranks import linreg and flows
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (root, environment.get("PYTHONPATH")) if p)
    tail: collections.deque[str] = collections.deque(maxlen=400)
    reaper = None

    def line_seen(line: str) -> None:
        line = redact.redact(line)
        tail.append(line)
        on_line(line)

    try:
        if is_local(config):  # one machine: the ranks start at once, without torchrun's agent
            try:
                ended = local.run(config.nproc_per_node or 1, rank_args, environment, line_seen, cwd=cwd,
                                  max_restarts=config.max_restarts, grace=SHUTDOWN_SECONDS, rdzv_id=config.rdzv_id)
            except local.Stopped as exc:
                raise JobFailed(f"the launcher was stopped ({exc}); its ranks were stopped and nothing was "
                                "committed") from None
            if not ended.ok:
                raise failure(1, error_dir, list(tail), timeout=config.dist_timeout_seconds,
                              report=ended.failures, hung=ended.hung)
            return
        with subprocess.Popen(torchrun_command(config, rank_args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", bufsize=1, env=environment, cwd=cwd) as proc:
            reaper = Reaper(proc.pid)
            for line in proc.stdout:
                reaper.saw(line)
                line_seen(line.rstrip("\n"))
            code = proc.wait()
        reaper.stop()
        if code != 0:
            raise failure(code, error_dir, list(tail), timeout=config.dist_timeout_seconds, killed=reaper.killed)
    finally:
        if reaper is not None:
            reaper.stop()
        shutil.rmtree(error_dir, ignore_errors=True)
        shutil.rmtree(rank_tmp, ignore_errors=True)


class Reaper:
    """Kills a rank that is still alive SHUTDOWN_SECONDS after torchrun sent it SIGTERM ('Sending process
    <pid> closing signal SIGTERM'): a rank stopped with SIGSTOP or stuck. Only torchrun's own children are
    killed. `killed` maps each killed pid to its state then ('stopped', 'stuck in the kernel', 'running')."""

    def __init__(self, torchrun_pid: int, grace: float = SHUTDOWN_SECONDS):
        self.torchrun_pid, self.grace = torchrun_pid, grace
        self.killed: dict[int, str] = {}
        self._timers: list[threading.Timer] = []

    def saw(self, line: str) -> None:
        m = re.search(r"Sending process (\d+) closing signal SIG", line)
        if m:
            timer = threading.Timer(self.grace, self._kill, [int(m.group(1))])
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    def _kill(self, pid: int) -> None:
        fields = proc_stat(pid)
        if fields is None:
            return  # gone (or no /proc): nothing to do
        state, ppid = fields[0], int(fields[1])
        if ppid != self.torchrun_pid or state in ("Z", "X"):
            return
        self.killed[pid] = local.STATES.get(state, "running")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.killed.pop(pid, None)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()


def failure(code: int, error_dir: str, tail: list[str], *, timeout: float | None = None,
            killed: dict[int, str] | None = None, report: list[tuple[int, int, int]] | None = None,
            hung: dict[int, str] | None = None) -> Exception:
    """The job's error from the ranks' error records and the launcher's failure report (`timeout`: the job's
    --dist-timeout-seconds, named when a rank hung). From torchrun: its report read off its lines `tail`
    and `killed` (pid -> state of the ranks `Reaper` killed); from `linreg.launch.local`: `report` (rank,
    exit code, pid) and `hung` (rank -> state), as it saw them."""
    records = []
    for path in glob.glob(os.path.join(error_dir, "rank-*.json")):
        with open(path) as f:
            records.append(json.load(f))
    records.sort(key=lambda r: r["time"])
    inputs = [r for r in records if r["input_error"]]
    if inputs:
        return InputError(inputs[0]["message"])
    waited = f"--dist-timeout-seconds={timeout:g}" if timeout is not None else "--dist-timeout-seconds"
    timed_out = [r for r in records if is_timeout(r["message"])]
    hung = unresponsive_ranks(tail, killed) if hung is None else hung
    reported = [(rank, exitcode) for rank, exitcode, _ in (torchrun_report(tail) if report is None else report)]
    for rank, exitcode in reported:  # killed by a signal from outside the job: the root cause
        if exitcode < 0 and -exitcode != signal.SIGTERM and rank not in hung:
            name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else -exitcode
            then = f"; then {_describe(records[0])}" if records else ""
            return JobFailed(f"rank {rank} was killed by signal {name} (out of memory, or killed by hand); "
                             f"the job stopped and nothing was committed{then}")
    if hung:  # alive but not answering: the others timed out waiting for it, and it ignored torchrun's SIGTERM
        how = {"stopped": "stopped, as by SIGSTOP", "stuck in the kernel": "stuck in uninterruptible sleep",
               "running": "running but not answering"}
        names = " and ".join(f"rank {r} ({how.get(state, 'not answering')})" for r, state in hung.items())
        them, they, was = ("it", "it", "was") if len(hung) == 1 else ("them", "they", "were")
        if timed_out:
            first = timed_out[0]
            why = (f"rank {first['rank']} gave up waiting for {them} after {waited} ({first['type']}: "
                   f"{_message(first)}), and ")
        else:
            why = f"{_describe(records[0])}, and " if records else ""
        return JobFailed(f"{names} hung: {why}{they} did not "
                         f"exit when the job was stopped, so {they} {was} killed after {SHUTDOWN_SECONDS} s; the job "
                         "stopped and nothing was committed")
    if records:
        hint = (f" (another rank did not answer within {waited}: it died, hung or cannot be reached)"
                if timed_out and timed_out[0] is records[0] else "")
        return JobFailed(_describe(records[0]) + hint + "; the job stopped and nothing was committed")
    if reported:
        rank, exitcode = reported[0]
        return JobFailed(f"rank {rank} exited with code {exitcode}; the job stopped and nothing was committed. "
                         "Last lines:\n" + "\n".join(tail[-20:]))
    return JobFailed(f"the launcher exited with code {code}; nothing was committed. Last lines:\n"
                     + "\n".join(tail[-20:]))


def _describe(record: dict) -> str:
    return f"rank {record['rank']} failed: {record['type']}: {_message(record)}"


def _message(record: dict) -> str:
    """A rank's error message without the C++ source location torch prefixes ('[/__w/.../x.cc:78] ')."""
    return re.sub(r"^\[[^\]\s]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", record["message"])


def torchrun_report(lines: list[str]) -> list[tuple[int, int, int | None]]:
    """(rank, exit code, pid) of every failure in torchrun's report ('exitcode : -9 (pid: 4271)')."""
    found, rank = [], None
    for line in lines:
        m = re.search(r"\brank\s*:\s*(\d+)", line)
        if m:
            rank = int(m.group(1))
            continue
        m = re.search(r"\bexitcode\s*:\s*(-?\d+)(?:\s*\(pid:\s*(\d+)\))?", line)
        if m and rank is not None:
            found.append((rank, int(m.group(1)), int(m.group(2)) if m.group(2) else None))
            rank = None
    return found


def unresponsive_ranks(lines: list[str], killed: dict[int, str] | None = None) -> dict[int, str]:
    """rank -> state ('' if unknown) of the ranks that ignored torchrun's SIGTERM and were killed: by `Reaper`
    (`killed`: pid -> state) or by torchrun ('Unable to shutdown process 4271 via 15, forcefully exiting via
    9'); matched by pid to torchrun's failure report."""
    states = {int(p): "" for line in lines for p in re.findall(r"Unable to shutdown process (\d+)", line)}
    states.update(killed or {})
    return {rank: states[pid] for rank, _, pid in sorted(torchrun_report(lines)) if pid in states}


def is_timeout(message: str) -> bool:
    """A collective or store that gave up waiting for another rank (gloo, NCCL's watchdog, the TCPStore)."""
    return re.search(r"timed?[ -]?out", message, re.IGNORECASE) is not None


def cleanup(config: TrainConfig, run_id: str) -> None:
    """After a failed job: remove its attempts' staging areas (its snapshots stay, for a rerun to resume)."""
    from linreg.launch import job

    try:
        job.sweep_attempts(config.output, run_id)
    except OSError:
        pass  # best effort: stale staging is swept by later runs anyway


def cli(config: TrainConfig, argv: list[str]) -> int:
    """`python -m flows.train --nproc-per-node N ...`: launch the job, print its lines, return the exit code."""
    try:
        run_id = identity.job_run_id(config)
    except InputError as exc:
        return report_error(exc)
    config = redact.protect_config(config.model_copy(update={"run_id": run_id}))
    args = redact.redact_argv(list(argv) + ([] if "--run-id" in argv else ["--run-id", run_id]))
    try:
        launch(config, ["-m", "flows.train", *args], on_line=lambda line: print(line, flush=True))
    except InputError as exc:
        cleanup(config, run_id)
        return report_error(exc)
    except JobFailed as exc:
        if config.nnodes == 1:
            cleanup(config, run_id)
        return report_error(exc)  # exit code 1
    return EXIT_OK


def run_planned(plan, *, on_line: Callable[[str], None] = print):
    """Run the job of a plan made in this process (the Prefect flow's): returns rank 0's `job.RankResult`."""
    from linreg.launch import job

    work = tempfile.mkdtemp(prefix=f"linreg-job-{plan.run_id}-")
    try:
        plan_file, result_file = os.path.join(work, "plan.pkl"), os.path.join(work, "result.pkl")
        job.write_plan(plan, plan_file)  # without the credentials its filesystem objects hold
        launch(plan.config, ["-m", "linreg.launch.job", "--plan-file", plan_file, "--result-file", result_file],
               on_line=on_line)
        with open(result_file, "rb") as f:
            return pickle.load(f)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cli_main(argv: list[str]) -> int:
    """Parse the flows.train command line and launch (`python -m flows.train --nproc-per-node N ...`)."""
    from linreg.config import build_parser, config_from_args

    redact.install_log_redaction()
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except InputError as exc:
        return report_error(exc)
    return cli(config, argv)
