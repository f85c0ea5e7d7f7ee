"""Benchmarks that print ratios against baselines measured in the same run (never assert timings).

``python -m bench`` runs every benchmark listed in ``bench.__main__.BENCHES``; ``python -m bench NAME
[ARGS]`` runs one.
"""
