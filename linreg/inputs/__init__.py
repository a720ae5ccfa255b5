"""Reading, checking and joining the inputs.

`tables` opens a table (file, folder, hive dataset, object storage) and fingerprints it; `schema` resolves
the columns and declares every output schema; `checks` validates values; `join` joins the two tables in
one DuckDB pass into a file grouped by region (`buckets` when the budget is small, `shard` for one rank's
regions); `holdout` splits off the holdout; `weights` checks sample weights; `batches` and `stream` turn the
joined file into numeric batches.
"""
