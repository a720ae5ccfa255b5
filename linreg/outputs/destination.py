"""Check, before any data is read, that an output root can be written: a wrong `--output` is a configuration
error (exit 2, one paragraph naming the path and the cause), not a traceback at the commit.

A small probe file is created where the run would create its first file (the output root, or its nearest
existing ancestor when the root does not exist yet) and removed again, so nothing stays behind.
"""

from __future__ import annotations

import errno
import os
import secrets

import pyarrow as pa
import pyarrow.fs as pafs

from linreg.errors import InputError, first_line
from linreg.redact import redact, reveal

PROBE = ".linreg-probe-"

_CAUSES = {errno.EACCES: "it is not writable (permission denied)",
           errno.EPERM: "it is not writable (operation not permitted)",
           errno.EROFS: "it is on a read-only file system",
           errno.ENOSPC: "its disk is full",
           errno.EDQUOT: "its disk quota is exhausted",
           errno.ENOTDIR: "a part of the path is a file, not a folder",
           errno.ENAMETOOLONG: "the path is too long"}


def check_writable(output: str) -> None:
    """Raise InputError when runs cannot write under `output` (a path or a URI); return quietly otherwise."""
    try:
        if "://" in output:
            filesystem, root = pafs.FileSystem.from_uri(reveal(output))
        else:
            filesystem, root = pafs.LocalFileSystem(), os.path.abspath(output)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise _error(output, f"it is not a path or a URI that pyarrow understands ({first_line(exc)})") from None
    if isinstance(filesystem, pafs.LocalFileSystem):
        _check_local(output, root)
    else:
        _check_remote(output, filesystem, root.rstrip("/"))


def _check_local(output: str, root: str) -> None:
    folder = root
    while not os.path.lexists(folder):  # the run creates the missing levels: their parent must take them
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        where = "it is" if folder == root else f"{folder!r} is"
        raise _error(output, f"{where} a file, not a folder")
    probe = os.path.join(folder, PROBE + secrets.token_hex(4))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        cause = _CAUSES.get(exc.errno, f"a test write failed ({exc.strerror or exc})")
        where = "" if folder == root else f" (checked at {folder!r}, where the run would create its folder)"
        raise _error(output, cause + where) from None
    os.close(fd)
    os.unlink(probe)


def _check_remote(output: str, filesystem: pafs.FileSystem, root: str) -> None:
    bucket = root.split("/", 1)[0]
    try:
        if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise _error(output, f"the bucket {bucket!r} does not exist (create it first)")
        target = filesystem.get_file_info(root)
        if target.type == pafs.FileType.File:
            raise _error(output, "it is an object (a file), not a prefix (a folder)")
        probe = f"{root}/{PROBE}{secrets.token_hex(4)}"
        with filesystem.open_output_stream(probe) as out:
            out.write(b"")
        filesystem.delete_file(probe)
    except InputError:
        raise
    except OSError as exc:
        text = str(exc)
        if "ACCESS_DENIED" in text or "AccessDenied" in text or "Forbidden" in text or "403" in text:
            raise _error(output, f"writing there is not allowed ({first_line(exc)})") from None
        if "NoSuchBucket" in text or "NOT_FOUND" in text:
            raise _error(output, f"the bucket {bucket!r} does not exist (create it first)") from None
        raise  # a network or service failure: transient, retried where the step retries


def _error(output: str, cause: str) -> InputError:
    return InputError(f"The output {redact(output)!r} cannot be written: {cause}. Choose another --output, or fix "
                      "the location; nothing was read or written.")
