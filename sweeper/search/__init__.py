"""Searches over runs: successive halving, Optuna, and the objective they maximise."""
