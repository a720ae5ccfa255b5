"""Snapshots of the gradient trainers, so a restarted job continues where it stopped.

A snapshot holds the weights, the optimizer state, the number of finished epochs, the learning-rate
schedule, the losses so far and the shuffling generator's state. Rank 0 writes it every `every` epochs to
`<output>/_staging/<run_id>.snapshots/snapshot.pt` (any pyarrow filesystem): to a temporary name, then
renamed over the previous one, so a reader sees a whole snapshot or the previous one. On local disk the
temporary file is fsynced before the rename and the folder after it (`durable.write_atomic`), so a power
loss also leaves the previous snapshot or the new one; on object storage the upload is one durable PUT.
A job that finds a snapshot of its run id, made with the same configuration and inputs (`identity`),
resumes from it on every rank; `torchrun --max-restarts K` restarts ranks with the same command line, so
they resume. A snapshot that cannot be loaded (empty, cut short, garbage) is ignored with a warning, and
training starts over: it never raises.

The directory carries a lease (`_LEASE`, renewed at each save) like a staging area: `commit.recover` of
other runs sweeps it only when the lease is stale (a torn lease counts as none: the folder's newest file
time is used). Rank 0 removes it after the run commits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import secrets

import torch

from linreg import redact
from linreg.config import result_fields
from linreg.outputs import commit, durable

log = logging.getLogger(__name__)

FILE = "snapshot.pt"


def identity(config, input_digest: str) -> str:
    """Digest of what a snapshot is valid for: the fields of the configuration that can change the result
    (`linreg.config.result_fields`: not the launch options, but --memory-budget and the rank count) and the
    inputs' fingerprint."""
    dumped = redact.redact_config(config.model_dump(mode="json"))  # no credential hashed (linreg/redact.py)
    fields = result_fields(dumped)
    text = json.dumps({"config": fields, "inputs": input_digest}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def directory(output: str, run_id: str) -> tuple:
    filesystem, root, _ = commit.resolve(output)
    return filesystem, f"{root}/{commit.STAGING}/{run_id}.snapshots"


class Snapshots:
    """Save every `every` epochs (rank 0) and restore (every rank) the training state of one run."""

    def __init__(self, output: str, run_id: str, *, every: int, rank: int, identity: str, resume: bool = True):
        self.filesystem, self.dir = directory(output, run_id)
        self.every, self.rank, self.identity, self.resume = every, rank, identity, resume
        self.resumed_from = 0

    @property
    def path(self) -> str:
        return f"{self.dir}/{FILE}"

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, commit.pafs.LocalFileSystem)

    def renew_lease(self) -> None:
        if self.is_local:  # the folder's entry durable before a snapshot is renamed into it
            durable.makedirs(self.dir)
        else:
            self.filesystem.create_dir(self.dir, recursive=True)
        with self.filesystem.open_output_stream(f"{self.dir}/{commit.LEASE}") as out:
            out.write(dt.datetime.now(dt.timezone.utc).isoformat().encode())

    def clear(self) -> None:
        """Remove the run's snapshots (after its commit, or to start over)."""
        if self.filesystem.get_file_info(self.dir).type == commit.pafs.FileType.Directory:
            self.filesystem.delete_dir(self.dir)

    def load(self) -> dict | None:
        """The snapshot's state if there is one for this run with the same identity, else None."""
        if not self.resume or self.filesystem.get_file_info(self.path).type != commit.pafs.FileType.File:
            return None
        try:
            with self.filesystem.open_input_stream(self.path) as f:
                state = torch.load(io.BytesIO(f.read()), weights_only=True)
        except FileNotFoundError:
            return None  # removed meanwhile (the run committed)
        except Exception as exc:  # torch raises many types on torn bytes (RuntimeError, EOFError, pickle errors)
            log.warning("ignoring the snapshot at %s: it cannot be loaded (%s: %s); training starts over",
                        self.path, type(exc).__name__, (str(exc).splitlines() or [""])[0])
            return None
        if not isinstance(state, dict) or not _complete(state):
            log.warning("ignoring the snapshot at %s: it does not hold a whole training state; training starts over",
                        self.path)
            return None
        if state.get("identity") != self.identity:
            log.warning("ignoring the snapshot at %s: it was made with another configuration or other inputs",
                        self.path)
            return None
        return state

    def restore(self, *, tensors: dict, schedule, losses: list, generator: torch.Generator,
                optimizer=None) -> int:
        """Load the snapshot into `tensors` (in place), optimizer, schedule (`load_state_dict`), losses and
        generator; return the number of epochs already done (0 without a snapshot)."""
        state = self.load()
        if state is None:
            return 0
        with torch.no_grad():
            for name, tensor in tensors.items():
                tensor.copy_(state["tensors"][name].to(tensor.device))
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        losses[:] = state["losses"]
        generator.set_state(state["generator"])
        self.resumed_from = int(state["epoch"])
        log.info("resumed from the snapshot of epoch %d (%s)", self.resumed_from, self.path)
        return self.resumed_from

    def maybe_save(self, epoch: int, *, tensors: dict, schedule, losses: list, generator: torch.Generator,
                   optimizer=None) -> bool:
        """After `epoch` finished epochs: rank 0 writes a snapshot when `every` divides it."""
        if not self.every or epoch % self.every or self.rank != 0:
            return False
        state = {"identity": self.identity, "epoch": epoch,
                 "tensors": {name: t.detach().cpu().clone() for name, t in tensors.items()},
                 "optimizer": None if optimizer is None else optimizer.state_dict(),
                 "schedule": schedule.state_dict(), "losses": list(losses), "generator": generator.get_state()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.renew_lease()
        if self.is_local:  # temporary name, fsync, rename, fsync of the folder: whole even after a power loss
            durable.write_atomic(self.path, buffer.getvalue())
        else:
            temporary = f"{self.dir}/.{FILE}.{secrets.token_hex(4)}"
            with self.filesystem.open_output_stream(temporary) as out:
                out.write(buffer.getvalue())
            self.filesystem.move(temporary, self.path)
        log.info("snapshot of epoch %d written to %s", epoch, self.path)
        return True


def _complete(state: dict) -> bool:
    """Whether a loaded snapshot holds every part `restore` uses."""
    return (isinstance(state.get("tensors"), dict) and isinstance(state.get("schedule"), dict)
            and isinstance(state.get("losses"), list) and isinstance(state.get("epoch"), int)
            and isinstance(state.get("generator"), torch.Tensor))
