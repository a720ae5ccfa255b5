"""Run the ranks of a job on this machine alone (`--nproc-per-node N`, one node), without torchrun's agent.

torchrun's launcher imports torch before it starts a rank (about 1.2 s here) and polls its ranks; on one
machine its rendezvous has nothing to agree on. This launcher starts the ranks at once with the environment
torchrun gives them (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT, TORCHELASTIC_RUN_ID,
TORCHELASTIC_RESTART_COUNT, OMP_NUM_THREADS=1 unless set), so a rank cannot tell the difference, and keeps
torchrun's contract:
- every line a rank prints goes to `on_line` as it comes, from the calling thread;
- when a rank fails, the others get SIGTERM; one still alive SHUTDOWN_SECONDS later (stopped, stuck) is
  killed with SIGKILL and reported with its state (`Attempt.hung`);
- with `max_restarts`, a failed attempt is followed by a new one (every rank started again, on a new port,
  TORCHELASTIC_RESTART_COUNT one higher), as torchrun restarts its workers;
- SIGTERM or Ctrl-C to the launcher stops the ranks the same way before it exits.
Jobs on several machines go through torchrun (`linreg.launch.torchrun`), whose rendezvous they need.
"""

from __future__ import annotations

import dataclasses
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Callable

from linreg.outputs.locks import proc_stat
from linreg.parallel import objects

POLL_SECONDS = 0.05


@dataclasses.dataclass
class Attempt:
    """How the last attempt ended: `failures` (rank, exit code, pid) in the order seen, the first failure
    first (a negative code is the signal that ended the rank); `hung` rank -> state ('stopped', 'stuck in
    the kernel', 'running') of the ranks that ignored SIGTERM and were killed."""

    failures: list[tuple[int, int, int]]
    hung: dict[int, str]

    @property
    def ok(self) -> bool:
        return not self.failures


class Stopped(BaseException):
    """The launcher itself was asked to stop (SIGTERM, SIGINT) while its ranks ran."""


def run(nproc: int, rank_args: list[str], env: dict, on_line: Callable[[str], None], *, max_restarts: int = 0,
        grace: float, rdzv_id: str | None = None, cwd: str | None = None) -> Attempt:
    """Run `python <rank_args>` as ranks 0..nproc-1 until every rank of an attempt exits 0 or the attempts
    (1 + max_restarts) are spent; the last attempt's outcome. `grace`: seconds between SIGTERM and SIGKILL."""
    run_id = rdzv_id or uuid.uuid4().hex
    previous = _stop_on_signals()
    try:
        for restart in range(max_restarts + 1):
            outcome = _attempt(nproc, rank_args, dict(env), on_line, restart, max_restarts, run_id, grace, cwd)
            if outcome.ok or restart == max_restarts:
                return outcome
            rank, code, _ = outcome.failures[0]
            on_line(f"[launcher] rank {rank} failed (exit code {code}); starting the job again "
                    f"(restart {restart + 1} of {max_restarts})")
        raise AssertionError("unreachable")
    finally:
        _restore(previous)


def _attempt(nproc, rank_args, env, on_line, restart, max_restarts, run_id, grace, cwd) -> Attempt:
    port, key = free_port(), objects.new_key()
    lines: queue.Queue = queue.Queue()
    procs, readers = [], []
    failures: list[tuple[int, int, int]] = []
    hung: dict[int, str] = {}
    try:
        for rank in range(nproc):
            rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                            LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", GROUP_WORLD_SIZE="1", ROLE_RANK=str(rank),
                            ROLE_WORLD_SIZE=str(nproc), ROLE_NAME="default", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port), TORCHELASTIC_RUN_ID=run_id,
                            TORCHELASTIC_RESTART_COUNT=str(restart), TORCHELASTIC_MAX_RESTARTS=str(max_restarts),
                            **{objects.KEY_ENV: key})  # the torch-free group's key (exact ranks)
            rank_env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun sets it: one thread per rank
            proc = subprocess.Popen([sys.executable, *rank_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", bufsize=1, env=rank_env, cwd=cwd)
            procs.append(proc)
            reader = threading.Thread(target=_read, args=(proc.stdout, lines), daemon=True)
            reader.start()
            readers.append(reader)
        live = set(range(nproc))
        while live:
            _drain(lines, on_line, POLL_SECONDS)
            for rank in sorted(live):
                code = procs[rank].poll()
                if code is not None:
                    live.discard(rank)
                    if code != 0:
                        failures.append((rank, code, procs[rank].pid))
            if failures and live:  # one failed: stop the others, as torchrun does
                hung = _stop(procs, live, grace, lines, on_line)
                failures += [(r, procs[r].returncode, procs[r].pid) for r in sorted(live) if procs[r].returncode]
                live.clear()
    except BaseException:
        _stop(procs, {r for r, p in enumerate(procs) if p.poll() is None}, grace, lines, on_line)
        raise
    finally:
        for reader in readers:
            reader.join(timeout=5)
        _drain(lines, on_line, 0)
        for proc in procs:
            proc.stdout.close()
    return Attempt(failures=failures, hung=hung)


def _read(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


def _drain(lines: queue.Queue, on_line, wait: float) -> None:
    """Hand every waiting line to `on_line`; wait up to `wait` seconds for the first."""
    try:
        on_line(lines.get(timeout=wait) if wait else lines.get_nowait())
        while True:
            on_line(lines.get_nowait())
    except queue.Empty:
        pass


def _stop(procs, live: set[int], grace: float, lines, on_line) -> dict[int, str]:
    """SIGTERM the ranks in `live`; SIGKILL those still alive after `grace` s. Returns rank -> state of those."""
    for rank in live:
        _signal(procs[rank], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(procs[r].poll() is None for r in live):
        _drain(lines, on_line, POLL_SECONDS)
    hung = {}
    for rank in sorted(live):
        if procs[rank].poll() is None:
            hung[rank] = process_state(procs[rank].pid)
            _signal(procs[rank], signal.SIGKILL)
    for rank in live:
        procs[rank].wait()
    return hung


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


STATES = {"T": "stopped", "t": "stopped", "D": "stuck in the kernel"}  # /proc states of a rank that is not answering


def process_state(pid: int) -> str:
    """'stopped', 'stuck in the kernel' or 'running', from /proc/<pid>/stat ('running' where /proc is absent)."""
    fields = proc_stat(pid)
    return STATES.get(fields[0], "running") if fields else "running"


def free_port() -> int:
    """A TCP port on 127.0.0.1 free now, for rank 0's store (as torchrun --standalone picks one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_on_signals():
    """SIGTERM and SIGINT raise Stopped in the launcher (main thread only), so that its ranks are stopped."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(previous) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)
