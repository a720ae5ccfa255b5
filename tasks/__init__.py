"""Thin Prefect tasks, one per pipeline step; each calls one function of `linreg.pipeline.steps`."""

import logging
import os

from linreg.errors import InputError

# Route the library's own log lines (logger "linreg") into Prefect's run logs.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "linreg")


class _InputErrorsWithoutTraceback(logging.Filter):
    """A bad input is the user's to fix: log its message, not a traceback through Prefect's engine."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InputError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_InputErrorsWithoutTraceback())
