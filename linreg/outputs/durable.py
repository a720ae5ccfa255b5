"""Durable file operations on local disk: what survives a power loss, not only a killed process.

A write or a rename lands in the kernel's page cache first; a SIGKILL keeps it (the kernel survives), a
power loss may not. POSIX makes data durable only through fsync: of a file for its bytes, of a folder for
the names in it (a created, renamed or removed entry). So every step of a commit that a later step relies
on is fsynced before that step, as SQLite and PostgreSQL order theirs: the data, then the journal, then
the folder. See docs/commit-protocol.md for the order and why each call is there.

Object storage needs none of this: an acknowledged PUT is durable, so callers use these functions only
when the output is on local disk.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Callable


def fsync_file(path: str) -> None:
    """Flush a closed file's bytes to disk (files pyarrow's C++ writer made are synced this way)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Write the bytes `data` to `path` whole or not at all, durably (`replace`)."""
    def write(temporary: str) -> None:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    replace(path, write)


def replace(path: str, write: Callable[[str], None]) -> None:
    """Make `path` whole or not at all, durably: `write(temporary)` creates the new file under a temporary name
    in the same folder; it is fsynced, renamed over `path`, then the folder fsynced. A reader (or a restart
    after a power loss) sees the old file or the new one, never a torn one; a leftover temporary file
    (`.<name>.<token>.tmp`, `is_temporary`) is garbage, and none is left when `write` or a step fails."""
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        fsync_file(temporary)
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk, say: leave no temporary file behind
            os.remove(temporary)
        raise
    fsync_dir(folder)


def is_temporary(name: str, of: str) -> bool:
    """Whether `name` is a temporary file that `replace` (or `write_atomic`) left for the file named `of`."""
    return name.startswith(f".{of}.") and name.endswith(".tmp")


def rename(src: str, dst: str) -> None:
    """Rename durably: then fsync the destination's folder, so the new name exists after a power loss.
    Journaling file systems (ext4, XFS, btrfs) persist a rename as one unit, so the old name is gone with
    it; the source folder is not synced (PostgreSQL's durable_rename does the same, and the crash model of
    tests/outputs/test_commit_power_loss.py finds nothing that such an fsync would make durable)."""
    os.rename(src, dst)
    fsync_dir(os.path.dirname(dst))


def makedirs(path: str) -> None:
    """Create `path` and its missing parents, each new folder's entry made durable by fsyncing its parent
    (a file renamed into a folder whose own entry was lost would be lost with it)."""
    for _ in range(100):  # another run may remove an empty parent (the staging root) meanwhile: try again
        missing, folder = [], os.path.abspath(path)
        while not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        try:
            for folder in reversed(missing):
                try:
                    os.mkdir(folder)
                except FileExistsError:
                    pass  # made by another process at the same time: synced below all the same
                fsync_dir(os.path.dirname(folder))
            return
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"could not create {path}: its parent folders kept disappearing")


def sync_tree(path: str, *, skip: tuple[str, ...] = ()) -> None:
    """Fsync every file and folder under `path` and `path` itself, deepest first (a staged area before
    its commit is decided: the journal must never be durable before the data it points to). Files named
    in `skip` are not synced (their names still are, with their folder): a lease, whose loss is tolerated."""
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            if name not in skip:
                fsync_file(os.path.join(folder, name))
        fsync_dir(folder)
