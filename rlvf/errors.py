"""User-facing errors: one clear line, exit code 2.

Anything a user can cause (a bad config, bad data, a missing model or a wrong adapter) raises
``UserError``. Entry points catch it, print ``error: <message>`` on stderr and exit with code 2;
everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error the user can fix; ``str(err)`` is the whole message, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@contextlib.contextmanager
def exit_on_user_error():
    """Turn a ``UserError`` raised inside the block into one stderr line and ``SystemExit(2)``."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
