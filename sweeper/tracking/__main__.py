"""``python -m sweeper.tracking <sweep folder> [--tracking-uri URI]``: log a finished sweep folder to MLflow.

For sweeps that ran while the tracking server could not be reached (they leave ``MLFLOW_PENDING``), or
to copy a sweep into another store. Runs already logged there as finished are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweeper.errors import user_errors
from sweeper.tracking.replay import log_sweep_folder


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sweeper.tracking", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder, e.g. outputs/quickstart")
    parser.add_argument(
        "--tracking-uri", default=None, help="default: sqlite:///<sweep folder's parent>/mlflow.db"
    )
    parser.add_argument("--experiment", default=None, help="default: the sweep folder's name")
    args = parser.parse_args(argv)
    with user_errors():
        count, link = log_sweep_folder(args.sweep_dir, args.tracking_uri, args.experiment)
    print(f"Logged {count} runs of {args.sweep_dir} to MLflow.\nThe jobs in the MLflow UI: {link}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
