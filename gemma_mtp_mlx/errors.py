"""User-facing failures of the command line: one line, an exit code."""

from __future__ import annotations

import sys
from typing import NoReturn


class CliError(Exception):
    """A failure the user can fix: shown as one `error:` line, exit `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    raise CliError(message, code)


def say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
