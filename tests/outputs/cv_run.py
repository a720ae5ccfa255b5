"""A committed training run made into a cross-validated one through the commit API, for the tests of the
outputs (the computation of a cross-validation is tested in tests/pipeline/): its partitions are read back,
its predictions get `fold` and `<target>_cv_pred`, its metrics the chosen `l2`, and a `cv` table written with
`cv_schema()` joins them; all five datasets are committed again under the run id (a replacing commit).

The out-of-fold predictions stand in for a real cross-validation (the prediction shifted by an amount that
grows with the fold and the l2 value); the cv table is computed from them as docs/outputs.md defines it: per
l2, fold and target the MSE of the fold's training rows, pooled over the folds (fold null), and the mean over
targets (target null). The l2 with the lowest pooled mean is the chosen one (ties: the smallest).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from linreg.inputs.schema import cv_pred_column, cv_schema, metrics_schema, pred_column, predictions_schema
from linreg.outputs import commit


def read_partition(root: str, dataset: str, run_id: str) -> pa.Table:
    """One committed partition file, with its metadata (no hive column: the folder names the run)."""
    return pq.read_table(commit.part_path(root, dataset, run_id), partitioning=None)


def make_cross_validated(output: str, run_id: str, *, folds: int = 3, l2=(0.0, 0.5, 2.0)) -> tuple[pa.Table, float]:
    """Recommit the committed run `run_id` of the local root `output` as a cross-validated run; return its cv
    table and the chosen l2."""
    _, root, _ = commit.resolve(output)
    tables = {d: read_partition(root, d, run_id) for d in commit.DATASETS}
    predictions = tables["predictions"]
    names = predictions.schema.names
    targets = [n[:-len("_pred")] for n in names if n.endswith("_pred")]
    key_fields = [predictions.schema.field(n) for n in names[:names.index("split")]]
    assert predictions.schema.remove_metadata() == predictions_schema(key_fields, targets)  # no weight column

    train = np.asarray(pc.equal(predictions["split"], "train").to_numpy(zero_copy_only=False))
    regions = predictions[key_fields[0].name].to_numpy(zero_copy_only=False)
    training_regions = sorted(set(regions[train]))
    fold_of = {region: i % folds for i, region in enumerate(training_regions)}  # every row of a region: one fold
    fold = np.array([fold_of.get(r, -1) for r in regions], dtype=np.int64)
    actual = {t: predictions[t].to_numpy() for t in targets}
    cv_pred = {value: {t: predictions[pred_column(t)].to_numpy() + (fold + 1) * (0.5 + value) for t in targets}
               for value in l2}

    rows = []
    for value in l2:
        for f in list(range(folds)) + [None]:
            mask = train & (fold == f) if f is not None else train
            per_target = [float(np.mean((actual[t][mask] - cv_pred[value][t][mask]) ** 2)) for t in targets]
            rows += [{"l2": value, "fold": f, "target": t, "mse": m, "rows": int(mask.sum())}
                     for t, m in zip(targets, per_target)]
            rows.append({"l2": value, "fold": f, "target": None, "mse": float(np.mean(per_target)),
                         "rows": int(mask.sum())})
    cv = pa.Table.from_pylist(rows, schema=cv_schema())
    totals = [r for r in rows if r["fold"] is None and r["target"] is None]
    chosen = min(totals, key=lambda r: (r["mse"], r["l2"]))["l2"]

    schema = predictions_schema(key_fields, targets, cv=True)
    columns = {n: predictions[n] for n in names}
    columns["fold"] = pa.array(np.where(train, fold, 0), pa.int64(), mask=~train)
    for t in targets:
        columns[cv_pred_column(t)] = pa.array(cv_pred[chosen][t], pa.float64(), mask=~train)
    tables["predictions"] = pa.table([columns[f.name] for f in schema], schema=schema)
    chosen_row = pa.Table.from_pylist([{"split": "train", "region": None, "target": None, "metric": "l2",
                                        "value": chosen}], schema=metrics_schema())
    tables["metrics"] = pa.concat_tables([tables["metrics"].replace_schema_metadata(None), chosen_row])
    tables[commit.CV] = cv

    metadata = predictions.schema.metadata  # the run's: every file of a run records the same
    staging = commit.Staging.create(output, run_id, datasets=commit.DATASETS_WITH_CV)
    for dataset, table in tables.items():
        commit.write_table(staging.file(dataset), table, metadata)
    staging.commit()
    return cv, chosen
