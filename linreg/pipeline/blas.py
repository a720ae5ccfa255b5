"""One BLAS thread for the data passes.

The passes multiply tall, narrow blocks (a Gram matrix of 6 columns, predictions of 3 features): one
core does that at memory speed, while OpenBLAS's worker threads busy-wait between calls and take the
core that DuckDB, the Parquet decoder or the predictions' writer needs (measured on 2 cores: a
(262144, 3) @ (3, 2) product took 22 ms with 2 BLAS threads under load, 5 ms with one). Torch's own
threads (OpenMP) are not affected.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def one_thread():
    """A context manager: BLAS (numpy's OpenBLAS) limited to one thread inside it."""
    return threadpool_limits(limits=1, user_api="blas")
