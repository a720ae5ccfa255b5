"""What every command line of the flows does with errors: one paragraph and exit 2 for bad input, the
traceback and exit 1 for anything else."""

from __future__ import annotations

import sys
import traceback
from typing import Callable

from linreg.errors import EXIT_FAILURE, EXIT_OK, InputError


def run(action: Callable[[], str | int]) -> int:
    """Run `action` and turn failures into exit codes. It returns the text to print on success, or an exit
    code of its own (a launcher that already reported)."""
    try:
        text = action()
        if isinstance(text, int):
            return text
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:
        print("unexpected failure (not an input problem):\n" + traceback.format_exc(), file=sys.stderr)
        return EXIT_FAILURE
    print(text)
    return EXIT_OK
