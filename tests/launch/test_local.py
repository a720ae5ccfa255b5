"""The one-machine launcher (`linreg.launch.local`) against real processes: the environment torchrun gives a rank,
lines streamed, a failed rank stopping the others, a rank that ignores SIGTERM killed and named, restarts, and
the launcher's own SIGTERM stopping its ranks. Rank programs here are small Python scripts (no torch), so each
test takes a second or two; the whole training job through this launcher is tested in test_torchrun.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from linreg.launch import local
from tests.conftest import REPO


def run(code: str, nproc: int = 2, **options):
    lines = []
    ended = local.run(nproc, ["-c", textwrap.dedent(code)], dict(os.environ), lines.append,
                      grace=options.pop("grace", 2.0), **options)
    return ended, lines


def test_ranks_get_torchruns_environment_and_their_lines_are_streamed():
    ended, lines = run("""
        import json, os
        keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "OMP_NUM_THREADS"]
        print(json.dumps({k: os.environ.get(k) for k in keys}))
        """, nproc=3, rdzv_id="job7")
    assert ended.ok and ended.failures == [] and ended.hung == {}
    seen = sorted((json.loads(line) for line in lines), key=lambda e: e["RANK"])
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"]) for e in seen] == \
        [(str(r), str(r), "3", "3") for r in range(3)]
    assert {e["MASTER_ADDR"] for e in seen} == {"127.0.0.1"} and len({e["MASTER_PORT"] for e in seen}) == 1
    assert {(e["TORCHELASTIC_RUN_ID"], e["TORCHELASTIC_RESTART_COUNT"]) for e in seen} == {("job7", "0")}
    assert {e["OMP_NUM_THREADS"] for e in seen} == {os.environ.get("OMP_NUM_THREADS", "1")}


def test_a_failed_rank_stops_the_others_and_is_reported_first():
    started = time.monotonic()
    ended, lines = run("""
        import os, sys, time
        if os.environ["RANK"] == "1":
            print("rank 1 fails", flush=True)
            sys.exit(3)
        time.sleep(60)
        """)
    assert time.monotonic() - started < 30  # not the 60 s sleep: rank 0 was stopped
    assert not ended.ok and ended.failures[0][:2] == (1, 3)
    assert [(r, code) for r, code, _ in ended.failures[1:]] == [(0, -signal.SIGTERM)]
    assert ended.hung == {} and "rank 1 fails" in lines


def test_a_rank_that_ignores_sigterm_is_killed_after_the_grace_and_named(tmp_path):
    ready = tmp_path / "ignoring"
    ended, _ = run(f"""
        import os, signal, sys, time
        if os.environ["RANK"] == "0":
            while not os.path.exists({str(ready)!r}):  # fail only once rank 1 ignores SIGTERM
                time.sleep(0.01)
            sys.exit(1)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").close()
        time.sleep(60)
        """, grace=1.0)
    assert ended.failures[0][:2] == (0, 1)
    assert ended.hung == {1: "running"} and (1, -signal.SIGKILL) in [f[:2] for f in ended.failures]


def test_restarts_run_every_rank_again_with_the_next_restart_count(tmp_path):
    ended, lines = run(f"""
        import os, sys
        restart = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
        with open(os.path.join({str(tmp_path)!r}, f"rank{{os.environ['RANK']}}-{{restart}}"), "w"):
            pass
        sys.exit(5 if restart == 0 and os.environ["RANK"] == "1" else 0)
        """, max_restarts=2)
    assert ended.ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0-0", "rank0-1", "rank1-0", "rank1-1"]
    assert any("rank 1 failed (exit code 5); starting the job again (restart 1 of 2)" in line for line in lines)


def test_the_launchers_sigterm_stops_its_ranks(tmp_path):
    rank = "import os, time; open(os.path.join(%r, os.environ['RANK']), 'w').write(str(os.getpid())); time.sleep(120)"
    launcher = textwrap.dedent(f"""
        import os, sys
        from linreg.launch import local
        try:
            local.run(2, ["-c", {rank % str(tmp_path)!r}], dict(os.environ), print, grace=2.0)
        except local.Stopped as exc:
            print("stopped:", exc, flush=True)
            sys.exit(7)
        """)
    proc = subprocess.Popen([sys.executable, "-c", launcher], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.2)  # the pid files are written; let the ranks reach their sleep
        pids = [int((tmp_path / r).read_text()) for r in ("0", "1")]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 7 and "stopped: SIGTERM" in out
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_process_state_tells_a_stopped_process_from_a_running_one():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        def reaches(state):
            deadline = time.monotonic() + 10
            while local.process_state(proc.pid) != state and time.monotonic() < deadline:
                time.sleep(0.01)
            return local.process_state(proc.pid) == state

        # sleeping, it would answer a signal (just after exec it may be in uninterruptible sleep, loading pages)
        assert reaches("running")
        proc.send_signal(signal.SIGSTOP)
        assert reaches("stopped")
        proc.send_signal(signal.SIGCONT)
        assert reaches("running")
    finally:
        proc.kill()
        proc.wait()


def test_a_rank_printing_bytes_that_are_not_utf8_is_streamed_not_stuck():
    ended, lines = run("""
        import sys
        sys.stdout.buffer.write(b"bad \\xff\\xfe bytes\\n" * 20000)  # more than a pipe holds
        sys.stdout.flush()
        """, nproc=1)
    assert ended.ok and len(lines) == 20000 and lines[0] == "bad \ufffd\ufffd bytes"
