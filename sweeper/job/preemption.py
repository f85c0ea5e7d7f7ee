"""A job asked to give its slot back (time limit, preemption, ``scancel``) stops training between two steps.

Under ``launcher=submitit_slurm`` submitit installs the job's signal handlers before the job starts: on
``SIGUSR2`` (sent ``signal_delay_s`` before the time limit, or by ``scancel --signal=USR2``) it asks the
task for a checkpoint, requeues the job and exits; ``SIGTERM`` (``scancel``, preemption) it only logs. A
handler that ran in the middle of an optimizer step would leave no state to continue from, so while a LoRA
trains those handlers are held back: the signal only raises a flag that ``train_lora`` reads after each
step (``should_stop``); training saves a checkpoint and stops, and then the held-back handler runs — submitit
requeues the job, and the requeued job continues from that checkpoint (``find_checkpoint``) to the weights
of an uninterrupted run. Outside training the handlers act at once: pictures are written atomically and a
rerun skips the finished ones.

Only handlers that some framework installed are held back: a job run in this process or by joblib keeps
the default actions (a ``SIGTERM`` still ends it at once).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class HeldSignals:
    """Context manager: the installed handlers of ``signals`` wait until training reaches a step boundary.

    Entering returns ``should_stop`` for ``train_lora``. Leaving puts the handlers back and runs each one
    once for every signal that arrived (submitit's requeue and exit among them). When they return and
    training stopped, its ``TrainingStopped`` goes on up: the job ends, its checkpoint saved.

    Args:
        signals: The signals to hold back (where a Python handler is installed for them).
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        self.caught: list[int] = []
        self._held: dict[int, Callable] = {}

    def should_stop(self) -> bool:
        """Whether a held-back signal arrived (asked by the trainer after every step)."""
        return bool(self.caught)

    def _record(self, signum: int, _frame) -> None:
        if not self.caught:
            log.warning("Got %s: saving a checkpoint after this training step.", signal.Signals(signum).name)
        self.caught.append(signum)

    def __enter__(self) -> Callable[[], bool]:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in self.signals:
                handler = signal.getsignal(signum)
                if callable(handler):
                    self._held[signum] = handler
                    signal.signal(signum, self._record)
        return self.should_stop

    def __exit__(self, *exc) -> None:
        for signum, handler in self._held.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(self.caught):
            self._held[signum](signum, None)  # submitit: checkpoint, requeue, sys.exit
