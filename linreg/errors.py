"""Errors a user can act on. Anything else is a bug or an environment failure."""

EXIT_OK = 0
EXIT_FAILURE = 1     # anything unexpected: a bug, a disk or network failure
EXIT_BAD_INPUT = 2   # bad data, bad configuration or bad command line: fix the input and rerun


class InputError(ValueError):
    """Bad input data or configuration. The message names the file, column and example rows at fault."""

    exit_code = EXIT_BAD_INPUT


def format_examples(values, limit: int = 5) -> str:
    """'a, b, c (and 7 more)' for error messages."""
    values = list(values)
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:limit])
    more = len(values) - limit
    return f"{shown} (and {more} more)" if more > 0 else shown
