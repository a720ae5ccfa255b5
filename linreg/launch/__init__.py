"""Whole jobs on several processes: `torchrun` launches the ranks of a job, `job` is what each rank runs.
"""
