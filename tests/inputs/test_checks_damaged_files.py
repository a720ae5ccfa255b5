"""Fuzzing the input checks with damaged Parquet files: flipped bits, overwritten or zeroed byte ranges,
truncations and inserted bytes in a valid small file (several row groups, dictionary-encoded keys,
compressed pages). For every mutant, opening it, checking its schema and values and joining it either
succeeds or fails with an InputError; never another exception, never a hang.

CI runs a few hundred seeded cases; LINREG_FUZZ_CASES=N (or LINREG_LONG_TESTS=1: 5000) runs more, and
LINREG_FUZZ_SEED=S another sequence.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linreg.errors import InputError
from linreg.inputs.checks import check_values
from linreg.inputs.join import connect, join_tables
from linreg.inputs.schema import resolve_columns
from linreg.inputs.tables import open_table

CASES = int(os.environ.get("LINREG_FUZZ_CASES", 5000 if os.environ.get("LINREG_LONG_TESTS") == "1" else 300))
SEED = int(os.environ.get("LINREG_FUZZ_SEED", 0))
HANG = 30.0  # seconds: a case slower than this is a hang (a normal one takes milliseconds)


def valid_file(path: Path, compression: str) -> bytes:
    rng = np.random.default_rng(0)
    n = 300
    table = pa.table({"region": pa.array([f"R{i % 30:02d}" for i in range(n)]).dictionary_encode(),
                      "year": pa.array([2000 + i // 30 for i in range(n)], pa.int64()),
                      "temp": rng.normal(20, 5, n), "rainfall": rng.normal(90, 20, n).astype(np.float32),
                      "humidity": rng.integers(0, 100, n)})
    pq.write_table(table, path, row_group_size=100, compression=compression, write_statistics=True)
    return path.read_bytes()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random damages: bit flips, overwritten/zeroed ranges, truncation, insertion."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["flip", "flip", "overwrite", "zero", "truncate", "insert", "footer"])
        at = rng.randrange(len(data))
        if kind == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif kind == "overwrite":
            width = rng.randint(1, 16)
            data[at:at + width] = bytes(rng.randrange(256) for _ in range(width))
        elif kind == "zero":
            width = rng.randint(1, 64)
            data[at:at + width] = bytes(min(width, len(data) - at))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:  # the footer and its length: where the reader decides how much to read and allocate
            at = max(0, len(data) - rng.randint(1, 200))
            data[at] = rng.randrange(256)
        if not data:
            break
    return bytes(data)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    originals = [valid_file(base / f"orig-{c}.parquet", c) for c in ("snappy", "zstd", "none")]
    yields = base / "yields.parquet"
    pq.write_table(pa.table({"region": [f"R{i % 30:02d}" for i in range(300)],
                             "year": pa.array([2000 + i // 30 for i in range(300)], pa.int64()),
                             "apples": np.arange(300, dtype=np.float64)}), yields)
    return base, originals, str(yields)


def check(weather_path: str, yields_path: str, work: Path) -> str:
    """The input checks and the join of a run, in-process; 'ok' or 'input-error'."""
    try:
        weather, yields = open_table(weather_path, "weather"), open_table(yields_path, "yields")
        columns = resolve_columns(weather, yields, features=["temp", "rainfall", "humidity"], targets=["apples"],
                                  keys=None)
        check_values(weather, columns.keys, columns.features)
        con = connect(str(work), 256 * 2**20)
        try:
            join_tables(con, weather, yields, columns, str(work / "joined.arrow"), max_drop_fraction=1.0)
        finally:
            con.close()
    except InputError:
        return "input-error"
    return "ok"


def test_mutated_parquet_inputs_fail_only_with_input_errors(corpus):
    base, originals, yields = corpus
    rng = random.Random(SEED)
    outcomes, slowest = {"ok": 0, "input-error": 0}, 0.0
    for case in range(CASES):
        original = originals[case % len(originals)]
        mutant = base / "w" / "part-0.parquet"
        mutant.parent.mkdir(exist_ok=True)
        mutant.write_bytes(mutate(original, rng))
        started = time.monotonic()
        try:
            outcome = check(str(mutant.parent), yields, base)
        except Exception as exc:  # the bug this test exists to find: say how to replay it
            pytest.fail(f"case {case} (LINREG_FUZZ_SEED={SEED}): {type(exc).__name__}: {exc}")
        slowest = max(slowest, time.monotonic() - started)
        assert slowest < HANG, f"case {case} (LINREG_FUZZ_SEED={SEED}) took {slowest:.0f} s"
        outcomes[outcome] += 1
    assert outcomes["input-error"] > CASES // 4, outcomes  # the mutations do damage...
    assert outcomes["ok"] > 0, outcomes  # ...and some land where they change only values
