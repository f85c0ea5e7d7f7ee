"""The one way every command line of the project reports a problem: the ``error:`` line and the exit codes.

A ``UserInputError`` (bad input the user can fix) is one line on stderr and exit status 2; anything else is a
bug and keeps its traceback (exit status 1 where a callback has to stop the command itself).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator

from lora_core.errors import UserInputError

USER_ERROR_EXIT = 2  # bad input: the command line, a config value, a folder
FAILURE_EXIT = 1  # anything else: a job failed or was stopped, or a bug

log = logging.getLogger(__name__)


def print_error(line: str) -> None:
    """Print one ``error: <line>`` on stderr."""
    print(f"error: {line}", file=sys.stderr, flush=True)


def exit_with(code: int, lines: Iterable[str]) -> None:
    """Print each line as an ``error:`` line, then exit with ``code``."""
    for line in lines:
        print_error(line)
    sys.exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a ``UserInputError`` as one line (``error: <message>``) on stderr and exit with status 2.

    Everything else propagates with its traceback: that is a bug, not bad input.
    """
    try:
        yield
    except UserInputError as err:
        exit_with(USER_ERROR_EXIT, [str(err)])


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Stop the whole command on an error here: Hydra only warns about exceptions raised in callbacks.

    A ``UserInputError`` is printed as one line (no traceback), exit status 2; anything else with its
    traceback, exit status 1. Either way no job starts.
    """
    try:
        with user_errors():
            yield
    except Exception:
        log.exception("Planning the sweep failed; no job was started.")
        sys.exit(FAILURE_EXIT)


@contextlib.contextmanager
def job_errors(in_process: bool) -> Iterator[None]:
    """A job's own bad input: one line and exit 2 when the job runs in this process.

    Args:
        in_process: Whether the job runs in the command's own process (no ``-m``, or Hydra's basic
            launcher). Otherwise the error propagates and the launcher reports the failed job.
    """
    with user_errors() if in_process else contextlib.nullcontext():
        yield
