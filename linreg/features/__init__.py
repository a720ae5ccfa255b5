"""Derived features: expressions over weather columns and the join keys."""
