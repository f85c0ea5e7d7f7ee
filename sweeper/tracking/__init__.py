"""Everything MLflow: the store, the tracker, a job's live logging, the replay of a folder, the UI's view.

- ``store``: where the store is (``tracking_uri``, the one place it is decided) and whether it answers.
- ``tracker``: ``Tracker`` (every MLflow write, switched off with one warning when the store fails) and
  ``StepLogger`` (live loss / learning-rate curves while a job trains).
- ``helper``: a job's tracker run in a helper process (``open_tracker``), so that a job that is its own
  process (SLURM, joblib, a single run) never imports MLflow or opens its store while it loads and trains.
- ``replay``: a run folder or a whole finished sweep folder logged from disk (a job's end, a sweep's end,
  ``python -m sweeper.tracking <sweep folder>`` for a sweep that ran while the store was down).
- ``ui``: what the MLflow UI shows when a sweep's link is opened (shared view, descriptions, ``make ui``).

Disk is the source of truth: every write here can be replayed from the sweep folder (``sweeper.disk.layout``).
"""
