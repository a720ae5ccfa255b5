"""Collectives of picklable objects among the ranks of one machine, without torch.

The exact trainer's ranks exchange only small Python objects (the sharding, row counts, region lists, each
rank's (p + k + 1)^2 factor, metric sums), never tensors, and importing torch took a rank about 1 s of its
core only to reach gloo. With the one-machine launcher
(`linreg.launch.local`, which sets KEY_ENV to a random key per attempt) an exact job's ranks form this group
instead:

- rank 0 listens on MASTER_ADDR:MASTER_PORT (127.0.0.1); every other rank connects. Before anything is
  unpickled, each side proves it holds the attempt's key: HMAC-SHA256 of the other side's random challenge;
- a message is its length (8 bytes) and a pickle. Rank 0 relays: `all_gather` collects every rank's object
  in rank order and sends the list back; `broadcast` sends one rank's object to all;
- every send and receive waits at most `timeout` seconds (--dist-timeout-seconds). A rank that ended closes its
  connection and the others fail at once naming it; one that hangs fails them after the timeout, as gloo
  does. The launcher then stops the job.

The gradient trainers, and jobs on several machines (torchrun), use torch.distributed (`linreg.parallel.dist`).
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import secrets
import socket
import struct
import time

KEY_ENV = "LINREG_GROUP_KEY"  # hex; set by linreg.launch.local for every attempt of a job
_LENGTH = struct.Struct("!Q")
_CHALLENGE_BYTES = 32


class GroupError(RuntimeError):
    """A peer of the group closed its connection, did not answer in time, or did not know the key."""


class ObjectGroup:
    """This rank's connections: rank 0 holds one per other rank, every other rank one to rank 0."""

    def __init__(self, rank: int, world_size: int, peers: dict[int, socket.socket], timeout: float):
        self.rank, self.world_size, self.peers, self.timeout = rank, world_size, peers, timeout
        for sock in peers.values():  # sends and receives wait this long, not what was left of the handshake's time
            sock.settimeout(timeout)

    @classmethod
    def connect(cls, rank: int, world_size: int, host: str, port: int, key: bytes, timeout: float) -> "ObjectGroup":
        """Join the group of `world_size` ranks whose rank 0 listens on host:port (waiting at most `timeout` s)."""
        deadline = time.monotonic() + timeout
        if rank == 0:
            return cls(0, world_size, _accept(world_size, host, port, key, deadline), timeout)
        return cls(rank, world_size, {0: _dial(rank, host, port, key, deadline)}, timeout)

    def all_gather(self, obj) -> list:
        """[rank 0's obj, rank 1's obj, ...] on every rank (each a copy made by pickling)."""
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if self.rank != 0:
            self._send(0, data)
            return pickle.loads(self._receive(0))
        parts = [data] + [self._receive(r) for r in range(1, self.world_size)]
        gathered = [pickle.loads(p) for p in parts]
        reply = pickle.dumps(gathered, protocol=pickle.HIGHEST_PROTOCOL)
        for r in range(1, self.world_size):
            self._send(r, reply)
        return gathered

    def broadcast(self, obj, src: int = 0):
        """Rank `src`'s obj on every rank (a copy made by pickling, on every rank but `src`)."""
        if self.rank == src and src != 0:
            self._send(0, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
            return obj
        if self.rank != 0:
            return pickle.loads(self._receive(0))
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if src == 0 else self._receive(src)
        for r in range(1, self.world_size):
            if r != src:
                self._send(r, data)
        return obj if src == 0 else pickle.loads(data)

    def close(self) -> None:
        for sock in self.peers.values():
            sock.close()
        self.peers = {}

    def _send(self, rank: int, data: bytes) -> None:
        try:
            self.peers[rank].sendall(_LENGTH.pack(len(data)))
            self.peers[rank].sendall(data)
        except socket.timeout:
            raise GroupError(f"rank {self.rank} timed out sending to rank {rank}: not read within {self.timeout:g} s "
                             "(--dist-timeout-seconds); it hangs or is stopped") from None
        except OSError as exc:
            raise GroupError(f"rank {self.rank} could not send to rank {rank}: {exc} (it ended or failed)") from None

    def _receive(self, rank: int) -> bytes:
        sock = self.peers[rank]
        try:
            (length,) = _LENGTH.unpack(_exactly(sock, _LENGTH.size))
            return _exactly(sock, length)
        except socket.timeout:
            raise GroupError(f"rank {self.rank} timed out waiting for rank {rank}: no answer within "
                             f"{self.timeout:g} s (--dist-timeout-seconds); it hangs or is stopped") from None
        except (OSError, EOFError) as exc:
            raise GroupError(f"rank {rank} closed its connection to rank {self.rank} ({exc}): it ended or "
                             "failed") from None


def new_key() -> str:
    """A fresh key for one attempt of a job (hex, for the environment)."""
    return secrets.token_hex(32)


def _exactly(sock: socket.socket, n: int) -> bytes:
    buffer = bytearray(n)
    view, got = memoryview(buffer), 0
    while got < n:
        read = sock.recv_into(view[got:], n - got)
        if read == 0:
            raise EOFError("connection closed")
        got += read
    return bytes(buffer)


def _proof(key: bytes, role: bytes, challenge: bytes, rank: int) -> bytes:
    return hmac.new(key, role + challenge + rank.to_bytes(4, "big"), hashlib.sha256).digest()


def _accept(world_size: int, host: str, port: int, key: bytes, deadline: float) -> dict[int, socket.socket]:
    """Rank 0: accept and authenticate every other rank (a connection that fails the proof is dropped)."""
    peers: dict[int, socket.socket] = {}
    with socket.create_server((host, port)) as server:
        while len(peers) < world_size - 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(1, world_size)) - set(peers))
                raise GroupError(f"rank 0 timed out waiting for rank(s) {missing} to join it on {host}:{port} "
                                 "(--dist-timeout-seconds)")
            server.settimeout(remaining)
            try:
                sock, _ = server.accept()
            except socket.timeout:
                continue
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                challenge = secrets.token_bytes(_CHALLENGE_BYTES)
                sock.sendall(challenge)
                rank = int.from_bytes(_exactly(sock, 4), "big")
                proof = _exactly(sock, 32)
                theirs = _exactly(sock, _CHALLENGE_BYTES)
                if not (0 < rank < world_size and rank not in peers
                        and hmac.compare_digest(proof, _proof(key, b"rank", challenge, rank))):
                    sock.close()
                    continue
                sock.sendall(_proof(key, b"root", theirs, rank))
            except (OSError, EOFError):
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peers[rank] = sock
    return peers


def _dial(rank: int, host: str, port: int, key: bytes, deadline: float) -> socket.socket:
    """Rank > 0: connect to rank 0 (retrying until it listens) and authenticate both ways."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GroupError(f"rank {rank} timed out joining rank 0 on {host}:{port} (--dist-timeout-seconds)")
        try:
            sock = socket.create_connection((host, port), timeout=remaining)
        except OSError:
            time.sleep(0.02)
            continue
        try:
            challenge = _exactly(sock, _CHALLENGE_BYTES)
            mine = secrets.token_bytes(_CHALLENGE_BYTES)
            sock.sendall(rank.to_bytes(4, "big") + _proof(key, b"rank", challenge, rank) + mine)
            if not hmac.compare_digest(_exactly(sock, 32), _proof(key, b"root", mine, rank)):
                sock.close()
                raise GroupError(f"rank {rank}: the process on {host}:{port} does not hold this job's key")
        except (OSError, EOFError):
            sock.close()
            time.sleep(0.02)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
