"""One run, step by step: `steps` plans, joins, splits, fits, evaluates and commits a training run; `metrics`
scores the holdout, `report` draws the run, `scoring` applies a committed model to new weather, `reuse`
finds a committed run with the same inputs and configuration.
"""
