"""What every command line of the flows does with errors: one paragraph and exit 2 for bad input, the
traceback and exit 1 for anything else. Whatever it prints, and every log line of the process, is redacted
(`linreg.redact`): a credential given in a URI is never printed."""

from __future__ import annotations

import os
import sys
import tomllib
import traceback
from typing import Callable

from linreg import redact
from linreg.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, InputError, report_error


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
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        print(redact.redact("unexpected failure (not an input problem):\n" + traceback.format_exc()),
              file=sys.stderr)
        return EXIT_FAILURE
    print(redact.redact(text))
    return EXIT_OK


INTERRUPTED = ("interrupted: stopped by Ctrl-C. Committed runs are untouched, and this run was not committed; "
               "had its commit begun, the next run on this output finishes it.")
NOT_RECORDED = ("note: no Prefect server is configured, so this run is not recorded in Prefect (no flow run, no "
                "artifacts); its outputs are the same. To record runs: prefect server start, then "
                "prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api")


def no_server_configured() -> bool:
    """True when no Prefect server is configured, decided without importing Prefect (seconds of imports):
    PREFECT_API_URL is unset in the environment, and the active profile of the profiles file sets none.
    False when one is, or when a source this does not read could (`.env`, `prefect.toml`, a `[tool.prefect]`
    table in `pyproject.toml`, `PREFECT_PROFILES_PATH`): then `prefect_server` asks Prefect's own settings."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("PREFECT_PROFILES_PATH"):
        return False
    if os.path.exists(".env") or os.path.exists("prefect.toml") or _names_prefect("pyproject.toml"):
        return False
    home = os.environ.get("PREFECT_HOME") or os.path.join(os.path.expanduser("~"), ".prefect")
    profiles = os.path.join(home, "profiles.toml")
    if not os.path.exists(profiles):
        return True  # Prefect's built-in profiles: the active one ("ephemeral") sets no API URL
    try:
        with open(profiles, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    profile = data.get("profiles", {}).get(active, {}) if isinstance(active, str) else {}
    return isinstance(profile, dict) and not profile.get("PREFECT_API_URL")


def _names_prefect(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "tool.prefect" in f.read()
    except OSError:
        return False


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


def train_command(argv: list[str] | None, description: str, record: Callable | None) -> int:
    """`python -m flows.train`: parse, check the output, then launch torchrun ranks, or run the flow `record`
    (the Prefect flow: the run is recorded in the configured server), or, with no server (`record` None, or
    `prefect_server()` None), the same steps in this process (`linreg.pipeline.inprocess`)."""
    from linreg.config import build_parser, config_from_args, decide_run_id
    from linreg.outputs import destination

    args = build_parser(description=description).parse_args(argv)

    def action() -> str | int:
        config = redact.protect_config(config_from_args(args))  # the flow and Prefect see only redacted URIs
        destination.check_writable(config.output)  # a wrong --output fails at once, before Prefect or torchrun start
        if config.launches_ranks:  # launch the ranks with torchrun
            from linreg.launch import torchrun

            return torchrun.cli(config, sys.argv[1:] if argv is None else list(argv))
        ahead = sys.modules.get("linreg.pipeline.headstart")  # imported only when a head start began
        if ahead is not None and ahead.current() is not None:
            config = ahead.current().config  # this command line's, with the run id it was begun with
        else:
            config = config.model_copy(update={"run_id": decide_run_id(config.run_id)})
        from linreg.pipeline import report

        report.warm_up()  # matplotlib loads while the run reads, joins and fits
        if record is None or prefect_server() is None:  # ad hoc, no server: in process, not a temporary server
            from linreg.pipeline import inprocess

            print(NOT_RECORDED, file=sys.stderr)
            summary = inprocess.run(config)
        else:
            summary = record(config)
        reused = summary.run_id != config.run_id
        return (f"inputs and configuration unchanged since run {summary.run_id}: not retrained "
                "(--skip-if-unchanged)\n" if reused else "") + summary.text()

    code = EXIT_INTERRUPTED  # run() turns every Exception and Ctrl-C into an exit code: SystemExit passes
    try:
        code = run(action)
        return code
    finally:
        _end_head_start(wait=code != EXIT_INTERRUPTED)  # an interrupted command does not wait for a head start


def begin_head_start(argv: list[str], description: str) -> None:
    """With a Prefect server configured in the environment and answering its health check: parse the command
    line and begin the run's plan and join on a background thread (`linreg.pipeline.headstart`) before the
    caller imports Prefect. Anything else (a bad command line, an unwritable output, torchrun ranks,
    --skip-if-unchanged, no answer) begins nothing: `train_command` then runs as without a head start, and
    reports the error."""
    url = os.environ.get("PREFECT_API_URL")
    if not url or not _answers(url):
        return
    import contextlib
    import io

    from linreg.config import build_parser, config_from_args, decide_run_id
    from linreg.outputs import destination

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser(description=description).parse_args(argv)
        config = redact.protect_config(config_from_args(args))
        if config.launches_ranks or config.skip_if_unchanged:
            return
        destination.check_writable(config.output)
    except (Exception, SystemExit):  # noqa: BLE001 (train_command parses again and reports it)
        return
    from linreg.pipeline import headstart

    headstart.begin(config.model_copy(update={"run_id": decide_run_id(config.run_id)}))


def _answers(url: str) -> bool:
    """Whether `<url>/health` answers 200 within a second (a plain GET: Prefect is not imported yet)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=1) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def interrupted() -> int:
    """Ctrl-C outside `run` (while `python -m flows.train` imports Prefect and the flow): the same line and
    exit code as a run's, and the head start left as an interrupted run leaves it."""
    print(INTERRUPTED, file=sys.stderr)
    _end_head_start(wait=False)
    return EXIT_INTERRUPTED


def _end_head_start(wait: bool) -> None:
    ahead = sys.modules.get("linreg.pipeline.headstart")
    if ahead is not None:
        ahead.abandon(wait=wait)
