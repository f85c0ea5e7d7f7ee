"""``python -m sweeper``: the Hydra app; once it is done, the process ends without tearing its modules down."""

import atexit
import contextlib
import logging
import os
import sys
import threading

from sweeper.app import main


def _exit_now(code: int) -> None:
    """End the process with ``code``, skipping the interpreter's teardown of every module.

    Tearing torch's and diffusers' modules down takes about 0.8 s. What the interpreter does before that
    runs first, in its order: the threads' shutdown (joblib's worker processes are told to end there), the
    exit handlers (the MLflow helper's queue is waited for, temporary folders removed); then the logs are
    closed and the output flushed.
    """
    threading._shutdown()  # what the interpreter's exit calls first (private; the same in every CPython 3)
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as done:
        code = done.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)  # what Python prints for sys.exit("message")
            code = 1
        _exit_now(code or 0)
    _exit_now(0)
