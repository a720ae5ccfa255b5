"""The peer a user would pick at scale: Spark MLlib's LinearRegression (normal solver, local[2]) on the same
files, end to end (read, join, fit both targets), against our exact pipeline end to end in the same run.

    pip install pyspark          # not a project dependency; needs Java 17 (on our machines)
    python -m bench.spark_bench --rows 10000000

Spark's session start is reported separately. Prints seconds and the Spark / ours ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.pipeline_bench import FEATURES, KEYS, TARGETS, ensure_data, run_child


def spark_seconds(data: Path, driver_memory: str) -> tuple[float, float, dict]:
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression
    from pyspark.sql import SparkSession

    start = time.perf_counter()
    spark = (SparkSession.builder.master("local[2]").config("spark.driver.memory", driver_memory)
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "8").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    session = time.perf_counter() - start
    start = time.perf_counter()
    weather = spark.read.parquet(str(data / "weather")).select(*KEYS, *FEATURES)
    yields = spark.read.parquet(str(data / "yields")).select(*KEYS, *TARGETS)
    joined = VectorAssembler(inputCols=FEATURES, outputCol="features").transform(weather.join(yields, KEYS))
    joined = joined.cache()
    coefficients = {}
    for target in TARGETS:
        model = LinearRegression(featuresCol="features", labelCol=target, solver="normal").fit(joined)
        coefficients[target] = list(model.coefficients) + [model.intercept]
    elapsed = time.perf_counter() - start
    spark.stop()
    return session, elapsed, coefficients


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--data-dir", default="/tmp/linreg-bench")
    parser.add_argument("--driver-memory", default="12g")
    parser.add_argument("--memory-budget", default="2GB")
    args = parser.parse_args(argv)
    data, _ = ensure_data(args.rows, Path(args.data_dir))
    child = run_child(data, args.memory_budget, "exact", None)
    ours, our_weights = child["timings"]["end to end"], child["weights"]
    session, spark, coefficients = spark_seconds(data, args.driver_memory)
    print(f"rows: {args.rows:,}")
    print(f"ours, exact, end to end (read, validate, join, fit, evaluate, write): {ours:8.2f} s")
    print(f"Spark MLlib normal solver, read + join + fit 2 targets:             {spark:8.2f} s "
          f"(+ {session:.1f} s session start)")
    print(f"Spark / ours: {spark / ours:.2f}x")
    print("Spark coefficients (features..., intercept):", {t: [round(c, 6) for c in v] for t, v in coefficients.items()})
    print("ours (features..., intercept):              ", {t: [round(c, 6) for c in v] for t, v in our_weights.items()})
    gap = max(abs(a - b) / max(abs(b), 1e-12) for t in TARGETS for a, b in zip(coefficients[t], our_weights[t]))
    print(f"largest relative difference of a coefficient: {gap:.2e} (note: our fit excludes the holdout regions)")


if __name__ == "__main__":
    main()
