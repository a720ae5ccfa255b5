"""The outputs and their commit.

`commit` stages every dataset and commits a run atomically (its docstring states the protocol);
`durable` holds the fsyncs, `locks` the run-id lock, `runindex` reads the runs index, `retention` prunes old
runs, `migrate` upgrades an output root's schema, `destination` checks a location is writable and
`snapshot` keeps the gradient trainers' resumable state.
"""
