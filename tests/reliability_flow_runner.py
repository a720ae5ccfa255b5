"""Runs the training flow in forked children of one warm process, for tests/flows/test_train_killed.py.

Each child runs `flows.train.main(argv)`, which is what `python -m flows.train <argv>` runs (the real Prefect
flow, against the server in PREFECT_API_URL); forking from a process that has already imported torch, Prefect,
pyarrow and matplotlib saves those ~8 s of imports per run. The warm process starts no Python thread and
runs no torch operation (no OpenMP pool) before it forks.

    python -m tests.reliability_flow_runner

Reads one JSON request per line on stdin: {"argv": [...], "log": PATH, "kill_at_step": K, "kill_at_op": K}.
The child writes its stdout and stderr to PATH and SIGKILLs itself
- kill_at_step K: before the K-th optimizer step of training (linreg.models.trainers.SGD.step, which the nn
  trainer takes once per mini-batch), that is mid-training;
- kill_at_op K: before the K-th file operation of the run's commit (commit.before_file_operation, counted
  inside Staging.commit only, as tests/reliability_committer.py does), that is mid-commit.
Replies on stdout: "ready" once warm; per request "started <pid>", later "exited <pid> <returncode>"
(-9 for SIGKILL). On end of input it kills any child still running and exits.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import traceback

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401  (the run report draws with it)

import flows.train  # noqa: E402
from linreg.models import trainers  # noqa: E402
from linreg.outputs import commit  # noqa: E402


def _kill_self() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_step(k: int) -> None:
    """Make the k-th optimizer step (counted from 1) a SIGKILL of this process."""
    original, count = trainers.SGD.step, [0]

    def step(self, *args, **kwargs):
        count[0] += 1
        if count[0] == k:
            print(f"[runner] SIGKILL before optimizer step {k}", flush=True)
            _kill_self()
        return original(self, *args, **kwargs)

    trainers.SGD.step = step


def kill_at_op(k: int) -> None:
    """Make the k-th file operation of the commit (counted from 1) a SIGKILL of this process; the file
    operations of the run's first step (recovery of earlier commits) do not count."""
    original_commit, count, counting = commit.Staging.commit, [0], [False]

    def before_file_operation():
        if counting[0]:
            count[0] += 1
            if count[0] == k:
                print(f"[runner] SIGKILL before file operation {k} of the commit", flush=True)
                _kill_self()

    def counted_commit(self, *args, **kwargs):
        counting[0] = True
        try:
            return original_commit(self, *args, **kwargs)
        finally:
            counting[0] = False

    commit.before_file_operation = before_file_operation
    commit.Staging.commit = counted_commit


def child(request: dict) -> int:
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)  # the requests on fd 0 are the warm process's, not ours
    os.dup2(devnull, 0)
    os.close(devnull)
    if request.get("kill_at_step"):
        kill_at_step(request["kill_at_step"])
    if request.get("kill_at_op"):
        kill_at_op(request["kill_at_op"])
    return flows.train.main(request["argv"])


def main() -> int:
    children: set[int] = set()
    print("ready", flush=True)
    pending, ended = b"", False
    while not ended:
        if select.select([0], [], [], 0.05)[0]:  # the raw descriptor: a buffered reader would hide lines from select
            data = os.read(0, 1 << 16)
            ended = not data
            pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = child(request)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children.add(pid)
            print(f"started {pid}", flush=True)
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                print(f"exited {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
