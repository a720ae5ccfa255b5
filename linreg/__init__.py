"""linreg: the library behind the pipeline (schema, Parquet I/O, join, tensors, trainers, metrics, outputs).

It never imports Prefect; `tasks/` and `flows/` wrap it.
"""

__version__ = "0.1.0"
