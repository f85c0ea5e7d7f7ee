"""One job of a sweep: train, render the grids, draw the sheets, score, record and log one run."""

from sweeper.job.job import Job, JobResult, run_job

__all__ = ["Job", "JobResult", "run_job"]
