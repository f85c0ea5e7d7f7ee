"""The one way every command line of the project reports a problem the user can fix."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from lora_core.errors import UserInputError

USER_ERROR_EXIT = 2


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a ``UserInputError`` as one line (``error: <message>``) on stderr and exit with status 2.

    Everything else propagates with its traceback: that is a bug, not bad input.
    """
    try:
        yield
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
