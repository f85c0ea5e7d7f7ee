"""Command-line tools beside the sweep (``python -m sweeper.tools.<name>``)."""
