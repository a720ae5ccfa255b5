"""Where this process runs: rank, world size and device, the same small object with one process or many.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) `setup()` joins the process group: NCCL
with one GPU per rank (cuda:LOCAL_RANK) when the device is CUDA, gloo on CPU. Trainers call
`all_reduce_sum`, which is a no-op with one process, so they never branch on distribution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Cluster:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over all ranks in place and return it (identity with one process)."""
        if self.distributed:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor


def resolve_device(option: str, local_rank: int = 0) -> torch.device:
    """'cpu', 'cuda' or 'auto' (cuda when available) -> the device of this rank."""
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    if option == "cuda":
        if not torch.cuda.is_available():
            from linreg.errors import InputError
            raise InputError("--device cuda was asked for, but no CUDA device is available here; use --device cpu.")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device: str = "auto", timeout_seconds: float = 600.0) -> Cluster:
    """The Cluster of this process; joins the torchrun process group when launched by torchrun."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not tdist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                 timeout=timedelta(seconds=timeout_seconds))
    return Cluster(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def single_process(device: str = "cpu") -> Cluster:
    """A one-process Cluster (for library use and tests)."""
    return Cluster(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
