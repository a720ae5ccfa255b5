"""Shared fixtures: Prefect pointed at a throw-away home, small generated datasets, the shipped sample."""

import atexit
import os
import shutil
import tempfile

_PREFECT_HOME = tempfile.mkdtemp(prefix="linreg-tests-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, True)
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "linreg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture
def sample_paths():
    return {"weather": str(SAMPLE / "weather.parquet"), "yields": str(SAMPLE / "yields.parquet")}
