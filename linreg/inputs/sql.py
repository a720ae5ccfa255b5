"""SQL text for DuckDB: quoted identifiers, and the smallest memory limit DuckDB works with."""

MIN_DUCKDB_MEMORY = 128 * 2**20  # below it DuckDB cannot join and sort, even when spilling


def quote(name: str) -> str:
    """A SQL identifier, quoted for DuckDB."""
    return '"' + name.replace('"', '""') + '"'
