"""A memory budget far below the training rows: the gradient trainers stream epochs from disk and reach the
same optimum as in memory; the exact trainer is unchanged to 1e-10."""

import logging

import numpy as np
import pyarrow.dataset as ds
import pytest

from linreg.config import make_config
from linreg.pipeline import steps
from datagen.synth import generate


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    """40k rows over many files and hive partitions (region buckets)."""
    out = tmp_path_factory.mktemp("spread")
    truth = generate(out, rows=40_000, regions=800, files=16, partition_by_region=True, seed=3)
    assert len(ds.dataset(out / "weather", partitioning="hive").files) == 16
    return out, truth


def run(data, tmp_path, trainer, budget, run_id):
    return steps.run(make_config(weather=str(data / "weather"), yields=str(data / "yields"),
                                    output=str(tmp_path / "out"), trainer=trainer, memory_budget=budget,
                                    run_id=run_id))


def test_exact_is_the_same_whatever_the_budget(spread, tmp_path):
    data, _ = spread
    small = run(data, tmp_path, "exact", "1MB", "small")
    large = run(data, tmp_path, "exact", "4GB", "large")
    for target in large.weights:
        for term, value in large.weights[target].items():
            assert small.weights[target][term] == pytest.approx(value, rel=1e-10)


@pytest.mark.parametrize("trainer", ["nn", "manual"])
def test_gradient_trainers_stream_below_the_budget_and_reach_the_optimum(spread, tmp_path, trainer, caplog):
    data, truth = spread
    with caplog.at_level(logging.INFO, logger="linreg"):
        streamed = run(data, tmp_path, trainer, "1MB", "streamed")
    assert any("streaming them from" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="linreg"):
        in_memory = run(data, tmp_path, trainer, "4GB", "memory")
    assert not any("streaming them from" in r.getMessage() for r in caplog.records)
    exact = run(data, tmp_path, "exact", "4GB", "exact")
    for summary in (streamed, in_memory):
        # The same convergence criterion: within 1% of the exact optimum's training MSE.
        for target in ("apples", "oranges"):
            assert summary.mse["train"][target] <= 1.01 * exact.mse["train"][target]
        coef = np.array([[summary.weights[t][f] for f in truth["features"]] for t in truth["targets"]])
        np.testing.assert_allclose(coef, np.array(truth["coef"]), atol=0.02)
