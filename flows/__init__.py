"""Prefect flows that compose the tasks in `tasks/`."""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "linreg")
