"""MLflow in a helper process: a job's tracking without MLflow's import and store in the job's own process.

A job that is its own process (a SLURM or joblib worker, a single ``python -m sweeper`` run) would spend
about 1 s importing MLflow and 0.6 s opening the SQLite store; done in a thread beside the pipeline's load,
both still hold the GIL the load needs, and MLflow's modules make the interpreter's exit about 0.8 s
longer. So such a process starts one helper (``python -c`` of ``serve``, on two pipes) and
``open_tracker`` gives it a ``TrackerProxy``: the same calls as ``Tracker``, each run by a real ``Tracker``
in the helper. Calls run one at a time in the order they were made; the live loss rows
(``log_metrics``) are sent without waiting, every other call waits for its answer, so when a job's last
call (``finish``) returns, everything before it is in the store.

Why not ``multiprocessing``: a joblib worker is a loky process, and a process spawned from it by the
standard library fails to start (``cannot find context for 'loky'``). A pipe of pickles works anywhere.

The helper ignores SIGINT, SIGTERM and SIGUSR1/2 (the job decides what a Ctrl-C, a time limit or a
preemption means, and may still log after it) and ends when the job's end of the pipe closes, also when
the job is killed. If it dies, the proxy acts as ``Tracker`` does when the store fails: one warning, the
``MLFLOW_PENDING`` note naming the command that logs the folder later, and no more MLflow calls.

A sweep's own process uses a helper too (``prefetch_mlflow`` starts it, and MLflow's import there, while
the sweep is planned): its in-process jobs share it, and the sweep's process never imports MLflow. A
process that has already imported MLflow (a halving or Optuna sweep's bookkeeping, a test) gains nothing
from a helper and gets a plain ``Tracker``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from omegaconf import DictConfig

from sweeper.tracking.store import experiment_name, tracking_uri
from sweeper.tracking.tracker import Tracker

log = logging.getLogger(__name__)

_ASYNC = frozenset({"log_metrics"})  # calls whose answer nobody waits for (live curves while training)
_INACTIVE = {"child_run": (None, False), "find_children": [], "unfold_children": 0}  # else None, as Tracker
_EXIT_WAIT = 60.0  # seconds the job's exit waits for calls still queued (normally none: finish waited)
_LOCK = threading.Lock()
_HELPER: _Helper | None = None
_PROXIES: dict[tuple[str, str, str], TrackerProxy] = {}


class HelperGone(RuntimeError):
    """The helper process ended (killed, or failed to start)."""


# ---- in the helper ------------------------------------------------------------------------------------------
_TRACKERS: dict[tuple[str, str, str], Tracker] = {}


def serve(read_fd: int, write_fd: int) -> None:
    """The helper's loop: ``(id, function, args)`` pickles in, ``(id, ok, result or exception)`` out."""
    for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    calls, answers = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")
    with contextlib.suppress(OSError), calls, answers:  # the job may close its ends first (an early exit)
        while True:
            try:
                call_id, fn, args = pickle.load(calls)
            except (EOFError, OSError):
                break  # the job closed its end or ended
            try:
                answer = (call_id, True, fn(*args))
            except Exception as err:
                answer = (call_id, False, err)
            try:
                data = pickle.dumps(answer)
            except Exception as err:
                data = pickle.dumps(
                    (call_id, False, RuntimeError(f"{fn.__name__}: unpicklable answer: {err!r}"))
                )
            try:
                answers.write(data)
                answers.flush()
            except OSError:
                break
    logging.shutdown()
    # Every write is in the store (SQLite commits each); skip tearing down MLflow's modules (about 0.8 s).
    os._exit(0)


def _import_mlflow() -> None:
    from mlflow.store.tracking import sqlalchemy_store  # noqa: F401  (what opening a SQLite store imports)
    from mlflow.tracking import MlflowClient  # noqa: F401


def _open(key: tuple[str, str, str], timeout: float) -> tuple[bool, str | None]:
    uri, experiment, sweep_dir = key
    tracker = _TRACKERS[key] = Tracker(uri, experiment, Path(sweep_dir), timeout)
    return tracker.active, tracker.experiment_id


def _call(key: tuple[str, str, str], name: str, args: tuple, kwargs: dict):
    tracker = _TRACKERS[key]
    result = getattr(tracker, name)(*args, **kwargs)
    return result, tracker.active


# ---- in the job -------------------------------------------------------------------------------------------


class _Helper:
    """The helper process and the job's ends of its two pipes; a reader thread resolves the futures."""

    def __init__(self):
        calls_r, calls_w = os.pipe()
        answers_r, answers_w = os.pipe()
        code = f"from sweeper.tracking.helper import serve; serve({calls_r}, {answers_w})"
        root = str(Path(__file__).resolve().parents[2])  # where ``sweeper`` imports from, installed or not
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.DEVNULL, env=env, pass_fds=(calls_r, answers_w)
        )
        os.close(calls_r)
        os.close(answers_w)
        self._calls = os.fdopen(calls_w, "wb")
        self._answers = os.fdopen(answers_r, "rb")
        self._pending: dict[int, Future] = {}
        self._optional: set[Future] = set()  # calls nobody waits for at exit (the prefetched import)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._gone: str | None = None
        threading.Thread(target=self._read, name="mlflow-helper", daemon=True).start()

    def submit(self, fn, *args, optional: bool = False) -> Future:
        """Send ``fn(*args)`` to the helper; ``optional``: the exit does not wait for it."""
        future: Future = Future()
        if optional:
            self._optional.add(future)
        with self._lock:
            if self._gone is None:
                call_id = next(self._ids)
                self._pending[call_id] = future
                try:
                    self._calls.write(pickle.dumps((call_id, fn, args)))
                    self._calls.flush()
                except OSError as err:
                    self._pending.pop(call_id)
                    self._gone = f"{type(err).__name__}: {err}"
            if self._gone is not None:
                future.set_exception(HelperGone(self._gone))
        return future

    def _read(self) -> None:
        while True:
            try:
                call_id, ok, value = pickle.load(self._answers)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            with self._lock:
                future = self._pending.pop(call_id)
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        code = self.process.wait()
        with self._lock:
            self._gone = f"exit status {code}"
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            future.set_exception(HelperGone(self._gone))

    def close(self) -> None:
        """Wait (a bounded time) for calls still queued, then close the pipe: the helper exits."""
        with self._lock:
            pending = [f for f in self._pending.values() if f not in self._optional]
        for future in pending:
            try:
                future.exception(timeout=_EXIT_WAIT)
            except FutureTimeout:
                log.warning(
                    "MLflow: the helper process still had calls queued after %.0f s; stopped.", _EXIT_WAIT
                )
                break
        with contextlib.suppress(OSError):
            self._calls.close()


def _helper() -> _Helper:
    global _HELPER
    if _HELPER is None:
        _HELPER = _Helper()
        atexit.register(_HELPER.close)
    return _HELPER


def prefetch_mlflow() -> None:
    """Start the helper process and its import of MLflow now, in this process's first seconds of other work.

    Nothing waits for it; a process that exits before using MLflow closes the helper without waiting.
    """
    if "mlflow" in sys.modules:
        return
    _helper().submit(_import_mlflow, optional=True)


class TrackerProxy:
    """``Tracker``'s calls, run by a ``Tracker`` in the helper process (see the module's docstring).

    Args:
        uri: Tracking URI.
        experiment: Experiment name.
        sweep_dir: The sweep folder.
        timeout: Seconds to wait for a server at start.
    """

    warned = False  # Tracker._disable's once-only flag

    def __init__(self, uri: str, experiment: str, sweep_dir: Path, timeout: float = 5.0):
        self.uri, self.experiment, self.sweep_dir = uri, experiment, Path(sweep_dir)
        self.client = None  # Tracker._disable clears it; the client itself lives in the helper
        self._key = (uri, experiment, str(self.sweep_dir))
        self._failed_send: BaseException | None = None  # the first send that raised, for the next call
        self._active: bool | None = None
        self._experiment_id: str | None = None
        self._opened = _helper().submit(_open, self._key, timeout)  # the store opens while the job loads

    @property
    def active(self) -> bool:
        """Whether MLflow calls are being made (waits for the store to open)."""
        if self._active is None:
            opened = self._answer(self._opened)
            if opened is not None:
                self._active, self._experiment_id = opened
        return bool(self._active)

    @property
    def experiment_id(self) -> str | None:
        """The sweep's experiment (None when the store could not be opened)."""
        return self._experiment_id if self.active else None

    def __getattr__(self, name: str):
        if name.startswith("_") or not callable(getattr(Tracker, name, None)):
            raise AttributeError(name)

        def remote(*args, **kwargs):
            if not self.active:
                return _INACTIVE.get(name)
            future = _helper().submit(_call, self._key, name, args, kwargs)
            if name in _ASYNC:
                future.add_done_callback(self._note_failed_send)
                return None
            answer = self._answer(future)  # the helper answers in order: every earlier send is done
            if self._failed_send is not None:  # a send that failed surfaces at the next call that waits
                failed, self._failed_send = self._failed_send, None
                raise failed
            if answer is None:
                return _INACTIVE.get(name)
            result, self._active = answer
            return result

        return remote

    def _note_failed_send(self, future: Future) -> None:
        error = future.exception()
        if error is not None and not isinstance(error, HelperGone) and self._failed_send is None:
            self._failed_send = error  # a dead helper is seen by the call that waits, as for any call

    def _answer(self, future: Future):
        """The helper's answer; None (and the tracker switched off) if the helper died.

        Any other exception is a bug in this project, raised here as the helper raised it.
        """
        try:
            return future.result()
        except HelperGone as err:
            if self._active is not False:
                self._active = False
                Tracker._disable(self, f"its helper process stopped ({err})")  # warns once, writes the note
            return None


def open_tracker(config: DictConfig, sweep_dir: Path) -> Tracker | TrackerProxy:
    """The tracker of a job or a single run: in the helper process unless this process has MLflow already.

    One helper serves the process; one proxy per store, experiment and sweep folder (a single run's job
    and its end share it).
    """
    if "mlflow" in sys.modules:
        return Tracker.for_config(config, sweep_dir)
    uri, experiment = tracking_uri(config), experiment_name(config)
    key = (uri, experiment, str(Path(sweep_dir)))
    with _LOCK:
        if key not in _PROXIES:
            _PROXIES[key] = TrackerProxy(uri, experiment, sweep_dir, config.tracking.connect_timeout)
        return _PROXIES[key]
