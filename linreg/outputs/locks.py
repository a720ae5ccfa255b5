"""Commit locks: at most one process commits (or rolls forward, or sweeps) a given run id at a time.

The lock of run id ID (partition key KEY) is `<output>/_locks/KEY=ID.lock`, held only while a commit runs.

- Local disk: an `flock` on that file. The kernel drops it when its process dies, so a killed run never
  blocks a later one; the file left behind is reused. (On NFS, flock is only as good as the server's locks.)
- S3: an object created with a conditional write (`If-None-Match: *`, through boto3: pyarrow's filesystem
  cannot send it), so exactly one of several writers creates it. It records its owner (host, process id and
  start time, time taken). A lock whose owner is dead (same host) or older than `STALE_LOCK` is broken with
  a conditional delete (`If-Match` its ETag), so two processes breaking it cannot both win.
- Other object stores, or S3 without boto3: best effort (look, then write): a warning says so. Two commits
  of the same run id at the same instant may then both proceed (each partition is still whole).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import socket
import time
import urllib.parse
from typing import Iterator

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

LOCKS = "_locks"
STALE_LOCK = dt.timedelta(hours=1)  # a commit lock this old on object storage belongs to a dead process


class LockBusy(Exception):
    """The lock is held by a live process; `holder` describes it (owner, host, pid, time)."""

    def __init__(self, holder: dict):
        super().__init__(f"held by {describe(holder)}")
        self.holder = holder


def describe(holder: dict) -> str:
    return (f"{holder.get('owner', '?')} (process {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('time', '?')})")


@contextlib.contextmanager
def commit_lock(output: str, filesystem: pafs.FileSystem, root: str, run_id: str, *, key: str = "run_id",
                owner: str = "") -> Iterator[dict]:
    """Hold the commit lock of `run_id` for the `with` block; raise LockBusy at once if a live process holds it."""
    holder = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
              "time": dt.datetime.now(dt.timezone.utc).isoformat()}
    name = f"{root}/{LOCKS}/{key}={run_id}.lock"
    if isinstance(filesystem, pafs.LocalFileSystem):
        with _local_lock(name, holder):
            yield holder
    elif filesystem.type_name == "s3" and _boto3() is not None:
        with _s3_lock(output, name, holder):
            yield holder
    else:
        with _best_effort_lock(filesystem, name, holder):
            yield holder


def process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces): state, parent pid, ...,
    start time at index 19; None where there is no such entry (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process from /proc, or None where there is no such entry."""
    fields = proc_stat(pid)
    try:
        return (fields[0], int(fields[19])) if fields else None
    except ValueError:
        return None


def alive(pid: int, start: int | None) -> bool:
    """Whether process `pid` (started at `start`, if known) is still running on this host."""
    stat = _proc_stat(pid)
    if stat is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return os.path.isdir("/proc") is False  # /proc exists but has no entry: gone
    state, current = stat
    return state not in ("Z", "X") and (start is None or current == start)


def is_stale(holder: dict, now: dt.datetime | None = None) -> bool:
    """True when the holder is a dead process on this host, or the lock is older than STALE_LOCK."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not alive(holder["pid"], holder.get("pid_start")):
            return True
    try:
        taken = dt.datetime.fromisoformat(holder["time"])
    except (KeyError, TypeError, ValueError):
        return True  # unreadable: a lock written by a process killed mid-write
    return (now or dt.datetime.now(dt.timezone.utc)) - taken > STALE_LOCK


@contextlib.contextmanager
def _local_lock(path: str, holder: dict) -> Iterator[None]:
    import fcntl

    while True:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the directory was removed by a releasing process: try again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            raise LockBusy(_parse(text)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else a releasing process unlinked the file we opened: lock the new one
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.unlink(path)  # while still locked, so no one else holds a lock on a file about to vanish
        os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))  # only when empty


def _boto3():
    try:
        import boto3
    except ImportError:
        return None
    return boto3


def s3_client(output: str):
    """A boto3 S3 client for the store of `output` (endpoint and region from the URI's query or AWS_* variables;
    credentials from the URI's user-info, as pyarrow takes them, else the usual AWS chain)."""
    from linreg import redact

    uri = urllib.parse.urlsplit(redact.reveal(output))
    keys = (urllib.parse.unquote(uri.username or ""), urllib.parse.unquote(uri.password or ""))
    return _client(uri.query, keys, *(os.environ.get(v) for v in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                                                                    "AWS_PROFILE", "AWS_ACCESS_KEY_ID")))


@functools.lru_cache(maxsize=8)
def _client(query_string: str, keys: tuple[str, str], *environment):
    """One client per store (creating one costs ~0.1 s); boto3 clients are thread-safe."""
    query = dict(urllib.parse.parse_qsl(query_string))
    kwargs = {"aws_access_key_id": keys[0], "aws_secret_access_key": keys[1]} if keys[0] else {}
    if "endpoint_override" in query:
        scheme = query.get("scheme", "https")
        endpoint = query["endpoint_override"]
        kwargs["endpoint_url"] = endpoint if "://" in endpoint else f"{scheme}://{endpoint}"
    if "region" in query:
        kwargs["region_name"] = query["region"]
    return _boto3().client("s3", **kwargs)


@contextlib.contextmanager
def _s3_lock(output: str, name: str, holder: dict) -> Iterator[None]:
    from botocore.exceptions import ClientError

    bucket, key = name.split("/", 1)
    client = s3_client(output)
    body = json.dumps(holder).encode()
    etag = None
    for _ in range(20):
        try:
            etag = client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")["ETag"]
            break
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 409:  # a concurrent conditional write to the same key: look again
                time.sleep(0.05)
                continue
            if status != 412:
                raise
        try:
            current = client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                continue  # released meanwhile
            raise
        other = _parse(current["Body"].read().decode(errors="replace"))
        if not is_stale(other):
            raise LockBusy(other)
        log.warning("breaking the stale commit lock %s of %s", name, describe(other))
        try:
            client.delete_object(Bucket=bucket, Key=key, IfMatch=current["ETag"])
        except ClientError as exc:  # someone else broke or took it first: look again
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") not in (404, 412):
                raise
    else:
        raise LockBusy({"owner": "unknown (the lock kept changing)"})
    try:
        yield
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
        except ClientError as exc:
            log.warning("the commit lock %s was broken while held: %s", name, exc)


_warned = set()


@contextlib.contextmanager
def _best_effort_lock(filesystem: pafs.FileSystem, name: str, holder: dict) -> Iterator[None]:
    if filesystem.type_name not in _warned:
        _warned.add(filesystem.type_name)
        log.warning("commit locks on %s storage are best effort (no conditional writes): do not run two runs "
                    "with the same id at the same time", filesystem.type_name)
    if filesystem.get_file_info(name).type == pafs.FileType.File:
        with filesystem.open_input_stream(name) as f:
            other = _parse(f.read().decode(errors="replace"))
        if not is_stale(other):
            raise LockBusy(other)
    with filesystem.open_output_stream(name) as out:
        out.write(json.dumps(holder).encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            filesystem.delete_file(name)


def _parse(text: str) -> dict:
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}
