"""What every command line of the flows does with errors: one paragraph and exit 2 for bad input, the
traceback and exit 1 for anything else. Whatever it prints, and every log line of the process, is redacted
(`linreg.redact`): a credential given in a URI is never printed."""

from __future__ import annotations

import sys
import traceback
from typing import Callable

from linreg import redact
from linreg.errors import EXIT_FAILURE, EXIT_OK, InputError, report_error


def run(action: Callable[[], str | int]) -> int:
    """Run `action` and turn failures into exit codes. It returns the text to print on success, or an exit
    code of its own (a launcher that already reported)."""
    redact.install_log_redaction()
    try:
        text = action()
        if isinstance(text, int):
            return text
    except InputError as exc:
        return report_error(exc)
    except Exception:
        print(redact.redact("unexpected failure (not an input problem):\n" + traceback.format_exc()),
              file=sys.stderr)
        return EXIT_FAILURE
    print(redact.redact(text))
    return EXIT_OK
