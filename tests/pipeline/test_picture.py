"""The report's data comes from the evaluation pass: a uniform sample of holdout rows that merges across
ranks, and the worst regions, equal to what the committed outputs say."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from linreg.config import make_config
from linreg.parallel import dist
from linreg.pipeline import steps
from linreg.pipeline.picture import HoldoutSample, worst_regions
from tests.helpers import linear_tables


def _rows(n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    actual = np.arange(start, start + n, dtype=np.float64)[:, None] * [1.0, -1.0]
    return actual, actual + 0.5


def test_the_sample_keeps_at_most_size_rows_each_an_added_row_with_its_prediction():
    sample = HoldoutSample(2, seed=7, size=100)
    for start in range(0, 10_000, 999):  # uneven batches
        sample.add(*_rows(min(999, 10_000 - start), start))
    columns = sample.columns(["a", "b"], lambda t: f"pred_{t}")
    assert len(columns["a"]) == 100 and len(set(columns["a"])) == 100
    assert np.array_equal(columns["b"], -columns["a"]) and np.array_equal(columns["pred_a"], columns["a"] + 0.5)
    assert set(columns["a"]) <= set(range(10_000))


def test_the_sample_is_uniform_over_the_rows_and_the_same_for_the_same_seed():
    def draw(seed):
        sample = HoldoutSample(1, seed=seed, size=1000)
        for start in range(0, 100_000, 4096):
            n = min(4096, 100_000 - start)
            sample.add(np.arange(start, start + n, dtype=np.float64)[:, None], np.zeros((n, 1)))
        return sample.columns(["a"], lambda t: "p")["a"]

    first = draw(1)
    assert np.array_equal(first, draw(1)) and not np.array_equal(np.sort(first), np.sort(draw(2)))
    # each tenth of the rows holds about a tenth of the sample (binomial sd ~9.5: 6 sd apart)
    counts = np.bincount((first // 10_000).astype(int), minlength=10)
    assert counts.min() > 100 - 57 and counts.max() < 100 + 57


def test_samples_of_ranks_merge_into_the_bottom_keys_of_their_union():
    parts = []
    for rank in range(3):
        sample = HoldoutSample(2, seed=5, rank=rank, size=50)
        sample.add(*_rows(400, 1000 * rank))
        parts.append(sample)

    class Gathered:  # a cluster of three ranks whose all_gather returns the three samples' parts
        distributed = True

        def all_gather_object(self, obj):
            return [(p.keys, p.rows) for p in parts]

    keys = np.concatenate([p.keys for p in parts])
    rows = np.concatenate([p.rows for p in parts])
    expected = rows[np.argsort(keys)[:50]]
    merged = HoldoutSample(2, seed=5, rank=0, size=50)
    merged.keys, merged.rows = parts[0].keys, parts[0].rows
    merged.merged(Gathered())
    assert np.array_equal(merged.rows[np.argsort(merged.keys)], expected)
    assert {int(a) // 1000 for a in merged.rows[:, 0]} == {0, 1, 2}  # every rank's rows can be drawn


def test_worst_regions_are_the_largest_holdout_mses_worst_first_ties_by_name():
    mse = np.array([np.nan, 3.0, 1.0, 3.0, 7.0, np.nan])
    names = pa.chunked_array([["r0", "r1", "r2", "r3", "r4", "r5"]])
    found = worst_regions(dist.single_process(), mse, names, size=3)
    assert found == [("r4", 7.0), ("r1", 3.0), ("r3", 3.0)]


def test_a_runs_picture_agrees_with_its_committed_metrics_and_predictions(tmp_path):
    w, y, _, _ = linear_tables(tmp_path, rows=3000, regions=40, noise=0.5)
    out = tmp_path / "out"
    pictured = {}
    config = make_config(weather=w, yields=y, output=str(out), run_id="seen", holdout_fraction=0.5, seed=3)
    steps.run(config, then=lambda plan, fit, evaluation: pictured.update(picture=evaluation.picture))
    picture = pictured["picture"]
    metrics = pq.read_table(out / "metrics" / "run_id=seen").to_pylist()
    per_region = sorted(((m["region"], m["value"]) for m in metrics if m["split"] == "holdout"
                         and m["region"] is not None and m["target"] is None and m["metric"] == "mse"),
                        key=lambda rv: (-rv[1], rv[0]))
    assert picture.holdout_regions == len(per_region) == 20
    assert [r for r, _ in picture.worst] == [r for r, _ in per_region[:25]]
    assert np.allclose([v for _, v in picture.worst], [v for _, v in per_region[:25]], rtol=1e-12)
    predictions = pq.read_table(out / "predictions" / "run_id=seen").to_pandas()
    holdout = predictions[predictions["split"] == "holdout"]
    pairs = set(zip(holdout["apples"], holdout["apples_pred"], holdout["oranges"]))
    sample = picture.sample
    assert len(sample["apples"]) == len(holdout)  # fewer than MAX_POINTS holdout rows: every one is drawn
    assert set(zip(sample["apples"], sample["apples_pred"], sample["oranges"])) == pairs


def test_sampling_the_holdout_rows_of_whole_batches_equals_sampling_those_rows_alone():
    """add(actual, predicted, holdout) draws a key for each holdout row as add(holdout rows) does, and copies
    only the rows that can still enter: the same sample for the same seed."""
    rng = np.random.default_rng(5)
    masked, alone = HoldoutSample(2, seed=11, size=300), HoldoutSample(2, seed=11, size=300)
    for m in (1000, 50, 4096, 0, 777):
        actual, predicted = rng.normal(size=(m, 2)), rng.normal(size=(m, 2))
        holdout = rng.random(m) < 0.3
        masked.add(actual, predicted, holdout)
        alone.add(actual[holdout], predicted[holdout])
    a, b = (s.columns(["x", "y"], lambda t: f"pred_{t}") for s in (masked, alone))
    assert len(a["x"]) == 300 and all(np.array_equal(a[c], b[c]) for c in a)
