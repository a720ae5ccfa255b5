"""What every command line of the flows does with errors: one paragraph and exit 2 for bad input, the
traceback and exit 1 for anything else. Whatever it prints, and every log line of the process, is redacted
(`linreg.redact`): a credential given in a URI is never printed."""

from __future__ import annotations

import sys
import traceback
from typing import Callable

from linreg import redact
from linreg.errors import EXIT_FAILURE, EXIT_OK, InputError, report_error


class ServerUnreachable(Exception):
    """The configured Prefect server does not answer: exit 1 with one paragraph naming its URL."""


def run(action: Callable[[], str | int]) -> int:
    """Run `action` and turn failures into exit codes. It returns the text to print on success, or an exit
    code of its own (a launcher that already reported)."""
    redact.install_log_redaction()
    try:
        text = action()
        if isinstance(text, int):
            return text
    except (InputError, ServerUnreachable) as exc:
        return report_error(exc)
    except Exception:
        print(redact.redact("unexpected failure (not an input problem):\n" + traceback.format_exc()),
              file=sys.stderr)
        return EXIT_FAILURE
    print(redact.redact(text))
    return EXIT_OK


NOT_RECORDED = ("note: no Prefect server is configured, so this run is not recorded in Prefect (no flow run, no "
                "artifacts); its outputs are the same. To record runs: prefect server start, then "
                "prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api")


def prefect_server() -> str | None:
    """The configured Prefect API URL (environment, profile or settings file), None when there is none; a
    configured server that does not answer is an error naming it (never a silent fall-back)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise ServerUnreachable(f"The Prefect server configured at {url} does not answer ({type(problem).__name__}: "
                                f"{problem}). Start it, or unset PREFECT_API_URL to run without recording in Prefect.")
    return url
