"""Running on several ranks: the collectives (`dist.Cluster`, identities with one process) and the merges
of partial results (`merge`) that the models receive.
"""
