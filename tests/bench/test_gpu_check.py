"""bench/gpu_check.sh: where torch sees no GPU (as on this project's machines) it fails at once, saying why."""

import os
import subprocess
import sys
import time

from bench.gpu_check import relative_gap
from tests.conftest import REPO


def test_without_a_gpu_the_check_fails_at_once_with_a_clear_message():
    started = time.monotonic()
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                            env=dict(os.environ, PYTHON=sys.executable), timeout=120)
    assert result.returncode == 1
    assert "torch sees no CUDA device" in result.stderr and "machine with GPUs" in result.stderr
    assert time.monotonic() - started < 60  # no data generated, no job run
    assert not result.stdout


def test_the_weights_gap_is_relative_to_the_largest_weight():
    assert relative_gap({"a": 1.0, "b": 100.0}, {"a": 1.5, "b": 100.0}) == 0.5 / 100
