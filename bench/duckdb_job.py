"""The peer job in DuckDB SQL: join weather and yields, fit every target by the normal equations computed as
SQL sums, and write every joined row's predictions to Parquet. `bench.command_bench` times it as a whole process.

    python -m bench.duckdb_job --weather D/weather --yields D/yields --output OUT --memory-limit 1GB
    python -m bench.duckdb_job ... --no-predictions       # the sums and the solve only

One pass joins the tables and sums x_i * x_j, x_i * y and the count (x with the intercept column 1), in
float64; numpy solves each (p + 1) x (p + 1) system; a second pass joins again and COPYs keys, actual and
predicted values per target to OUT/predictions.parquet. Prints the coefficients (features..., intercept)
per target as JSON on its last line and writes them to OUT/coefficients.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

KEYS = ["region", "year"]
FEATURES = ["temp", "rainfall", "humidity"]
TARGETS = ["apples", "oranges"]


def sums_sql(source: str, features: list[str], targets: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """SELECT of the normal equations' sums over `source` (a FROM clause giving columns x and y), and the
    (left, right) pair of each selected sum in order ('1' is the intercept column)."""
    terms = features + ["1"]
    pairs = [(a, b) for i, a in enumerate(terms) for b in terms[i:]] + [(a, t) for t in targets for a in terms]

    def product(a: str, b: str) -> str:
        factors = [f"CAST({c} AS DOUBLE)" for c in (a, b) if c != "1"]
        return "sum(" + " * ".join(factors) + ")" if factors else "CAST(count(*) AS DOUBLE)"

    return f"SELECT {', '.join(product(a, b) for a, b in pairs)} FROM {source}", pairs


def solve(row: tuple, pairs: list[tuple[str, str]], features: list[str], targets: list[str]) -> dict[str, list[float]]:
    """{target: [coefficient per feature..., intercept]} from the sums of `sums_sql`."""
    import numpy as np

    terms = features + ["1"]
    index = {name: i for i, name in enumerate(terms)}
    gram = np.zeros((len(terms), len(terms)))
    rhs = np.zeros((len(terms), len(targets)))
    for (a, b), value in zip(pairs, row):
        if b in index:
            gram[index[a], index[b]] = gram[index[b], index[a]] = value
        else:
            rhs[index[a], targets.index(b)] = value
    solution = np.linalg.solve(gram, rhs)  # (p + 1, k)
    return {t: [float(v) for v in solution[:, j]] for j, t in enumerate(targets)}


def joined_sql(weather: str, yields: str, keys: list[str], features: list[str], targets: list[str]) -> str:
    """The inner join of both tables on `keys`: keys, features, targets."""
    columns = ", ".join([f"w.{k}" for k in keys] + [f"w.{f}" for f in features] + [f"y.{t}" for t in targets])
    return (f"(SELECT {columns} FROM read_parquet('{_files(weather)}') w "
            f"JOIN read_parquet('{_files(yields)}') y USING ({', '.join(keys)}))")


def _files(path: str) -> str:
    return f"{path}/**/*.parquet" if os.path.isdir(path) else path


def run(weather: str, yields: str, output: str, *, memory_limit: str = "1GB", threads: int | None = None,
        predictions: bool = True, keys=KEYS, features=FEATURES, targets=TARGETS) -> dict[str, list[float]]:
    import duckdb

    config = {"memory_limit": memory_limit, **({"threads": threads} if threads else {})}
    con = duckdb.connect(config=config)
    joined = joined_sql(weather, yields, keys, features, targets)
    select, pairs = sums_sql(joined, features, targets)
    coefficients = solve(con.execute(select).fetchone(), pairs, features, targets)
    os.makedirs(output, exist_ok=True)
    if predictions:
        def predicted(t: str) -> str:
            c = coefficients[t]
            return " + ".join([f"{c[i]!r} * CAST({f} AS DOUBLE)" for i, f in enumerate(features)] + [repr(c[-1])])

        columns = ", ".join(keys + [f"CAST({t} AS DOUBLE) AS {t}, {predicted(t)} AS {t}_pred" for t in targets])
        target = os.path.join(output, "predictions.parquet")
        con.execute(f"COPY (SELECT {columns} FROM {joined}) TO '{target}' (FORMAT parquet)")
    with open(os.path.join(output, "coefficients.json"), "w") as out:
        json.dump(coefficients, out)
    return coefficients


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weather", required=True)
    parser.add_argument("--yields", required=True)
    parser.add_argument("--output", required=True, help="directory for predictions.parquet and coefficients.json")
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--threads", type=int, help="DuckDB threads (default: DuckDB's, one per core)")
    parser.add_argument("--no-predictions", action="store_true", help="fit only: no predictions written")
    args = parser.parse_args(argv)
    coefficients = run(args.weather, args.yields, args.output, memory_limit=args.memory_limit,
                       threads=args.threads, predictions=not args.no_predictions)
    print(json.dumps(coefficients))


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
