"""Errors a user can act on. Anything else is a bug or an environment failure."""

from __future__ import annotations

import errno
import sys

from linreg import redact

EXIT_OK = 0
EXIT_FAILURE = 1     # anything unexpected: a bug, a disk or network failure
EXIT_BAD_INPUT = 2   # bad data, bad configuration or bad command line: fix the input and rerun
EXIT_CONFLICT = 3    # another run with the same run id committed (or is committing) first
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT, as a shell reports it)


class InputError(ValueError):
    """Bad input data or configuration. The message names the file, column and example rows at fault."""

    exit_code = EXIT_BAD_INPUT


class RunConflictError(InputError):
    """Two runs with the same run id at the same time: the other one committed (or is committing) first, so
    this one is not committed. Rerun it (it then replaces the other) or choose another run id."""

    exit_code = EXIT_CONFLICT


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's text for a one-paragraph message (credentials redacted, at most
    `limit` characters); the exception's type name when it has no text."""
    text = redact.redact(str(exc).strip())
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def format_examples(values, limit: int = 5) -> str:
    """'a, b, c (and 7 more)' for error messages."""
    values = list(values)
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:limit])
    more = len(values) - limit
    return f"{shown} (and {more} more)" if more > 0 else shown


class TransientIOError(OSError):
    """A storage failure worth retrying (a dropped connection, a throttled request, a flaky disk read)."""


# errno values that a retry cannot fix: the file is missing, forbidden, or the disk is full or read-only.
_PERMANENT_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.ENOTDIR,
                               errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG})


def is_transient(exc: BaseException) -> bool:
    """True for I/O errors a retry may fix. Bad input (InputError) and permanent OS errors are not."""
    if isinstance(exc, InputError) or not isinstance(exc, OSError):
        return False
    return isinstance(exc, TransientIOError) or exc.errno not in _PERMANENT_ERRNOS


def report_error(exc: BaseException, prefix: str = "") -> int:
    """Print '<prefix>error: <message>' (credentials redacted) to stderr; return the exception's exit code
    (an InputError's: 2 for bad input; anything else: 1). What every command line does with a known error."""
    print(redact.redact(f"{prefix}error: {exc}"), file=sys.stderr)
    return getattr(exc, "exit_code", EXIT_FAILURE)
