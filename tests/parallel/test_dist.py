"""The one-process Cluster: every collective an identity, and nothing imports torch until a tensor device is
asked for (the exact trainer runs without torch). Several ranks are tested in tests/launch/test_torchrun.py."""

import os
import pickle
import subprocess
import sys

import pytest

from linreg.errors import InputError
from linreg.parallel import dist
from tests.conftest import REPO


def test_a_one_process_cluster_does_not_import_torch():
    code = ("import sys; import linreg.parallel.dist as d; c = d.single_process('cpu'); "
            "assert (c.rank, c.world_size, c.is_main, c.distributed, c.backend) == (0, 1, True, False, None); "
            "assert c.all_gather_object(3) == [3] and c.broadcast_object('x') == 'x' and c.all_reduce_max(2.5) == 2.5; "
            "box = [1.0]; assert c.all_reduce_sum(box) is box; c.barrier(); c.raise_first_error(None); "
            "assert c.union_sorted(['a', 'b']) == ['a', 'b']; "
            "s = d.setup('cpu'); assert s == c and not s.distributed; d.teardown(); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert str(c.device) == 'cpu' and 'torch' in sys.modules")  # a device is a torch.device: now imported
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(env, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr


def test_auto_is_the_cpu_without_torch_only_where_no_gpu_driver_shows(tmp_path, monkeypatch):
    """'auto' needs no torch import to mean the CPU on a Linux machine without a GPU driver; where a driver's
    path exists, torch is asked (here: torch.cuda.is_available mocked)."""
    monkeypatch.setattr(dist, "GPU_DRIVER_PATHS", (str(tmp_path / "nvidia0"),))
    monkeypatch.setattr(dist.sys, "platform", "linux")
    assert dist.no_gpu_driver() and dist._device("auto") == "cpu"
    (tmp_path / "nvidia0").touch()
    assert not dist.no_gpu_driver()
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist._device("auto") == "cpu"  # torch asked, and the CPU kept as a name
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dist._device("auto", 1) == torch.device("cuda", 1)
    monkeypatch.setattr(dist.sys, "platform", "darwin")  # elsewhere torch is always asked
    (tmp_path / "nvidia0").unlink()
    assert not dist.no_gpu_driver()


@pytest.mark.skipif(not dist.no_gpu_driver(), reason="this machine shows a GPU driver")
def test_auto_on_a_machine_without_gpu_driver_does_not_import_torch():
    code = ("import sys; import linreg.parallel.dist as d; c = d.setup('auto'); "
            "assert \"device='cpu'\" in repr(c), repr(c); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(env, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr


def test_one_process_raises_its_own_error():
    cluster = dist.single_process()
    error = InputError("bad input")
    with pytest.raises(InputError) as info:
        cluster.raise_first_error(error)
    assert info.value is error


def test_cluster_is_immutable_comparable_and_picklable():
    import torch

    cluster = dist.single_process()
    assert cluster.device == torch.device("cpu") and cluster.comm_device == torch.device("cpu")
    assert cluster == dist.Cluster(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert hash(cluster) == hash(dist.Cluster(0, 1, 0, "cpu"))
    assert pickle.loads(pickle.dumps(cluster)) == cluster
    assert "world_size=1" in repr(cluster)
    with pytest.raises(AttributeError):
        cluster.rank = 1
