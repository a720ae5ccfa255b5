"""linreg: the library behind the pipeline, one subpackage a stage, imports running downward only:

    launch     whole jobs on several processes (torchrun, each rank's job)
    pipeline   one run's steps: plan, join, split, fit, evaluate, commit; scoring, report, reuse
    models     the linear model, the exact solver, the gradient trainers, statistics, the estimator
    parallel   the collectives and merges the models receive (identities with one process)
    outputs    the output datasets, their atomic and durable commit, the runs index, retention
    inputs     reading, checking and joining the weather and yield tables
    config, errors, redact, retry   the configuration, error types, credentials kept out of records, retries
    features   the --features expressions and --aggregate: parsed, printed, compiled to SQL

It never imports Prefect; `tasks/` and `flows/` wrap it. docs/design.md draws the layout.
"""

__version__ = "0.1.0"

import pyarrow as _pa

try:  # jemalloc returns freed memory to the OS; the default (mimalloc) keeps what a pass touched
    _pa.set_memory_pool(_pa.jemalloc_memory_pool())
except NotImplementedError:  # a pyarrow build without jemalloc: keep its default
    pass
