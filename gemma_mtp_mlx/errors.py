"""Failures the user can fix (a missing model, a bad option, a model too big): one line and
an exit code. Raised by the engine and its loaders as well as the command line, which shows
them as one `error:` line."""

from __future__ import annotations

import sys
from typing import NoReturn


class UserError(Exception):
    """A failure the user can fix: shown as one `error:` line, exit `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    raise UserError(message, code)


def say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
