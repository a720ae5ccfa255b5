"""Thin Prefect tasks, one per pipeline step; each calls one function of `linreg.pipeline`."""

import os

# Route the library's own log lines (logger "linreg") into Prefect's run logs.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "linreg")
