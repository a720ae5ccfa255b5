"""bench.command_bench at a tiny size: every command runs, is reported with a finite ratio, and the outputs agree."""

import math
import re
import subprocess
import sys

from tests.conftest import REPO


def test_command_bench_reports_every_command_and_agreeing_coefficients(tmp_path):
    # As a user runs it, in its own process: a child's peak RSS starts at its parent's, so pytest's would show.
    result = subprocess.run([sys.executable, "-m", "bench.command_bench", "--rows", "20000", "--rounds", "1",
                             "--skip-spark", "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()

    def row(name: str) -> list[str]:
        (line,) = [line for line in lines if line.startswith(name + " ")]
        return line[len(name):].split()

    for name in ("ours, exact, 2GB", "DuckDB all-SQL job", "DuckDB job, no predictions"):
        median, low, high, rss, ratio = row(name)[:5]
        assert 0 < float(low) <= float(median) <= float(high) and float(rss) > 0
        assert ratio.endswith("x") and math.isfinite(float(ratio[:-1])) and float(ratio[:-1]) > 0
    assert row("DuckDB all-SQL job")[4] == "1.00x"
    for name in ("help", "sample, no server", "sample, server"):
        median, low, high, rss = row(name)[:4]
        assert 0 < float(median) and float(rss) > 0
    same_rows = re.search(r"on the same training rows: (\S+)", result.stdout).group(1)
    assert float(same_rows) < 1e-6
    assert not list(tmp_path.glob("command-bench-*"))  # its temporary directories are gone
