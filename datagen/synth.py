"""Synthetic weather + crop-yield datasets of any size, with a known linear ground truth.

    python -m datagen.synth --rows 10000000 --regions 100000 --out /tmp/synth
        [--start-year 1990] [--files F] [--seed 0] [--features temp,rainfall,humidity]
        [--targets apples,oranges] [--noise 1.0] [--unmatched-fraction 0.02]
        [--days-per-year 1] [--partition-by-region] [--chunk-rows 1000000] [--overwrite]

or `generate(out_dir, rows=..., regions=...)`, which returns the ground truth also written to truth.json.

Layout: DIR/weather/part-NNNNN.parquet and DIR/yields/part-NNNNN.parquet (F files each; file i of both
tables holds the same contiguous range of regions), and DIR/truth.json. With --partition-by-region the
files go to DIR/<table>/bucket=NN/part-NNNNN.parquet (hive style; bucket NN = file NN's region range).

Columns: region string "R000123" (zero-padded, width max(6, digits of R-1)), year int64, and for
days-per-year D > 1 a `day` int16 column 1..D in weather; features and targets float64.
Yields are sorted by (region, year); weather is shuffled within each block of rows.

Rows: N yield rows over R regions (N >= R); region r has consecutive years start_year.. and
ceil(N/R) years, or one fewer for the last regions, so the rows total exactly N.

Ground truth, per region-year:  target = coef @ x + intercept + Normal(0, noise_sd**2)
where x is the weather row (for D > 1, the MEAN over that region-year's D daily rows: daily values are
the yearly value plus deviations that average to exactly zero, or, for rainfall and other extra
features, the yearly value times positive weights that average to exactly one). Yearly values lie in
temp degrees F 50-100, rainfall mm 30-140, humidity % 20-90 (daily values may stray further). The
defaults resemble the seed notebook:

    apples  = -0.40 temp + 0.85 rainfall + 0.70 humidity + 2.0
    oranges = -0.25 temp + 0.80 rainfall + 0.90 humidity - 5.0      noise_sd = 1.0

Other feature/target pairs get coefficients drawn from (seed, target name, feature name), scaled so each
feature moves the target by ~10 units per standard deviation. Intercepts keep each target's mean level:
apples ~83 and oranges ~94 as in the default model (so other feature sets shift their intercepts), other
targets a level in 50-150 drawn from (seed, target name). Extra features get a positive, region-correlated
distribution with a scale drawn from (seed, feature name).

Unmatched rows (--unmatched-fraction f; CLI default 0.02, Python default 0.0): each yield row loses its
weather row with probability f, and independently with probability f gets an extra weather row for a year
after the region's last yield year. truth.json counts both under "unmatched" (weather in rows: D per
region-year), plus "matched_rows" (the inner join's size at region-year grain) and "weather_rows".

Determinism: the data depend only on the arguments that define them (seed, rows, regions, start year,
features, targets, noise, unmatched fraction, days per year); --files only decides which file a row lands
in, and --chunk-rows only the row groups. Random numbers come
from numpy SeedSequence(seed, spawn_key=(stream, block, name)), where a block is a fixed range of 65536
region-year rows and region climates come in fixed blocks of regions. Memory is bounded by the chunk size
(rows buffered per row group) plus one block, whatever N is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from linreg.errors import EXIT_OK, InputError

DEFAULT_FEATURES = ("temp", "rainfall", "humidity")
DEFAULT_TARGETS = ("apples", "oranges")
DEFAULT_NOISE_SD = 1.0
DEFAULT_COEF = {
    "apples": {"temp": -0.40, "rainfall": 0.85, "humidity": 0.70},
    "oranges": {"temp": -0.25, "rainfall": 0.80, "humidity": 0.90},
}
DEFAULT_INTERCEPT = {"apples": 2.0, "oranges": -5.0}

BLOCK_ROWS = 1 << 16          # region-year rows per random block (fixed: part of the data's definition)
CLIMATE_BLOCK = 1 << 16       # regions per block of climate offsets
ROWS_PER_FILE = 1_000_000     # default file count: one per ~1M yield rows, at least 2
DEFAULT_CHUNK_ROWS = 1_000_000
KEY_COLUMNS = ("region", "year", "day")

# Random streams (first element of every spawn key).
_PARAMS, _COEF, _INTERCEPT, _CLIMATE, _YEARLY, _EXTRA, _NOISE, _UNMATCHED, _DAILY, _SHUFFLE = range(10)


@dataclass(frozen=True)
class FeatureSpec:
    """x = clip(mean + region_sd*z_region + year_sd*z_year, lo, hi); daily rows spread by daily_sd."""

    mean: float
    region_sd: float
    year_sd: float
    lo: float
    hi: float
    daily: str          # "add": x + zero-mean deviations; "mul": x * weights with mean one
    daily_sd: float     # for "add": sd of deviations; for "mul": coefficient of variation of weights

    @property
    def sd(self) -> float:
        return math.hypot(self.region_sd, self.year_sd)


KNOWN_FEATURES = {
    "temp": FeatureSpec(75.0, 7.0, 4.0, 50.0, 100.0, "add", 8.0),
    "rainfall": FeatureSpec(85.0, 18.0, 10.0, 30.0, 140.0, "mul", 0.7),
    "humidity": FeatureSpec(55.0, 12.0, 6.0, 20.0, 90.0, "add", 5.0),
}


def _key(name: str) -> int:
    return zlib.crc32(name.encode())


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def feature_spec(name: str, seed: int) -> FeatureSpec:
    if name in KNOWN_FEATURES:
        return KNOWN_FEATURES[name]
    rng = _rng(seed, _PARAMS, _key(name))
    scale = 10 ** rng.uniform(-1, 3)
    return FeatureSpec(scale * rng.uniform(4, 8), scale, 0.5 * scale, 0.0, math.inf, "mul", 0.35)


def ground_truth(features, targets, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(coef k x p, intercept k) in original units; defaults from DEFAULT_COEF, the rest from the seed."""
    specs = [feature_spec(f, seed) for f in features]
    coef = np.empty((len(targets), len(features)))
    intercept = np.empty(len(targets))
    for i, target in enumerate(targets):
        for j, (feature, spec) in enumerate(zip(features, specs)):
            known = DEFAULT_COEF.get(target, {}).get(feature)
            drawn = _rng(seed, _COEF, _key(target), _key(feature)).standard_normal() * 10 / spec.sd
            coef[i, j] = known if known is not None else float(f"{drawn:.4g}")
        intercept[i] = round(_level(target, seed) - sum(c * s.mean for c, s in zip(coef[i], specs)), 3)
    return coef, intercept


def _level(target: str, seed: int) -> float:
    """Mean of a target: that of the default model for the default targets, else drawn from the seed."""
    if target in DEFAULT_INTERCEPT:
        return DEFAULT_INTERCEPT[target] + sum(c * KNOWN_FEATURES[f].mean for f, c in DEFAULT_COEF[target].items())
    return _rng(seed, _INTERCEPT, _key(target)).uniform(50, 150)


@dataclass(frozen=True)
class Layout:
    """Where each of the N region-year rows goes: region r has `years` rows if r < full, else years - 1."""

    rows: int
    regions: int
    files: int

    @property
    def years(self) -> int:
        return -(-self.rows // self.regions)

    @property
    def full(self) -> int:
        return self.rows - self.regions * (self.years - 1)

    def locate(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global row numbers -> (region, year index, years of that region)."""
        y, split = self.years, self.full * self.years
        rest = np.maximum(g - split, 0)
        short = max(y - 1, 1)
        region = np.where(g < split, g // y, self.full + rest // short)
        year_index = np.where(g < split, g % y, rest % short)
        return region, year_index, np.where(region < self.full, y, y - 1)

    def file_of(self, region: np.ndarray) -> np.ndarray:
        starts = np.arange(self.files, dtype=np.int64) * self.regions // self.files
        return np.searchsorted(starts, region, side="right") - 1


@lru_cache(maxsize=64)
def _climate_block(seed: int, name_key: int, block: int) -> np.ndarray:
    return _rng(seed, _CLIMATE, block, name_key).standard_normal(CLIMATE_BLOCK)


def _climate(seed: int, name: str, region: np.ndarray) -> np.ndarray:
    """Standard-normal climate offset of each region (depends only on the seed, name and region)."""
    first, last = int(region.min()) // CLIMATE_BLOCK, int(region.max()) // CLIMATE_BLOCK
    z = np.concatenate([_climate_block(seed, _key(name), b) for b in range(first, last + 1)])
    return z[region - first * CLIMATE_BLOCK]


def _yearly(spec: FeatureSpec, climate: np.ndarray, z_year: np.ndarray) -> np.ndarray:
    return np.clip(spec.mean + spec.region_sd * climate + spec.year_sd * z_year, spec.lo, spec.hi)


def region_names(region: np.ndarray, width: int) -> pa.StringArray:
    """'R' + zero-padded region numbers, built as one fixed-width byte buffer."""
    chars = np.empty((len(region), width + 1), dtype=np.uint8)
    chars[:, 0] = ord("R")
    rest = region.astype(np.int64)
    for col in range(width, 0, -1):
        chars[:, col] = 48 + rest % 10
        rest //= 10
    offsets = np.arange(len(region) + 1, dtype=np.int32) * (width + 1)
    return pa.StringArray.from_buffers(len(region), pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def _arrow(values: np.ndarray) -> pa.Array:
    """Zero-copy numpy -> Arrow (pa.array would import pandas just to check its argument)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def region_width(regions: int) -> int:
    return max(6, len(str(regions - 1)))


@dataclass(frozen=True)
class Spec:
    """Everything that defines the data (not how it is written)."""

    layout: Layout
    start_year: int
    seed: int
    features: tuple[str, ...]
    targets: tuple[str, ...]
    noise_sd: float
    unmatched_fraction: float
    days_per_year: int
    coef: np.ndarray
    intercept: np.ndarray

    def weather_schema(self) -> pa.Schema:
        day = [("day", pa.int16())] if self.days_per_year > 1 else []
        return pa.schema([("region", pa.string()), ("year", pa.int64()), *day]
                         + [(f, pa.float64()) for f in self.features])

    def yields_schema(self) -> pa.Schema:
        return pa.schema([("region", pa.string()), ("year", pa.int64())] + [(t, pa.float64()) for t in self.targets])


@dataclass
class Piece:
    kind: str           # "weather" or "yields"
    file: int
    table: pa.Table


def _by_file(kind: str, layout: Layout, region: np.ndarray, columns: dict, schema: pa.Schema, width: int):
    """Split rows into one Piece per file, keeping their order."""
    files = layout.file_of(region)
    if len(files) == 0:
        return
    if files[0] == files[-1] and (files == files[0]).all():
        parts = [np.arange(len(files))]
    else:
        order = np.argsort(files, kind="stable")
        parts = np.split(order, np.flatnonzero(np.diff(files[order])) + 1)
    for part in parts:
        arrays = [region_names(region[part], width)] + [_arrow(columns[name][part]) for name in schema.names[1:]]
        yield Piece(kind, int(files[part[0]]), pa.Table.from_arrays(arrays, schema=schema))


def generate_block(spec: Spec, block: int, counts: dict):
    """Yield the Pieces (yields first, then weather, in file order) of one block of region-year rows."""
    layout, seed, width = spec.layout, spec.seed, region_width(spec.layout.regions)
    g = np.arange(block * BLOCK_ROWS, min((block + 1) * BLOCK_ROWS, layout.rows), dtype=np.int64)
    region, year_index, years = layout.locate(g)
    specs = [feature_spec(f, seed) for f in spec.features]

    x = np.empty((len(g), len(specs)))
    extra_x = np.empty_like(x)
    for j, (name, fs) in enumerate(zip(spec.features, specs)):
        climate = _climate(seed, name, region)
        x[:, j] = _yearly(fs, climate, _rng(seed, _YEARLY, block, _key(name)).standard_normal(len(g)))
        extra_x[:, j] = _yearly(fs, climate, _rng(seed, _EXTRA, block, _key(name)).standard_normal(len(g)))

    y = x @ spec.coef.T + spec.intercept
    for i, name in enumerate(spec.targets):
        y[:, i] += spec.noise_sd * _rng(seed, _NOISE, block, _key(name)).standard_normal(len(g))
    year = spec.start_year + year_index
    yield from _by_file("yields", layout, region, {"year": year, **{t: y[:, i] for i, t in enumerate(spec.targets)}},
                        spec.yields_schema(), width)

    u = _rng(seed, _UNMATCHED, block).random((2, len(g)))
    keep, extra = u[0] >= spec.unmatched_fraction, u[1] < spec.unmatched_fraction
    counts["yields"] += int((~keep).sum())
    counts["weather"] += int(extra.sum()) * spec.days_per_year
    # Weather region-years in row order: each kept row, then its extra row (year shifted past the region's last).
    order = np.argsort(np.concatenate([2 * np.flatnonzero(keep), 2 * np.flatnonzero(extra) + 1]), kind="stable")
    w_region = np.concatenate([region[keep], region[extra]])[order]
    w_year = np.concatenate([year[keep], (year + years)[extra]])[order]
    w_x = np.concatenate([x[keep], extra_x[extra]])[order]
    counts["weather_rows"] += len(w_region) * spec.days_per_year
    yield from _weather_pieces(spec, block, specs, w_region, w_year, w_x, width)


def _weather_pieces(spec: Spec, block: int, specs, region, year, x, width):
    """Daily expansion (if any) and shuffling, in sub-pieces of at most ~BLOCK_ROWS weather rows."""
    days = spec.days_per_year
    daily_rngs = [_rng(spec.seed, _DAILY, block, _key(name)) for name in spec.features]
    shuffle = _rng(spec.seed, _SHUFFLE, block)
    step = max(1, BLOCK_ROWS // days)
    schema = spec.weather_schema()
    for start in range(0, len(region), step):
        part = slice(start, start + step)
        n = len(region[part])
        columns = {"year": np.repeat(year[part], days)}
        if days > 1:
            columns["day"] = np.tile(np.arange(1, days + 1, dtype=np.int16), n)
        for name, fs, rng, values in zip(spec.features, specs, daily_rngs, x[part].T):
            columns[name] = _daily(fs, rng, values, days).ravel()
        perm = shuffle.permutation(n * days)
        columns = {name: values[perm] for name, values in columns.items()}
        yield from _by_file("weather", spec.layout, np.repeat(region[part], days)[perm], columns, schema, width)


def _daily(fs: FeatureSpec, rng: np.random.Generator, yearly: np.ndarray, days: int) -> np.ndarray:
    """(n, days) values whose row means equal `yearly` (up to rounding)."""
    if days == 1:
        return yearly[:, None]
    if fs.daily == "add":
        dev = fs.daily_sd * rng.standard_normal((len(yearly), days))
        return yearly[:, None] + (dev - dev.mean(axis=1, keepdims=True))
    shape = 1 / fs.daily_sd ** 2
    weights = rng.gamma(shape, 1 / shape, (len(yearly), days))
    return yearly[:, None] * (weights / weights.mean(axis=1, keepdims=True))


class Sink:
    """Sequential Parquet writers, one file at a time, buffering up to chunk_rows rows per row group."""

    def __init__(self, paths: list[Path], schema: pa.Schema, chunk_rows: int):
        self.paths, self.schema, self.chunk_rows = paths, schema, chunk_rows
        self.current, self.writer, self.buffer, self.buffered = -1, None, [], 0

    def write(self, piece: Piece) -> None:
        assert piece.file >= self.current, "pieces must arrive in file order"
        while self.current < piece.file:
            self._next_file()
        if self.buffered + piece.table.num_rows > self.chunk_rows:
            self._flush()
        self.buffer.append(piece.table)
        self.buffered += piece.table.num_rows
        if self.buffered >= self.chunk_rows:
            self._flush()

    def close(self) -> None:
        while self.current < len(self.paths) - 1:
            self._next_file()
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _next_file(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
        self.current += 1
        path = self.paths[self.current]
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = [name for name in KEY_COLUMNS if name in self.schema.names]
        self.writer = pq.ParquetWriter(path, self.schema, compression="snappy", use_dictionary=keys)

    def _flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.concat_tables(self.buffer), row_group_size=self.chunk_rows)
            self.buffer, self.buffered = [], 0


def _paths(root: Path, table: str, files: int, partition: bool) -> list[Path]:
    digits = max(2, len(str(files - 1)))
    return [root / table / (f"bucket={i:0{digits}d}" if partition else "") / f"part-{i:05d}.parquet"
            for i in range(files)]


def _names(value, what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",")) if isinstance(value, str) else tuple(value)
    if not names or any(not n.isidentifier() for n in names) or len(set(names)) != len(names):
        raise InputError(f"The {what} must be distinct identifiers separated by commas, got {value!r}.")
    if set(names) & set(KEY_COLUMNS):
        raise InputError(f"The {what} may not be named {', '.join(KEY_COLUMNS)}.")
    return names


def _check(rows, regions, files, noise_sd, unmatched_fraction, days_per_year, chunk_rows, seed) -> None:
    problems = []
    if regions < 1 or rows < regions:
        problems.append(f"need rows >= regions >= 1 (got rows={rows}, regions={regions})")
    if files is not None and not 1 <= files <= regions:
        problems.append(f"files must be between 1 and regions={regions} (each file holds whole regions), got {files}")
    if noise_sd < 0:
        problems.append(f"noise must be >= 0, got {noise_sd}")
    if not 0 <= unmatched_fraction < 0.5:
        problems.append(f"unmatched fraction must be in [0, 0.5), got {unmatched_fraction}")
    if not 1 <= days_per_year <= 366:
        problems.append(f"days per year must be in 1..366, got {days_per_year}")
    if chunk_rows < 1:
        problems.append(f"chunk rows must be >= 1, got {chunk_rows}")
    if seed < 0:
        problems.append(f"seed must be >= 0, got {seed}")
    if problems:
        raise InputError("Bad synth arguments: " + "; ".join(problems) + ".")


def _prepare(out: Path, overwrite: bool) -> None:
    existing = [out / name for name in ("weather", "yields", "truth.json") if (out / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{out} already holds {', '.join(p.name for p in existing)}; "
                         "pass overwrite=True (--overwrite) to replace them.")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def generate(out_dir, *, rows: int, regions: int, start_year: int = 1990, files: int | None = None,
             seed: int = 0, features=DEFAULT_FEATURES, targets=DEFAULT_TARGETS, noise_sd: float = DEFAULT_NOISE_SD,
             unmatched_fraction: float = 0.0, days_per_year: int = 1, partition_by_region: bool = False,
             chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False) -> dict:
    """Write DIR/weather/, DIR/yields/ and DIR/truth.json; return the ground truth (the truth.json content)."""
    features, targets = _names(features, "features"), _names(targets, "targets")
    if set(features) & set(targets):
        raise InputError(f"Features and targets share names: {sorted(set(features) & set(targets))}.")
    _check(rows, regions, files, noise_sd, unmatched_fraction, days_per_year, chunk_rows, seed)
    files = files or min(regions, max(2, round(rows / ROWS_PER_FILE)))
    out = Path(out_dir)
    _prepare(out, overwrite)

    coef, intercept = ground_truth(features, targets, seed)
    spec = Spec(Layout(rows, regions, files), start_year, seed, features, targets, noise_sd,
                unmatched_fraction, days_per_year, coef, intercept)
    counts = {"yields": 0, "weather": 0, "weather_rows": 0}
    sinks = {name: Sink(_paths(out, name, files, partition_by_region), schema, chunk_rows)
             for name, schema in (("yields", spec.yields_schema()), ("weather", spec.weather_schema()))}
    for block in range(-(-rows // BLOCK_ROWS)):
        for piece in generate_block(spec, block, counts):
            sinks[piece.kind].write(piece)
    for sink in sinks.values():
        sink.close()

    truth = _truth(spec, counts, partition_by_region)
    tmp = out / "truth.json.tmp"
    tmp.write_text(json.dumps(truth, indent=2) + "\n")
    os.replace(tmp, out / "truth.json")
    return truth


def _truth(spec: Spec, counts: dict, partition_by_region: bool) -> dict:
    layout = spec.layout
    return {
        "features": list(spec.features),
        "targets": list(spec.targets),
        "coef": spec.coef.tolist(),
        "intercept": spec.intercept.tolist(),
        "noise_sd": spec.noise_sd,
        "rows": layout.rows,
        "regions": layout.regions,
        "seed": spec.seed,
        "model": "target = coef @ x + intercept + Normal(0, noise_sd^2); x = the region-year's weather "
                 "(the mean of its daily rows when days_per_year > 1)",
        "start_year": spec.start_year,
        "years_per_region": layout.years,
        "regions_with_fewer_years": layout.regions - layout.full,
        "days_per_year": spec.days_per_year,
        "files": layout.files,
        "partition_by_region": partition_by_region,
        "unmatched_fraction": spec.unmatched_fraction,
        "unmatched": {"yields": counts["yields"], "weather": counts["weather"]},
        "matched_rows": layout.rows - counts["yields"],
        "weather_rows": counts["weather_rows"],
        "column_types": {"region": "string", "year": "int64", "day": "int16 (only when days_per_year > 1)",
                         "features": "float64", "targets": "float64"},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m datagen.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, required=True, help="yield rows (region-years)")
    p.add_argument("--regions", type=int, required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--start-year", type=int, default=1990)
    p.add_argument("--files", type=int, default=None, help="files per table (default: one per ~1M rows, at least 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", default=",".join(DEFAULT_FEATURES))
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    p.add_argument("--noise", type=float, default=DEFAULT_NOISE_SD, help="sd of the target noise")
    p.add_argument("--unmatched-fraction", type=float, default=0.02)
    p.add_argument("--days-per-year", type=int, default=1)
    p.add_argument("--partition-by-region", action="store_true")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per row group / write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    args = p.parse_args(argv)
    started = time.perf_counter()
    try:
        truth = generate(args.out, rows=args.rows, regions=args.regions, start_year=args.start_year,
                         files=args.files, seed=args.seed, features=args.features, targets=args.targets,
                         noise_sd=args.noise, unmatched_fraction=args.unmatched_fraction,
                         days_per_year=args.days_per_year, partition_by_region=args.partition_by_region,
                         chunk_rows=args.chunk_rows, overwrite=args.overwrite)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    seconds = time.perf_counter() - started
    print(f"synth: {truth['rows']:,} yield rows + {truth['weather_rows']:,} weather rows, "
          f"{truth['files']} files per table -> {args.out} in {seconds:.1f} s "
          f"({truth['rows'] / seconds:,.0f} yield rows/s)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
