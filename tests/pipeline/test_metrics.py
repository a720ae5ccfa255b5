"""Metric rows: the per-region rows of one process or of several ranks (merged in split and region order),
and the MSEs read back from metric rows (totals per split and target, and per region)."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from linreg.parallel.dist import single_process
from linreg.pipeline.metrics import (RegionErrors, SplitErrors, metric_rows, region_metric_batches, region_mse, total_mse)

TARGETS = ["apples", "oranges"]


def region_errors(regions, seed):
    """RegionErrors of random rows over `regions` (numbered 0..), both splits."""
    rng = np.random.default_rng(seed)
    errors = RegionErrors(len(regions), len(TARGETS))
    number = rng.integers(0, len(regions), 200)
    errors.update(number, number % 3 == 0, rng.random((200, 2)))
    return errors


class TwoRanks:
    """A stand-in for rank 0 of two ranks: all_gather_object returns its own and `other`'s objects."""

    distributed = True

    def __init__(self, other):
        self.other = other

    def all_gather_object(self, obj):
        return [obj, self.other]


def test_one_process_streams_the_region_rows_as_region_errors_sorts_them():
    regions = pa.array([f"R{i:02d}" for i in range(30)])
    errors = region_errors(regions, 0)
    counts, batches = region_metric_batches(single_process(), errors, regions, TARGETS)
    assert counts == {s: n for s, n in errors.regions_per_split().items() if n}
    assert pa.Table.from_batches(list(batches)).equals(errors.table(regions, TARGETS))


def test_several_ranks_merge_their_disjoint_regions_in_split_and_region_order():
    regions = [f"R{i:02d}" for i in range(30)]
    mine, theirs = pa.array(regions[0::2]), pa.array(regions[1::2])  # each rank's regions
    errors_mine, errors_theirs = region_errors(mine, 1), region_errors(theirs, 2)
    counts, batches = region_metric_batches(TwoRanks(errors_theirs.table(theirs, TARGETS)), errors_mine, mine,
                                            TARGETS)
    merged = pa.Table.from_batches(list(batches)).to_pylist()
    assert [(r["split"], r["region"]) for r in merged] == sorted((r["split"], r["region"]) for r in merged)
    both = errors_mine.table(mine, TARGETS).to_pylist() + errors_theirs.table(theirs, TARGETS).to_pylist()
    key = lambda r: (r["split"], r["region"], r["target"] or "")  # noqa: E731
    assert sorted(merged, key=key) == sorted(both, key=key)
    for split in ("train", "holdout"):
        assert counts[split] == (errors_mine.regions_per_split()[split] + errors_theirs.regions_per_split()[split])


def test_mse_read_back_from_metric_rows():
    rng = np.random.default_rng(3)
    splits = {"train": SplitErrors(2), "holdout": SplitErrors(2)}
    for acc in splits.values():
        y, pred = rng.random((50, 2)), rng.random((50, 2))
        acc.add_rows(y, (y - pred) ** 2, np.ones(50), 50)
    rows = metric_rows(splits, TARGETS, optimum_rss=None)
    regions = pa.array(["a", "all", "b"])
    errors = region_errors(regions, 4)
    rows += errors.table(regions, TARGETS).to_pylist()
    mse, mean_mse = total_mse(rows)
    for split, acc in splits.items():
        assert mse[split] == {t: float(acc.mse[j]) for j, t in enumerate(TARGETS)}
        assert mean_mse[split] == float(acc.mse.mean())
    per_region = region_mse(rows)
    for split, code in (("train", 0), ("holdout", 1)):
        expected = [(name, float(errors.sse[:, 2 * i + code].sum() / (2 * errors.weight[2 * i + code])))
                    for i, name in enumerate(regions.to_pylist()) if errors.rows[2 * i + code]]
        assert [r for r, _ in per_region[split]] == [r for r, _ in expected]  # a region named "all" is a region
        np.testing.assert_allclose([v for _, v in per_region[split]], [v for _, v in expected], rtol=1e-12)


def _region_rows(regions, split, k=2):
    """A rank's per-region rows of one split: k + 1 a region (each target, then the total), by region name."""
    rows = [{"split": split, "region": r, "target": t, "metric": "mse", "value": float(i)}
            for i, r in enumerate(sorted(regions)) for t in [f"t{j}" for j in range(k)] + [None]]
    return rows


@pytest.mark.parametrize("layout", ["ranges in rank order", "ranges out of order", "interleaved", "one rank empty"])
def test_merge_sorted_puts_ranges_end_to_end_and_sorts_anything_else(layout):
    from linreg.inputs.schema import metrics_schema
    from linreg.pipeline.metrics import merge_sorted

    names = [f"R{i:04d}" for i in range(60)] + ["Zürich", "Ärhus"]
    shares = {"ranges in rank order": [names[:20], names[20:40], names[40:]],
              "ranges out of order": [names[40:], names[:20], names[20:40]],
              "interleaved": [names[0::3], names[1::3], names[2::3]],
              "one rank empty": [names[:30], [], names[30:]]}[layout]
    parts = [pa.Table.from_pylist(_region_rows(share[::2], "holdout") + _region_rows(share[1::2], "train"),
                                  schema=metrics_schema()) for share in shares]
    merged = merge_sorted(parts)
    expected = pa.concat_tables(parts)
    expected = expected.take(pc.sort_indices(expected, sort_keys=[("split", "ascending"), ("region", "ascending")]))
    assert merged.equals(expected)
    assert merged.column("region").to_pylist()[:3] == [sorted(n for s in shares for n in s[::2])[0]] * 3


@pytest.mark.parametrize("weighted", [False, True])
def test_split_sums_of_masked_batches_equal_exact_sums_of_each_splits_rows(weighted):
    """add_splits weighs the other split's rows 0 instead of copying each split's rows out: its counts,
    squared errors and target moments are those of the split's rows alone (Fraction arithmetic), centred R^2
    included, over uneven batches with an empty split in one of them."""
    from fractions import Fraction

    from linreg.pipeline.metrics import add_splits

    rng = np.random.default_rng(3)
    errors = {"train": SplitErrors(2), "holdout": SplitErrors(2)}
    rows = {"train": [], "holdout": []}
    for m, share in ((1000, 0.2), (37, 0.0), (513, 0.5)):
        y = rng.normal(50.0, 3.0, size=(m, 2))
        pred = y + rng.normal(0.0, 1.0, size=(m, 2))
        holdout = rng.random(m) < share
        w = rng.uniform(0.0, 2.0, size=m) if weighted else None
        add_splits(errors, y, (y - pred) ** 2, holdout, w)
        for i in range(m):
            rows["holdout" if holdout[i] else "train"].append((y[i], pred[i], 1.0 if w is None else w[i]))
    for split, acc in errors.items():
        data = rows[split]
        assert acc.n == len(data)
        weight = sum(Fraction(float(w)) for _, _, w in data)
        for j in range(2):
            sse = sum(Fraction(float(w)) * (Fraction(float(y[j])) - Fraction(float(p[j]))) ** 2 for y, p, w in data)
            mean = sum(Fraction(float(w)) * Fraction(float(y[j])) for y, _, w in data) / weight
            ss = sum(Fraction(float(w)) * (Fraction(float(y[j])) - mean) ** 2 for y, _, w in data)
            assert acc.mse[j] == pytest.approx(float(sse / weight), rel=1e-12)
            assert acc.r2[j] == pytest.approx(float(1 - sse / ss), rel=1e-10)
            assert acc.y.mean[j] == pytest.approx(float(mean), rel=1e-13)
