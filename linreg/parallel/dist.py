"""Where this process runs: rank, world size and device, the same small object with one process or many.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) `setup()` joins the process group: NCCL
with one GPU per rank (cuda:LOCAL_RANK) when the device is CUDA, gloo on CPU. Every collective
(`all_reduce_sum`, `all_gather_object`, `raise_first_error`, `union_sorted`...) is an identity with one
process, so callers never branch on distribution. With one process nothing here imports torch until a
tensor device is asked for (`Cluster.device`): the exact trainer runs without it. Several ranks on one
machine's CPUs that need no torch process group (`setup(process_group=False)`: all but DDP and NCCL) join
the group of `linreg.parallel.objects` (sockets in the calling thread) when the one-machine launcher gave its
key, and every collective here then goes through it: exact ranks never import torch, and local SGD's
averaging costs a round trip instead of gloo's few milliseconds on a machine whose cores the ranks keep busy.
"""

from __future__ import annotations

import itertools
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING

from linreg.config import config_default
from linreg.errors import InputError

if TYPE_CHECKING:
    import torch

    from linreg.parallel.objects import ObjectGroup

_objects: ObjectGroup | None = None  # this process's torch-free group, when it joined one (`setup`)


class Cluster:
    """This process's rank among `world_size` ranks and its device (a torch.device, or its name such as
    'cpu' or 'cuda:1', turned into a torch.device when first asked for). Immutable."""

    __slots__ = ("rank", "world_size", "local_rank", "_device")

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device | str):
        object.__setattr__(self, "rank", rank)
        object.__setattr__(self, "world_size", world_size)
        object.__setattr__(self, "local_rank", local_rank)
        object.__setattr__(self, "_device", device)

    def __setattr__(self, name, value):
        raise AttributeError(f"Cluster is immutable: cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"Cluster is immutable: cannot delete {name!r}")

    def __reduce__(self):
        return Cluster, (self.rank, self.world_size, self.local_rank, self._device)

    def __repr__(self) -> str:
        return (f"Cluster(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
                f"device={self._device!r})")

    def _key(self) -> tuple:
        return self.rank, self.world_size, self.local_rank, str(self._device)

    def __eq__(self, other) -> bool:
        return isinstance(other, Cluster) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def device(self) -> torch.device:
        """The rank's tensor device (imports torch)."""
        import torch

        return self._device if isinstance(self._device, torch.device) else torch.device(self._device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over all ranks in place and return it (identity with one process)."""
        if self.distributed and _objects is not None:
            tensor.copy_(sum(_objects.all_gather(tensor.cpu())).to(tensor.device))
        elif self.distributed:
            import torch.distributed as tdist

            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, value: float) -> float:
        """The largest of every rank's `value` (a Python float; -inf stands for a rank without data)."""
        if not self.distributed:
            return value
        if _objects is not None:
            return max(_objects.all_gather(float(value)))
        import torch
        import torch.distributed as tdist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX)
        return float(tensor[0])

    def all_gather_object(self, obj) -> list:
        """[rank 0's obj, rank 1's obj, ...]: small picklable values (states, counts, rows), in rank order."""
        if not self.distributed:
            return [obj]
        if _objects is not None:
            return _objects.all_gather(obj)
        import torch.distributed as tdist

        gathered = [None] * self.world_size
        tdist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj, src: int = 0):
        """`obj` of rank `src` on every rank."""
        if not self.distributed:
            return obj
        if _objects is not None:
            return _objects.broadcast(obj, src)
        import torch.distributed as tdist

        box = [obj]
        tdist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank is here (bounded by the process group's timeout)."""
        if self.distributed and _objects is not None:
            _objects.all_gather(None)
        elif self.distributed:
            import torch.distributed as tdist

            tdist.barrier()

    def raise_first_error(self, error: InputError | None) -> None:
        """Raise on every rank the input error of the first rank (in rank order) that has one, or return
        when none has: ranks fail together instead of waiting for the failed one in the next collective.
        With one process: raise `error` itself, if any."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        messages = [m for m in self.all_gather_object(None if error is None else str(error)) if m]
        if messages:
            raise InputError(messages[0])

    def union_sorted(self, values: list) -> list:
        """The sorted union of every rank's sorted, distinct `values` (with one process: `values`)."""
        if not self.distributed:
            return values
        # sorted runs, one a rank: Timsort merges them in about linear time (a set and a sort of 400,000 region
        # names took 0.26 s, this 0.04 s); then equal neighbours are dropped
        merged = sorted(itertools.chain.from_iterable(self.all_gather_object(values)))
        return [v for i, v in enumerate(merged) if i == 0 or v != merged[i - 1]]

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must be for collectives: the rank's GPU under NCCL, the CPU under gloo."""
        import torch

        device = self.device
        return device if device.type == "cuda" else torch.device("cpu")

    @property
    def backend(self) -> str | None:
        if not self.distributed:
            return None
        if _objects is not None:
            return "objects"
        import torch.distributed as tdist

        return tdist.get_backend() if tdist.is_initialized() else None


def resolve_device(option: str, local_rank: int = 0) -> torch.device:
    """'cpu', 'cuda' or 'auto' (cuda when available) -> the device of this rank."""
    import torch

    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    if option == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for, but no CUDA device is available here; use --device cpu.")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _device(option: str, local_rank: int = 0) -> torch.device | str:
    """`resolve_device`, except that the CPU stays a name: a Cluster on the CPU needs no torch until a tensor
    does (and `setup` tells it by its name). 'auto' on a Linux machine with no GPU driver is the CPU without
    asking torch (`no_gpu_driver`)."""
    if option == "cpu" or (option == "auto" and no_gpu_driver()):
        return "cpu"
    device = resolve_device(option, local_rank)
    return "cpu" if device.type == "cpu" else device


GPU_DRIVER_PATHS = ("/proc/driver/nvidia/gpus", "/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
"""What a Linux machine shows when a GPU driver is loaded: NVIDIA's driver (also mounted into containers by
the NVIDIA container toolkit), ROCm's /dev/kfd, WSL2's /dev/dxg. Without any of them torch.cuda cannot be
available, so 'auto' needs no torch import (about 1 s) to know it means the CPU."""


def no_gpu_driver() -> bool:
    """True when this is Linux and none of GPU_DRIVER_PATHS exists; False elsewhere (then torch is asked)."""
    return sys.platform.startswith("linux") and not any(os.path.exists(p) for p in GPU_DRIVER_PATHS)


def local_ranks(cluster: Cluster) -> int:
    """How many ranks of `cluster`'s job run on this machine (torchrun's LOCAL_WORLD_SIZE; 1 with one process)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))) if cluster.distributed else 1


def setup(device: str = config_default("device"),
          timeout_seconds: float = config_default("dist_timeout_seconds"), *, process_group: bool = True) -> Cluster:
    """The Cluster of this process; joins the torchrun process group when launched by torchrun.
    process_group=False (a job on the CPU that needs no torch process group: no DistributedDataParallel) joins
    the group of `linreg.parallel.objects` instead when the one-machine launcher gave its key (objects.KEY_ENV)."""
    global _objects
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = _device(device, local_rank)
    from linreg.parallel import objects

    one_machine = int(os.environ.get("LOCAL_WORLD_SIZE", world_size)) == world_size
    if world_size > 1 and not process_group and dev == "cpu" and one_machine and os.environ.get(objects.KEY_ENV):
        if _objects is None:
            _objects = objects.ObjectGroup.connect(rank, world_size, os.environ["MASTER_ADDR"],
                                                   int(os.environ["MASTER_PORT"]),
                                                   bytes.fromhex(os.environ[objects.KEY_ENV]), timeout_seconds)
    elif world_size > 1:
        import torch
        import torch.distributed as tdist

        dev = torch.device(dev)
        if not tdist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            tdist.init_process_group(backend=backend_for(dev), timeout=timedelta(seconds=timeout_seconds),
                                     **({"device_id": dev} if dev.type == "cuda" else {}),
                                     **_attempt_store(rank, world_size, timeout_seconds))
    return Cluster(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def _attempt_store(rank: int, world_size: int, timeout_seconds: float) -> dict:
    """Under torchrun, the process group's store with a prefix naming the attempt (restart count).

    torchrun's agent shares one TCPStore across restarts, and a restarted process group would read the
    previous attempt's gloo addresses from it (connecting to dead ranks until it times out); keys under a
    prefix per attempt keep the attempts apart. Outside torchrun: {} (init from the environment)."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:
        return {}
    import torch.distributed as tdist

    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts the server
    base = tdist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent_store and rank == 0, timeout=timedelta(seconds=timeout_seconds),
                          **({} if agent_store else {"multi_tenant": True}))
    return {"store": tdist.PrefixStore(f"linreg/attempt-{restart}", base), "rank": rank, "world_size": world_size}


def backend_for(device: torch.device) -> str:
    """NCCL with one GPU per rank on CUDA, gloo on CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def teardown() -> None:
    """Leave the process group or the torch-free group (idempotent; without importing torch when nothing did)."""
    global _objects
    if _objects is not None:
        _objects.close()
        _objects = None
    tdist = sys.modules.get("torch.distributed")
    if tdist is not None and tdist.is_initialized():
        tdist.destroy_process_group()


def single_process(device: str = "cpu") -> Cluster:
    """A one-process Cluster (for library use and tests)."""
    return Cluster(rank=0, world_size=1, local_rank=0, device=_device(device))
