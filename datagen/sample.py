"""The seed notebook's 15 observations as a tiny weather + yields dataset (data/sample/).

    python -m datagen.sample --out data/sample

writes weather.parquet (region, year, temp, rainfall, humidity) and yields.parquet (region, year, apples,
oranges): one made-up region per observation, year 2020 (int64), values float64. Weather rows are stored
in reverse order so that only a join on (region, year), not the row position, pairs them with yields.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REGIONS = ["Ashford", "Brookvale", "Cedarton", "Dunmore", "Elmhurst", "Fairhaven", "Glenrock", "Hollowmere",
           "Ironbridge", "Juniper Falls", "Kingsmead", "Larkspur", "Millbrook", "Northwold", "Oakridge"]
YEAR = 2020
FEATURES = ["temp", "rainfall", "humidity"]
TARGETS = ["apples", "oranges"]
INPUTS = np.array([[73, 67, 43], [91, 88, 64], [87, 134, 58], [102, 43, 37], [69, 96, 70],
                   [74, 66, 43], [91, 87, 65], [88, 134, 59], [101, 44, 37], [68, 96, 71],
                   [73, 66, 44], [92, 87, 64], [87, 135, 57], [103, 43, 36], [68, 97, 70]], dtype=np.float64)
OUTPUTS = np.array([[56, 70], [81, 101], [119, 133], [22, 37], [103, 119],
                    [57, 69], [80, 102], [118, 132], [21, 38], [104, 118],
                    [57, 69], [82, 100], [118, 134], [20, 38], [102, 120]], dtype=np.float64)


def _table(values: np.ndarray, names: list[str], order: np.ndarray) -> pa.Table:
    columns = {"region": pa.array([REGIONS[i] for i in order], pa.string()),
               "year": pa.array(np.full(len(order), YEAR, dtype=np.int64))}
    columns.update({name: pa.array(values[order, j]) for j, name in enumerate(names)})
    return pa.table(columns)


def write_sample(out_dir) -> dict[str, str]:
    """Write out_dir/weather.parquet and out_dir/yields.parquet; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = np.arange(len(REGIONS))
    paths = {"weather": str(out / "weather.parquet"), "yields": str(out / "yields.parquet")}
    pq.write_table(_table(INPUTS, FEATURES, rows[::-1]), paths["weather"], compression="snappy")
    pq.write_table(_table(OUTPUTS, TARGETS, rows), paths["yields"], compression="snappy")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datagen.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/sample", help="output directory (default data/sample)")
    args = parser.parse_args(argv)
    paths = write_sample(args.out)
    print(f"sample: wrote {paths['weather']} and {paths['yields']} ({len(REGIONS)} rows each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
