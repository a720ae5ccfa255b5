"""The torch-free group of the exact trainer's ranks (linreg.parallel.objects): ranks as threads of this
process over real sockets on 127.0.0.1, then ranks as processes (two-rank exact jobs load no torch)."""

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from linreg.parallel.objects import GroupError, ObjectGroup, new_key
from tests.conftest import REPO


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ranks(world: int, work, key: bytes | None = None, keys: dict | None = None, timeout: float = 20.0) -> list:
    """Run `work(group)` on `world` ranks (threads) of one group; each rank's result or raised exception."""
    port, key = _port(), key or bytes.fromhex(new_key())
    results: list = [None] * world

    def rank(r):
        try:
            group = ObjectGroup.connect(r, world, "127.0.0.1", port, (keys or {}).get(r, key), timeout)
            try:
                results[r] = work(group)
            finally:
                group.close()
        except BaseException as exc:  # noqa: BLE001 (the test reads it)
            results[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_all_gather_and_broadcast_give_every_rank_the_same_objects_in_rank_order():
    big = np.arange(2_000_000, dtype=np.float64)  # 16 MB: more than a socket buffer holds

    def work(group):
        gathered = group.all_gather({"rank": group.rank, "regions": [f"R{group.rank}-{i}" for i in range(group.rank)]})
        from_0 = group.broadcast(big if group.rank == 0 else None, src=0)
        from_2 = group.broadcast(("two", group.rank) if group.rank == 2 else None, src=2)
        return gathered, float(from_0.sum()), from_2

    results = _ranks(3, work)
    for r, (gathered, total, from_2) in enumerate(results):
        assert gathered == [{"rank": k, "regions": [f"R{k}-{i}" for i in range(k)]} for k in range(3)]
        assert total == float(big.sum()) and from_2 == ("two", 2)


def test_a_process_without_the_key_is_refused_before_anything_is_unpickled():
    """An impostor (wrong key) dials first; rank 0 drops it and forms the group with the real rank 1."""
    key = bytes.fromhex(new_key())
    results = _ranks(2, lambda g: g.all_gather(g.rank), key=key, timeout=10)
    assert results == [[0, 1], [0, 1]]
    port = _port()
    outcome = {}

    def root():
        try:
            outcome["root"] = ObjectGroup.connect(0, 2, "127.0.0.1", port, key, 3)
        except GroupError as exc:
            outcome["root"] = exc

    thread = threading.Thread(target=root)
    thread.start()
    with pytest.raises(GroupError, match="timed out joining rank 0"):
        ObjectGroup.connect(1, 2, "127.0.0.1", port, bytes.fromhex(new_key()), 2)  # the wrong key
    thread.join(30)
    assert isinstance(outcome["root"], GroupError) and "timed out waiting for rank(s) [1]" in str(outcome["root"])


def test_a_rank_that_ends_fails_the_others_at_once_and_one_that_hangs_after_the_timeout():
    def ends(group):
        if group.rank == 1:
            return "gone"  # closes its connection without taking part
        started = time.monotonic()
        with pytest.raises(GroupError, match="rank 1 closed its connection"):
            group.all_gather(0)
        return time.monotonic() - started

    seconds, gone = _ranks(2, ends, timeout=30)
    assert gone == "gone" and seconds < 5  # not the 30 s timeout

    release = threading.Event()

    def hangs(group):
        if group.rank == 1:
            release.wait(30)
            return None
        started = time.monotonic()
        try:
            with pytest.raises(GroupError, match=r"rank 0 timed out waiting for rank 1: no answer within 1 s"):
                group.all_gather(0)
        finally:
            release.set()
        return time.monotonic() - started

    seconds, _ = _ranks(2, hangs, timeout=1)
    assert 0.9 < seconds < 10


def test_two_exact_ranks_load_no_torch_and_equal_one_process(tmp_path):
    """`--nproc-per-node 2` with the exact trainer: the ranks meet in this group, never import torch (each
    rank's own import log says so), and the weights equal one process's."""
    import shutil

    import pyarrow.parquet as pq

    from tests.conftest import SAMPLE

    shutil.copytree(SAMPLE, tmp_path / "data" / "sample")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect-home"))
    two = subprocess.run([sys.executable, "-m", "flows.train", "--nproc-per-node", "2", "--run-id", "two",
                          "--output", "two"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(env, PYTHONPROFILEIMPORTTIME="1"))
    assert two.returncode == 0, two.stderr[-3000:]
    imports = [line for line in two.stdout.splitlines() + two.stderr.splitlines() if "import time:" in line]
    assert sum("linreg.parallel.objects" in line for line in imports) >= 2  # both ranks' logs are here
    assert not [line for line in imports if line.rstrip().endswith(("| torch", " torch"))]
    one = subprocess.run([sys.executable, "-m", "flows.train", "--run-id", "one", "--output", "one"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr
    weights = [pq.read_table(tmp_path / out / "weights" / f"run_id={out}").sort_by([("target", "ascending"),
                                                                                 ("term", "ascending")])
               for out in ("one", "two")]
    np.testing.assert_allclose(weights[1].column("weight").to_numpy(), weights[0].column("weight").to_numpy(),
                               rtol=1e-10)


def test_a_first_large_broadcast_waits_the_groups_timeout_not_the_handshakes():
    """Rank 1 joins late (after most of the joining time passed) and reads slowly: rank 0's first message,
    larger than the sockets' buffers, still goes through within the group's timeout."""
    big = bytes(32 << 20)

    def work(group):
        if group.rank == 1:
            time.sleep(2.5)  # rank 0 is blocked sending meanwhile
        return len(group.broadcast(big if group.rank == 0 else None, src=0))

    port, key = _port(), bytes.fromhex(new_key())
    results = [None, None]

    def rank(r):
        if r == 1:
            time.sleep(3.4)  # joins with about 0.6 s of the 4 s left
        try:
            group = ObjectGroup.connect(r, 2, "127.0.0.1", port, key, 4.0)  # joining and every wait: 4 s
            results[r] = work(group)
            group.close()
        except BaseException as exc:  # noqa: BLE001
            results[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [len(big), len(big)], results
