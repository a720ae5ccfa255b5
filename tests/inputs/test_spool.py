"""The joined rows kept in memory while they fit (linreg.inputs.spool): read as the file would be, written to the
file past the limit, never pickled, freed with the join's result; and a run's outputs are the same either way."""

import gc
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linreg.config import make_config
from linreg.inputs import spool
from linreg.inputs.batches import read_batches, read_joined
from linreg.inputs.join import connect, join_tables, joined_row_bytes
from linreg.inputs.schema import resolve_columns
from linreg.inputs.tables import open_table
from linreg.pipeline import steps
from tests.helpers import linear_tables

SCHEMA = pa.schema([("region", pa.string()), ("x", pa.float64())])


def _batches(n=5, rows=100):
    return [pa.record_batch([pa.array([f"R{i}"] * rows), pa.array(np.arange(rows, dtype=float) + i)], schema=SCHEMA)
            for i in range(n)]


def test_rows_under_the_limit_stay_in_memory_and_read_as_the_file_would(tmp_path):
    path = str(tmp_path / "joined.arrow")
    sink = spool.JoinedSink(path, SCHEMA, limit=1 << 30)
    for batch in _batches():
        sink.write_batch(batch)
    rows = sink.close()
    assert rows is not None and not os.path.exists(path) and spool.held(path) is rows
    got = pa.Table.from_batches(list(read_batches(path, ["x", "region"])))
    assert got.equals(pa.Table.from_batches(_batches()).select(["x", "region"]))
    assert read_joined(path).equals(pa.Table.from_batches(_batches()))


@pytest.mark.parametrize("limit", [0, 2500])  # never held; held, then written past the third batch
def test_rows_past_the_limit_are_all_written_to_the_file_in_order(tmp_path, limit):
    path = str(tmp_path / "joined.arrow")
    sink = spool.JoinedSink(path, SCHEMA, limit=limit)
    for batch in _batches():
        sink.write_batch(batch)
    assert sink.close() is None and spool.held(path) is None
    with pa.OSFile(path) as f:
        assert pa.ipc.open_file(f).read_all().equals(pa.Table.from_batches(_batches()))


def test_held_rows_are_freed_with_their_owner_and_never_pickled(tmp_path):
    path = str(tmp_path / "joined.arrow")
    sink = spool.JoinedSink(path, SCHEMA, limit=1 << 30)
    sink.write_batch(_batches(1)[0])
    rows = sink.close()
    assert pickle.loads(pickle.dumps(rows)) is None  # another process gets no rows, not a copy of them
    assert len(pickle.dumps(rows)) < 200
    del rows
    gc.collect()
    assert spool.held(path) is None


def test_an_aborted_sink_holds_nothing(tmp_path):
    path = str(tmp_path / "joined.arrow")
    sink = spool.JoinedSink(path, SCHEMA, limit=1 << 30)
    sink.write_batch(_batches(1)[0])
    sink.abort()
    assert spool.held(path) is None and not os.path.exists(path)


def _join(tmp_path, hold_bytes):
    w, y, _, _ = linear_tables(tmp_path, rows=400, regions=40, files=2)
    weather, yields = open_table(w, "weather"), open_table(y, "yields")
    columns = resolve_columns(weather, yields, features=["temp", "rainfall", "humidity"],
                              targets=["apples", "oranges"], keys=["region", "year"])
    con = connect(str(tmp_path), 1 << 28)
    try:
        out = str(tmp_path / f"joined-{hold_bytes}.arrow")
        return join_tables(con, weather, yields, columns, out, max_drop_fraction=0.0, hold_bytes=hold_bytes), out
    finally:
        con.close()


def test_a_join_that_fits_is_held_and_equals_the_written_join(tmp_path):
    held_result, held_path = _join(tmp_path, hold_bytes=1 << 30)
    written_result, written_path = _join(tmp_path, hold_bytes=0)
    assert held_result.held is not None and not os.path.exists(held_path)
    assert written_result.held is None and os.path.exists(written_path)
    assert read_joined(held_path).equals(read_joined(written_path))
    # the estimate that decides it is an upper bound here, within a factor of 2 of what was held
    table = read_joined(held_path)
    estimate = table.num_rows * joined_row_bytes(table.schema, table.column("region"))
    assert table.nbytes <= estimate <= 2 * table.nbytes


def test_a_join_expected_past_the_limit_holds_nothing_even_for_a_moment(tmp_path, monkeypatch):
    seen = []
    real = spool.JoinedSink.__init__

    def record(self, path, schema, limit):
        seen.append(limit)
        real(self, path, schema, limit)

    monkeypatch.setattr(spool.JoinedSink, "__init__", record)
    result, path = _join(tmp_path, hold_bytes=1000)  # 400 rows of about 60 bytes
    assert seen == [0] and result.held is None and os.path.exists(path)


@pytest.mark.parametrize("trainer", ["nn", "exact"])
def test_a_run_writes_the_same_outputs_whether_its_joined_rows_were_held_or_written(tmp_path, monkeypatch, trainer):
    """nn: float for float (its join is sorted); exact: its unsorted join's row order is DuckDB's threads', so its
    sums are equal to rounding."""
    w, y, _, _ = linear_tables(tmp_path, rows=600, regions=30, files=3)
    outputs, real = {}, steps.hold_bytes
    for hold in (True, False):
        monkeypatch.setattr(steps, "hold_bytes", real if hold else (lambda config, cluster=None: 0))
        held = []
        monkeypatch.setattr(steps, "join_tables", _recording(held))
        out = tmp_path / f"out-{hold}"
        steps.run(make_config(weather=w, yields=y, output=str(out), run_id="same", trainer=trainer, epochs=20))
        assert held == [hold]
        outputs[hold] = {d: pq.read_table(next((out / d).rglob("*.parquet"))) for d in ("weights", "predictions")}
    for dataset in ("weights", "predictions"):
        a, b = outputs[True][dataset], outputs[False][dataset]
        if trainer == "nn":
            assert a.equals(b), dataset
        else:
            keys = ["target", "term"] if dataset == "weights" else ["region", "year"]
            a, b = a.sort_by([(k, "ascending") for k in keys]), b.sort_by([(k, "ascending") for k in keys])
            assert a.schema == b.schema and a.num_rows == b.num_rows
            for name in a.column_names:
                if pa.types.is_floating(a.schema.field(name).type):
                    np.testing.assert_allclose(a.column(name).to_numpy(), b.column(name).to_numpy(), rtol=1e-9,
                                               atol=1e-9, err_msg=f"{dataset}.{name}")
                else:
                    assert a.column(name).equals(b.column(name)), f"{dataset}.{name}"


def _recording(held: list):
    """join_tables, recording whether each join kept its rows in memory."""
    from linreg.inputs import join

    def join_tables(*args, **kwargs):
        result = join.join_tables(*args, **kwargs)
        held.append(result.held is not None)
        return result
    return join_tables
