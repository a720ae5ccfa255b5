"""linreg: the library behind the pipeline (schema, Parquet I/O, join, tensors, trainers, metrics, outputs).

It never imports Prefect; `tasks/` and `flows/` wrap it.
"""

__version__ = "0.1.0"

import pyarrow as _pa

try:  # jemalloc returns freed memory to the OS; the default (mimalloc) keeps what a pass touched
    _pa.set_memory_pool(_pa.jemalloc_memory_pool())
except NotImplementedError:  # a pyarrow build without jemalloc: keep its default
    pass
