"""User-facing errors: one clear line, exit code 2.

Anything a user can cause (a bad config, bad data, a missing model or a wrong adapter) raises
``UserError``. Entry points catch it, print ``error: <message>`` on stderr and exit with code 2;
everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import re
import sys

EXIT_USER_ERROR = 2


# Strings shaped like well-known API keys (OpenAI/Anthropic sk-…, Hugging Face hf_…, GitHub gh?_…,
# Slack xox?-…, AWS AKIA…) and bearer tokens: never echoed in an error message, even when the user
# put one where it does not belong (a config value, a --set override, a URL).
_SECRET = re.compile(r"(?<![A-Za-z0-9])(?:sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}"
                     r"|xox[abpr]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16})|(?<=Bearer )[^\s'\"]{8,}")


def redact(text: str) -> str:
    """``text`` with anything shaped like an API key replaced by [redacted]."""
    return _SECRET.sub("[redacted]", text)


class UserError(Exception):
    """An error the user can fix; ``str(err)`` is the whole message, on one line (keys redacted)."""

    def __init__(self, message: str):
        super().__init__(redact(" ".join(str(message).split())))


@contextlib.contextmanager
def exit_on_user_error():
    """Turn a ``UserError`` raised inside the block into one stderr line and ``SystemExit(2)``."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
