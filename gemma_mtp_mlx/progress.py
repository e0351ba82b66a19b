"""Progress on stderr for the waits a user sees (conversion, downloads, calibration): a Rich
bar or spinner on a terminal, nothing otherwise (pipes and logs stay clean)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _on_terminal(enabled: bool) -> bool:
    try:
        return enabled and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Bar:
    """What a bar offers its task: `advance(n)` and `describe(text)` (no-ops off a terminal)."""

    def __init__(self, progress=None, task=None):
        self._progress, self._task = progress, task

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)


@contextmanager
def byte_bar(enabled: bool, total: int, description: str) -> Iterator[Bar]:
    """A transient bar over `total` bytes, with the rate and the time left."""
    if not _on_terminal(enabled):
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield Bar(progress, progress.add_task(description, total=total))


@contextmanager
def spinner(enabled: bool, description: str) -> Iterator[Callable[[str], None]]:
    """A transient spinner with the time spent, for a wait of unknown length; yields a
    function that changes its text."""
    if not _on_terminal(enabled):
        yield lambda text: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda text: progress.update(task, description=text)
