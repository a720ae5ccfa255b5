"""Peak memory grows far slower than the data: a path that loads whole tables fails here, not only in bench/."""

import json
import subprocess
import sys

import pytest

from datagen.synth import generate
from tests.conftest import REPO

CHILD = """
import json, sys
from linreg.config import make_config
from linreg.pipeline import steps
data, out = sys.argv[1:3]
steps.run(make_config(weather=data + "/weather", yields=data + "/yields", output=out, trainer="exact",
                         memory_budget="256MB", run_id="rss"))
# VmHWM, not ru_maxrss: a child inherits ru_maxrss from the (large) pytest process that started it
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"maxrss_mb": peak / 1024}))
"""


def peak_rss_mb(data, out) -> float:
    result = subprocess.run([sys.executable, "-c", CHILD, str(data), str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["maxrss_mb"]


@pytest.mark.timeout(900)
def test_peak_rss_of_a_streaming_run_barely_grows_with_ten_times_the_rows(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    generate(small, rows=300_000, regions=1_000, chunk_rows=100_000)
    generate(large, rows=3_000_000, regions=10_000, chunk_rows=100_000)
    rss_small = peak_rss_mb(small, tmp_path / "out-small")
    rss_large = peak_rss_mb(large, tmp_path / "out-large")
    # Measured here: 253 MB and 339 MB (+86 MB, most of it DuckDB filling its 128 MB share as the join grows;
    # an exact run loads no torch); loading the tables whole would add ~300 MB more at 3M rows.
    print(f"peak RSS: {rss_small:.0f} MB at 300k rows, {rss_large:.0f} MB at 3M rows (+{rss_large - rss_small:.0f} MB)")
    assert rss_large - rss_small < 150, (rss_small, rss_large)
