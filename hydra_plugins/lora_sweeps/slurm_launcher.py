"""``hydra/launcher=lora_submitit_slurm``: submitit's SLURM launcher, its failures said in one line.

The jobs are submitted, requeued and collected by ``hydra-submitit-launcher`` and submitit, unchanged. What
this subclass adds is the end of a failed sweep: an ``sbatch`` refusal, a job that was cancelled or one that
failed is one ``error:`` line (``sweeper.launch.slurm.describe_failure``) instead of Hydra's traceback, and the
sweep exits non-zero with everything already produced kept. ``conf/launcher/submitit_slurm.yaml`` picks it.
"""

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


# Hydra loads plugin modules outside sys.modules: plain annotations only (no __future__ import).
@dataclass
class LoraSlurmQueueConf(SlurmQueueConf):
    """``hydra.launcher.*``: submitit's SLURM parameters, unchanged."""

    _target_: str = "hydra_plugins.lora_sweeps.slurm_launcher.LoraSlurmLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="lora_submitit_slurm", node=LoraSlurmQueueConf(), provider="lora-sweeps"
)


class LoraSlurmLauncher(SlurmLauncher):
    """submitit's SLURM launcher; a refused submission or a job without a result ends in one line."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit, wait and collect as submitit's launcher does; a failure is one ``error:`` line and an exit."""
        from submitit.core.utils import FailedSubmissionError, UncompletedJobError

        from sweeper.errors import exit_with
        from sweeper.launch.slurm import describe_failure, describe_stopped

        try:
            with contextlib.redirect_stderr(_WithoutSbatchEcho(sys.stderr)):
                returns = super().launch(job_overrides, initial_job_idx)
        except (UncompletedJobError, FailedSubmissionError) as err:
            code, line = describe_failure(err, dict(self.params))
            exit_with(code, [line])
        stopped = describe_stopped(returns)
        if stopped is not None:
            exit_with(*stopped)
        return returns


class _WithoutSbatchEcho:
    """stderr without the lines submitit echoes from a failed ``sbatch`` (the error line quotes them)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        kept = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("sbatch: "))
        return self._stream.write(kept) if kept else len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
