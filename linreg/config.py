"""The one typed configuration of a training run.

`TrainConfig` is defined once: the command line (`python -m flows.train --help`) is generated from its
fields, the Prefect flow takes it as its parameter and `deployment.yaml` uses the same keys. Every field
has a default and a one-line reason. Unknown keys are an error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import secrets
import types
import typing
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from linreg.errors import EXIT_BAD_INPUT, EXIT_CONFLICT, EXIT_FAILURE, EXIT_INTERRUPTED, InputError
from linreg.features.expression import split_top_level

# Not nan, inf, infinity, true, false or epoch (any case): Polars' hive partitioning reads some as numbers or
# booleans, DuckDB's as dates and Spark's as doubles, so run_id would not be text in every reader.
RUN_ID_PATTERN = re.compile(r"^(?!(?i:nan|inf|infinity|true|false|epoch)$)"
                            r"(?:[A-Za-z][A-Za-z0-9._-]*|\d{8}T\d{6}Z-[0-9a-f]{4,})$")


def check_run_id(run_id: str | None) -> str | None:
    """A run id (training or scoring) as given, or ValueError when a reader could take it for something else."""
    if run_id is not None and not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"{run_id!r} is not a valid run id: it must match [A-Za-z][A-Za-z0-9._-]* and not be "
                         "nan, inf, infinity, true, false or epoch (text that no reader mistakes for a number, "
                         "a boolean or a date)")
    return run_id


def decide_run_id(given: str | None, *, at: dt.datetime | None = None, token: str | None = None) -> str:
    """The id of a run: `given`, else a new one, the UTC time `at` (default: now) and a hex `token` (default:
    4 random hex digits), e.g. 20261123T021500Z-3f9a. The one place a run's id is decided."""
    if given:
        return check_run_id(given)
    at = (at or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    return at.strftime("%Y%m%dT%H%M%SZ") + "-" + (token or secrets.token_hex(2))


def launches_ranks(nproc_per_node, nnodes) -> bool:
    """Whether a run launches ranks with torchrun: ranks per machine given, or more than one machine."""
    return nproc_per_node is not None or int(nnodes) > 1


def argv_launches_ranks(argv: list[str]) -> bool:
    """`launches_ranks` of a flows.train command line, from its two flags alone (cheap: no validation; a
    value that is not a number counts as not launching, and the full parser then reports it)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--nproc-per-node")
    parser.add_argument("--nnodes", default="1")
    try:
        flags, _ = parser.parse_known_args(argv)
        return launches_ranks(flags.nproc_per_node, flags.nnodes)
    except (argparse.ArgumentError, ValueError):
        return False


def _cli(flag: str | None = None, *, negate: str | None = None, metavar: str | None = None,
         one_of: str | None = None) -> dict:
    """How `build_parser` offers a field: its flag, a negating flag, a metavar; fields with the same `one_of`
    form a group of which the command line takes exactly one."""
    return {"cli": {"flag": flag, "negate": negate, "metavar": metavar, "one_of": one_of}}


cli_option = _cli  # for configuration models defined elsewhere (flows/prune.py)


class TrainConfig(BaseModel):
    """Everything a training run needs. Paths may be local or URIs that pyarrow understands; a URI may carry
    credentials (`s3://KEY:SECRET@bucket/path`), which `linreg.redact` keeps out of everything recorded."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Inputs
    weather: str = Field("data/sample/weather.parquet",
                         description="Weather table: a Parquet file, a directory of files or a hive-partitioned dataset.")
    yields: str = Field("data/sample/yields.parquet",
                        description="Yields table, in any of the same forms as --weather.")
    features: list[str] = Field(["temp", "rainfall", "humidity"],
                                description="Features: numeric weather columns, or expressions over them, the "
                                "join keys other than the region and --aggregate names: \"temp, temp^2, "
                                "temp*rainfall, log(rainfall + 1), year - 2000\" (+ - * / ^, log exp sqrt abs "
                                "pow least greatest log10; see docs/features.md).",
                                json_schema_extra=_cli(metavar="EXPR,..."))
    targets: list[str] = Field(["apples", "oranges"],
                               description="Numeric target columns of the yields table.")
    join_keys: Optional[list[str]] = Field(None, description="Join keys, region first (default: region, plus year "
                                           "when both tables have it). The first key names the region used for "
                                           "holdout.", json_schema_extra=_cli("--keys"))
    time_column: str = Field("year", description="Column that --holdout-from-year compares against.")
    aggregate: Optional[str] = Field(None, description="Aggregate finer-grained weather (e.g. daily) to the "
                                     "keys before the join: mean|min|max|sum for every column the features use, "
                                     "per column as temp:max,rainfall:sum (others: mean), and named aggregate "
                                     "expressions the features may use: \"gdd=sum(greatest(least(temp, 29) - 10, "
                                     "0)), rain=sum(rainfall)\". Without it duplicate weather keys are an error.")
    max_drop_fraction: float = Field(0.5, ge=0, le=1, description="Fail when the join drops more than this "
                                     "share of either table's rows, instead of training on a sliver.")

    # Holdout split: whole regions, or later years
    holdout_regions: Optional[list[str]] = Field(None, description="Explicit holdout regions (overrides "
                                                 "--holdout-fraction).")
    holdout_fraction: float = Field(0.2, ge=0, lt=1, description="Share of regions held out, chosen "
                                    "deterministically from --seed; 0 trains on every row.")
    holdout_from_year: Optional[int] = Field(None, description="Time split: rows with time column >= this "
                                             "year are the holdout (overrides the region split).")

    # Training
    trainer: Literal["exact", "nn", "manual"] = Field("exact", description="exact: least squares (streaming "
                                                       "QR, float64); nn: nn.Linear + SGD; manual: the seed's "
                                                       "from-scratch gradient descent.")
    epochs: int = Field(1000, ge=1, description="Maximum epochs of the gradient trainers; they stop earlier "
                        "once the training loss stops improving (see --tol).")
    lr: Optional[float] = Field(None, gt=0, description="Learning rate (default: 1/L from the largest "
                                "eigenvalue of the features' second moments, as scikit-learn's SAG does).")
    batch_size: Optional[int] = Field(None, ge=1, description="Rows per step (default: all rows for manual, "
                                      "1024 for nn).")
    tol: float = Field(1e-5, ge=0, description="Convergence: an epoch that lowers the training loss by less "
                       "than tol (relative) does not count as progress; after --patience such epochs the "
                       "learning rate is divided by 5, and training stops after 4 such cuts. 0 runs every epoch.")
    patience: int = Field(5, ge=1, description="Epochs without progress before the learning rate is cut.")
    seed: int = Field(0, description="Seeds the holdout choice, initial weights and shuffling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where gradient trainers run; auto "
                                                   "picks cuda when available.")
    fit_intercept: bool = Field(True, description="Fit an intercept (--no-intercept fits through the origin).",
                                json_schema_extra=_cli(negate="--no-intercept"))
    standardize: bool = Field(True, description="Gradient trainers standardize features and targets; "
                              "weights are always written in original units.",
                              json_schema_extra=_cli(negate="--no-standardize"))
    weight_column: Optional[str] = Field(None, description="Column of the yields table holding precision weights "
                                         "(>= 0, as in R's lm(weights=) and statsmodels' WLS): weighted least "
                                         "squares for every trainer, weighted metrics.")
    l2: Union[float, list[float]] = Field(0.0, description="Ridge: minimize the (weighted) mean squared error plus l2 "
                                          "times the sum of squared coefficients of the standardized features "
                                          "(intercept unpenalized). With --cv-folds, a list (0,0.01,0.1,1): each "
                                          "value is cross-validated and the best one fits the model.",
                                          json_schema_extra=_cli(metavar="ALPHA[,ALPHA...]"))
    cv_folds: Optional[int] = Field(None, ge=2, description="Cross-validate over this many folds of the training "
                                    "regions (seeded, balanced by rows), from the exact trainer's one pass: the "
                                    "cv dataset, out-of-fold predictions, and the --l2 value with the lowest "
                                    "cross-validated MSE (docs/cross-validation.md).")
    rcond: float = Field(1e-13, gt=0, lt=1, description="A design whose standardized condition number exceeds "
                         "1/rcond is singular (see --singular).")
    singular: Literal["error", "min_norm"] = Field("error", description="On a singular design (collinear, "
                                                   "duplicated or constant features): error names the columns; "
                                                   "min_norm warns and returns the minimum-norm solution, "
                                                   "with null statistics for the aliased terms.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Level of the confidence intervals in the weights "
                              "(ci_low, ci_high).")

    # Runs
    skip_if_unchanged: bool = Field(False, description="Do not retrain when a committed run in --output has the "
                                    "same input fingerprint (file paths, sizes, modification times, schemas) and "
                                    "the same configuration (apart from --run-id and --output): reuse that run.")

    # Distributed (torchrun): several processes, GPUs and machines
    nproc_per_node: Optional[int] = Field(None, ge=1, description="Ranks per machine: python -m flows.train "
                                          "launches the job itself with torchrun (one per GPU on CUDA). "
                                          "Default: one process, no torch.distributed.")
    nnodes: int = Field(1, ge=1, description="Machines in the job; each runs the same command with its "
                        "--node-rank and the same --rdzv-endpoint.")
    node_rank: Optional[int] = Field(None, ge=0, description="This machine's index (0..nnodes-1); optional "
                                     "with the c10d rendezvous.")
    rdzv_endpoint: Optional[str] = Field(None, description="host:port of the c10d rendezvous (a machine of the "
                                         "job, usually node 0); default 127.0.0.1:29400 on one machine.")
    rdzv_id: Optional[str] = Field(None, description="Job id shared by the machines of one job (default: the "
                                   "run id). Without --run-id, the run id is derived from it, so restarts resume.")
    max_restarts: int = Field(0, ge=0, description="torchrun restarts every rank up to this many times after a "
                              "failure; the gradient trainers resume from their last snapshot.")
    snapshot_every: int = Field(10, ge=0, description="Gradient trainers snapshot weights, optimizer state, "
                                "epoch and RNG state every this many epochs (0: never).")
    resume: bool = Field(True, description="Resume from a snapshot of the same run id, configuration and inputs "
                         "(--no-resume starts over).", json_schema_extra=_cli(negate="--no-resume"))
    average_every: int = Field(64, ge=1, description="nn trainer with several ranks: each rank steps on its own "
                               "rows and the ranks' models are averaged, weighted by rows, every this many steps and "
                               "at the end of every epoch (local SGD: one collective per this many steps, not one per "
                               "step); training MSE within 1% of one process's (docs/scaling.md). 1: DDP's all-reduce "
                               "of every step's gradients, one process's updates exactly.")
    dist_timeout_seconds: float = Field(600.0, gt=0, description="A collective that waits longer than this for "
                                        "another rank (dead or hung) ends the job with an error.")

    # Resources
    memory_budget: str = Field("25%", description="Memory the run may use on a machine, shared by its ranks "
                               "(--nproc-per-node): bytes with a unit (512MB, 4GB) or a "
                               "share of this machine's RAM (25%). Half goes to DuckDB's join (at least 128MB; it spills to "
                               "disk beyond it); the joined rows stay in memory when they fit in the other half "
                               "(exact) or a quarter (gradient trainers), else go to a local file; gradient trainers "
                               "keep the training rows in memory while they fit in the other half, and stream them "
                               "from disk otherwise.")

    # Outputs
    output: str = Field("output", description="Root of the output datasets (weights, metrics, predictions).")
    run_id: Optional[str] = Field(None, description="Run id (default: UTC timestamp plus a random suffix). "
                                  "Rerunning an id replaces that run.")

    @field_validator("features", "targets")
    @classmethod
    def _non_empty_unique(cls, names: list[str]) -> list[str]:
        if not names or any(not n for n in names):
            raise ValueError("needs at least one non-empty column name")
        if len(set(names)) != len(names):
            raise ValueError(f"column names repeat: {names}")
        return names

    @field_validator("run_id")
    @classmethod
    def _run_id_text(cls, run_id: str | None) -> str | None:
        return check_run_id(run_id)

    @field_validator("l2")
    @classmethod
    def _l2_values(cls, l2: float | list[float]) -> float | list[float]:
        values = list(l2) if isinstance(l2, list) else [l2]
        if not values:
            raise ValueError("needs at least one value")
        if any(not (v >= 0 and v < float("inf")) for v in values):
            raise ValueError(f"values must be finite and >= 0, got {values}")
        if len(set(values)) != len(values):
            raise ValueError(f"values repeat: {values}")
        return float(values[0]) if len(values) == 1 else [float(v) for v in values]

    @property
    def l2_values(self) -> list[float]:
        """The --l2 values: one, or the list cross-validation chooses from."""
        return list(self.l2) if isinstance(self.l2, list) else [self.l2]

    @model_validator(mode="after")
    def _cross_validation(self) -> "TrainConfig":
        if isinstance(self.l2, list) and self.cv_folds is None:
            raise ValueError("--l2 with several values needs --cv-folds (each value is scored by cross-validation)")
        if self.cv_folds is not None and self.trainer != "exact":
            raise ValueError(f"--cv-folds needs --trainer exact: its one pass accumulates a factor per fold; the "
                             f"{self.trainer} trainer would train once per fold and value")
        return self

    @property
    def launches_ranks(self) -> bool:
        """Whether this run launches its ranks with torchrun (`launches_ranks`)."""
        return launches_ranks(self.nproc_per_node, self.nnodes)

    @field_validator("memory_budget")
    @classmethod
    def _budget_parses(cls, text: str) -> str:
        parse_bytes(text)
        return text

    def memory_budget_bytes(self) -> int:
        return parse_bytes(self.memory_budget)

    @model_validator(mode="after")
    def _keys_and_columns_disjoint(self) -> "TrainConfig":
        # a key may be a feature (a trend: `year`); linreg.inputs.schema refuses the region
        keys = [k for k in self.join_keys or [] if k not in self.features]
        roles = {"feature": self.features, "target": self.targets, "key": keys,
                 "weight column": [self.weight_column] if self.weight_column else []}
        seen: dict[str, str] = {}
        for role, names in roles.items():
            for name in names:
                if name in seen:
                    raise ValueError(f"column {name!r} is both a {seen[name]} and a {role}")
                seen[name] = role
        return self


def usable_cpus() -> int:
    """Processors this process may run on (its affinity: `taskset`, cgroups' cpusets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 1


_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """'512MB', '4GB', '1.5GiB', '1000000' or '25%' (of physical memory) -> bytes."""
    text = str(text).strip().upper().replace(" ", "")
    if text.endswith("%"):
        share = float(text[:-1]) / 100
        if not 0 < share <= 1:
            raise ValueError(f"a share of memory must be in (0%, 100%], got {text}")
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * share)
    match = re.fullmatch(r"([0-9.]+)([A-Z]*)", text)
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"{text!r} is not a size: use e.g. 512MB, 4GB or 25%")
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value < 2**20:
        raise ValueError(f"{text} is below the minimum of 1MB")
    return value


def _inner_type(annotation):
    """(item type, is_list) of a field annotation such as Optional[list[str]] (or float | list[float]: a list)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = next((a for a in options if typing.get_origin(a) is list), options[0])
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _comma_list(item_type):
    def parse(text: str):  # commas inside parentheses or double quotes belong to an expression: least(a, b)
        return [item_type(part) for part in split_top_level(text)]
    return parse


def _help(text: str) -> str:
    """argparse formats help with %: escape it."""
    return text.replace("%", "%%")


def build_parser(prog: str = "python -m flows.train", description: str | None = None,
                 model: type[BaseModel] = TrainConfig) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of a pydantic configuration `model` (TrainConfig, a
    ScoreConfig, ...): --field-name, or the flag, negating flag, metavar and group of the field's `_cli`."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=f"Exit codes: 0 success; {EXIT_BAD_INPUT} bad input (data, configuration or command line); "
               f"{EXIT_CONFLICT} run id conflict; {EXIT_INTERRUPTED} stopped by Ctrl-C; {EXIT_FAILURE} any other "
               "failure.")
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for name, field in model.model_fields.items():
        extra = (field.json_schema_extra or {}).get("cli", {}) if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("one_of") and extra["one_of"] not in groups:
            groups[extra["one_of"]] = parser.add_mutually_exclusive_group(required=True)
        target = groups.get(extra.get("one_of"), parser)
        if field.annotation is bool and field.default is False and not extra.get("negate"):
            parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true",
                                default=argparse.SUPPRESS, help=_help(field.description))
            continue
        if extra.get("negate"):
            parser.add_argument(extra["negate"], dest=name, action="store_false", default=argparse.SUPPRESS,
                                help=_help(field.description))
            continue
        flags = [f for f in (extra.get("flag"), "--" + name.replace("_", "-")) if f]
        item_type, is_list = _inner_type(field.annotation)
        kwargs: dict = {"dest": name, "default": argparse.SUPPRESS, "help": _help(field.description)}
        if typing.get_origin(item_type) is Literal:
            kwargs["choices"] = list(typing.get_args(item_type))
        elif is_list:
            kwargs["type"] = _comma_list(item_type)
            kwargs["metavar"] = "A,B,..."
        elif item_type in (int, float, str):
            kwargs["type"] = item_type
        if extra.get("metavar"):
            kwargs["metavar"] = extra["metavar"]
        if field.default is not None and not isinstance(field.default, bool):
            shown = ",".join(map(str, field.default)) if isinstance(field.default, list) else field.default
            kwargs["help"] = _help(f"{field.description} (default: {shown})")
        target.add_argument(*dict.fromkeys(flags), **kwargs)
    return parser


def config_from_args(namespace: argparse.Namespace, model: type[BaseModel] = TrainConfig):
    """A `model` configuration (TrainConfig by default) from parsed arguments; bad values become an
    InputError naming the option."""
    return validated(model, {k: v for k, v in vars(namespace).items() if k in model.model_fields})


def make_config(**values) -> TrainConfig:
    """TrainConfig(**values), with pydantic's errors turned into one readable InputError."""
    return validated(TrainConfig, values)


def validated(model: type[BaseModel], values: dict):
    """model(**values), with pydantic's errors turned into one InputError naming each option."""
    try:
        return model(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "configuration"
            option = "--" + where.replace("_", "-") if where in model.model_fields else where
            problems.append(f"{option}: {err['msg']}")
        raise InputError("Invalid configuration: " + "; ".join(problems) + ".") from None


# What a run's result does not depend on. One rule, used by --skip-if-unchanged (`linreg.pipeline.reuse`) and
# by resuming from a snapshot (`linreg.outputs.snapshot.identity`): two configurations that differ only in these
# fields train the same weights, bit for bit.
# - Naming and bookkeeping: run_id, output, skip_if_unchanged.
# - How the job is launched and supervised: node_rank, rdzv_endpoint, rdzv_id, max_restarts, snapshot_every,
#   resume, dist_timeout_seconds.
# Not here, for any trainer: nproc_per_node and nnodes (the rank count shards the rows: the gradient trainers'
# per-rank shuffles, the step shares and the order of every merged sum depend on it) and memory_budget (it
# decides between in-memory and streamed epochs and sizes the shuffle buffer of the gradient trainers; for
# exact it sets the join's bucket count, hence the order in which rows are summed).
NON_RESULT_FIELDS = frozenset({"run_id", "output", "skip_if_unchanged", "node_rank", "rdzv_endpoint", "rdzv_id",
                               "max_restarts", "snapshot_every", "resume", "dist_timeout_seconds"})


def config_default(name: str):
    """TrainConfig's default of field `name`: the one place a default is written (TrainOptions,
    LinearRegression and the exact solver take theirs from here)."""
    return TrainConfig.model_fields[name].default


def result_fields(config: dict) -> dict:
    """The fields of a dumped TrainConfig (`model_dump(mode="json")`) that can change its result."""
    return {name: value for name, value in config.items() if name not in NON_RESULT_FIELDS}
