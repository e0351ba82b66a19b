"""Progress on stderr: a Rich bar or spinner on a terminal, nothing on a pipe or a log."""

from __future__ import annotations

import io
import sys

import pytest

from gemma_mtp_mlx.progress import byte_bar, spinner


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal,enabled", [(True, True), (True, False), (False, True)])
def test_a_bar_only_on_a_terminal(monkeypatch, terminal, enabled):
    err = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with byte_bar(enabled, 2_000_000, "converting model.gguf") as bar:
        bar.advance(1_000_000)
        bar.describe("building the tokenizer")
        bar.advance(1_000_000)
    with spinner(enabled, "measuring this machine's kernels") as describe:
        describe("still measuring")
    shown = err.getvalue()
    if terminal and enabled:
        assert "converting model.gguf" in shown or "building the tokenizer" in shown
        assert "MB" in shown and "measuring" in shown
    else:
        assert shown == ""
