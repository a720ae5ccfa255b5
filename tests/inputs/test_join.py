"""The join's key checks: overlong keys are counted in characters, as the per-file check counts them, so a
key of multi-byte characters passes or fails both the same way (in the region and in another text key)."""

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from linreg.errors import InputError
from linreg.inputs import join
from linreg.inputs.checks import MAX_KEY_CHARS, check_values, long_key_mask, longest_key_sql
from linreg.inputs.join import check_key_values, connect, join_tables
from linreg.inputs.schema import resolve_columns
from linreg.inputs.tables import open_table
from tests.helpers import write

REGIONS = [f"R{i}" for i in range(6)]


def tables(tmp_path, long_key: str, column: str):
    """Weather and yields of 6 regions, one year, one farm each; `long_key` replaces the first row's `column`."""
    rng = np.random.default_rng(0)
    keys = {"region": list(REGIONS), "farm": [f"F{i}" for i in range(6)], "year": [2020] * 6}
    keys[column][0] = long_key
    w = write(tmp_path / "w.parquet", **keys, temp=rng.normal(70, 5, 6), rainfall=rng.normal(90, 9, 6))
    y = write(tmp_path / "y.parquet", **keys, apples=rng.normal(80, 10, 6))
    return open_table(w, "weather"), open_table(y, "yields")


def test_duckdb_and_arrow_count_the_same_characters():
    """`longest_key_sql` (DuckDB) and `long_key_mask` (Arrow) both count code points, not bytes."""
    for text in ["é" * 3, "e\u0301" * 3, "\U0001f44d\U0001f3fd" * 2, "abc", ""]:
        sql = duckdb.sql(f"SELECT {longest_key_sql('k')} FROM (SELECT '{text}' AS k)").fetchall()[0][0]
        assert sql == len(text)
    at, over = "é" * MAX_KEY_CHARS, "é" * (MAX_KEY_CHARS + 1)
    assert long_key_mask(pa.array([at, "x"])) is None
    assert long_key_mask(pa.array([at, over])).to_pylist() == [False, True]
    assert long_key_mask(pa.array([over]).dictionary_encode()).to_pylist() == [True]
    assert long_key_mask(pa.array([1, 2])) is None


@pytest.mark.parametrize("column", ["region", "farm"])  # the region (grouped on) and another text key (aggregated)
def test_a_key_of_1000_two_byte_characters_passes_both_checks_and_1001_fail_both(tmp_path, monkeypatch, column):
    keys = ["region", "farm", "year"]
    called = []
    real_check_values = join.check_values
    monkeypatch.setattr(join, "check_values", lambda *a: (called.append(a), real_check_values(*a))[1])
    for n, fails in ((MAX_KEY_CHARS, False), (MAX_KEY_CHARS + 1, True)):
        key = "é" * n  # 2 bytes each
        assert len(key.encode()) == 2 * n
        directory = tmp_path / str(n)
        weather, yields = tables(directory, key, column)
        columns = resolve_columns(weather, yields, features=["temp", "rainfall"], targets=["apples"], keys=keys)
        # the per-file check
        if fails:
            with pytest.raises(InputError, match=rf"key column '{column}' has 1 value\(s\) longer than "
                                                 rf"{MAX_KEY_CHARS} characters"):
                check_values(weather, keys, ["temp"])
        else:
            assert check_values(weather, keys, ["temp"]) == 6
        # the join's check: one GROUP BY region, in characters too (the per-file check runs only to name a fault)
        called.clear()
        con = connect(str(directory), 1 << 28)
        try:
            join.register(con, "weather_rows", weather)
            if fails:
                with pytest.raises(InputError, match=f"longer than {MAX_KEY_CHARS} characters"):
                    check_key_values(con, weather, "weather_rows", keys, "region")
                assert len(called) == 1
            else:
                assert check_key_values(con, weather, "weather_rows", keys, "region").num_rows == 6
                assert called == []
            # and the whole join
            out = str(directory / "joined.arrow")
            if fails:
                with pytest.raises(InputError, match=f"longer than {MAX_KEY_CHARS} characters"):
                    join_tables(con, weather, yields, columns, out, max_drop_fraction=0.0)
            else:
                result = join_tables(con, weather, yields, columns, out, max_drop_fraction=0.0)
                assert result.joined_rows == 6
        finally:
            con.close()
