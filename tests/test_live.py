"""The live view: stats wording, the Rich panel, plain output, and `chat` in a real terminal."""

from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from gemma_mtp_mlx import live
from gemma_mtp_mlx.decoding import RoundInfo
from gemma_mtp_mlx.engine import Chunk
from gemma_mtp_mlx.stats import Stats

ROOT = Path(__file__).resolve().parents[1]
E2B = ROOT / "tests" / "fixtures" / "e2b_tiny"


def make_stats(rounds, prompt=20, generated=None, redone=()):
    stats = Stats(prompt_tokens=prompt, prefill_seconds=0.1, ttft_s=0.1, decode_seconds=0.5)
    stats.rounds = [RoundInfo(k, a, a + 1, 0.05, i in redone) for i, (k, a) in enumerate(rounds)]
    stats.generated_tokens = generated or 1 + sum(a + 1 for _, a in rounds)
    stats.finish_reason = "length"
    return stats


def test_stats_line_words():
    stats = make_stats([(4, 4), (6, 2), (5, 0)])
    line = live.stats_line(stats, drafting=True, turn=2, cached=40)
    assert "\n" not in line
    parts = ["turn 2", "tokens", "tok/s", "prefill 20 tok (cached 40)", "TTFT 0.10 s"]
    parts += ["acceptance 40%", "2.00/round", "3 draft rounds", "peak", "finish length"]
    for part in parts:
        assert part in line, part
    assert "warning" not in line and "redone" not in line and "lookup" not in line
    stats.rounds[1].source = "lookup"
    assert "3 draft rounds (1 by lookup)" in live.stats_line(stats, drafting=True)
    assert stats.to_dict()["lookup_rounds"] == 1
    redone = live.stats_line(make_stats([(4, 4), (6, 2), (5, 0), (2, 1)], redone={1}), True)
    assert "1 redone (25%)" in redone
    plain = live.stats_line(make_stats([]), drafting=False)
    assert "drafter off" in plain and "acceptance" not in plain
    assert "interrupted" in live.stats_line(stats, True, interrupted=True)


def test_one_wording_for_the_drafter():
    # a drafter that never drafted has no acceptance to show (not "0%")
    idle = live.stats_line(make_stats([]), drafting=True)
    assert "drafter on · 0 draft rounds" in idle and "acceptance" not in idle
    assert "%" not in idle
    assert live.drafter_words(make_stats([]), False) == "drafter off"
    panel = Console(file=io.StringIO(), width=120)
    panel.print(live.status_panel(make_stats([]), True))
    panel.print(live.status_panel(make_stats([]), False))
    shown = panel.file.getvalue()
    assert "drafter  on · 0 draft rounds" in shown and "drafter  off" in shown
    assert "%" not in shown and "drafter drafter" not in shown


def test_load_time_is_said_when_over_a_second():
    stats = make_stats([(4, 4)])
    assert "load" not in live.stats_line(stats, True, load_s=0.8)
    line = live.stats_line(stats, True, load_s=4.26)
    assert "TTFT 0.10 s · load 4.3 s" in line  # TTFT stays the prefill


def test_the_chat_stats_line_wraps_between_phrases_in_160_columns():
    stats = make_stats([(2, 0)] * 8 + [(4, 1)])  # long: a collapse warning too
    kw = {"turn": 12, "cached": 4096, "load_s": 3.2}
    one_line = live.stats_line(stats, True, **kw)
    assert len(one_line) > 160
    console = Console(file=io.StringIO(), force_terminal=True, width=160, height=40)
    live.StreamView(console, drafting=True).finish(stats, True, **kw)
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", console.file.getvalue()).rstrip("\n")
    lines = shown.split("\n")
    assert len(lines) == 2 and all(len(line) <= 160 for line in lines)
    assert " · ".join(lines) == one_line  # broken only at a separator


@pytest.mark.parametrize(
    "rounds, warns",
    [
        ([(2, 0)] * 8, True),
        ([(2, 0)] * 7, False),  # too few rounds to judge
        ([(2, 1)] * 8, False),
        ([(4, 0)] * 9 + [(4, 3)], True),  # 3/40 < 10%
    ],
)
def test_collapse_warning(rounds, warns):
    stats = make_stats(rounds)
    assert (live.collapse_warning(stats) is not None) == warns
    assert ("acceptance collapsed" in live.stats_line(stats, True)) == warns


def test_histogram_and_sparkline():
    assert live.sparkline({}) == ""
    spark = live.sparkline({0: 1, 2: 8})
    assert len(spark) == 3 and spark[1] == " " and spark[2] == "█"
    assert live.histogram_text({2: 5, 0: 1}) == "0:1 2:5"


def test_status_panel_shows_everything():
    stats = make_stats([(4, 4), (4, 1), (3, 0)], redone={2})
    console = Console(file=io.StringIO(), width=110, force_terminal=False)
    console.print(live.status_panel(stats, True, current_rate=12.5, draft_len=3, title="turn 1"))
    text = console.file.getvalue()
    for part in ("12.5 tok/s now", "tok/s avg", "TTFT", "peak", "acceptance 45%",
                 "draft length 3", "accepted/round", "0:1 1:1 4:1", "per position",
                 "1:67% 2:33% 3:33% 4:50%", "redone 1 (33%)", "decode width 1"):  # fmt: skip
        assert part in text, part
    off = Console(file=io.StringIO(), width=110)
    off.print(live.status_panel(stats, False))
    assert "off" in off.file.getvalue() and "per position" not in off.file.getvalue()


def test_rate_meter_uses_recent_rounds():
    meter = live.RateMeter(window=2)
    stats = Stats()
    for emitted, seconds in [(1, 1.0), (4, 0.5), (2, 0.5)]:
        meter.add(Chunk("x", [0] * emitted, stats, RoundInfo(3, emitted - 1, emitted, seconds)))
    assert meter.current == pytest.approx(6 / 1.0)


def chunks(texts):
    stats = make_stats([(2, 1)] * 3)
    return [Chunk(t, [1], stats, RoundInfo(2, 1, 2, 0.01)) for t in texts], stats


def test_plain_view_is_plain_text():
    out, err = io.StringIO(), io.StringIO()
    parts, stats = chunks(["# Title", "\n\nsome *text*"])
    with live.PlainView(out, err) as view:
        for c in parts:
            view.add(c)
        view.finish(stats, True)
    assert out.getvalue() == "# Title\n\nsome *text*\n"
    assert "tok/s" in err.getvalue() and err.getvalue().count("\n") == 1
    assert "\x1b" not in out.getvalue() + err.getvalue()


def test_make_view_picks_plain_for_a_pipe():
    assert isinstance(live.make_view(True, out=io.StringIO()), live.PlainView)


def test_stream_view_renders_markdown_and_stats():
    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=30)
    parts, stats = chunks(["# Title\n\n", "some **bold** text\x16 and `code`"])
    view = live.StreamView(console, drafting=True, title="turn 1")
    with view:
        for c in parts:
            view.add(c)
        view.finish(stats, True, turn=1, cached=0)
    final = console.file.getvalue()
    assert "Title" in final and "bold" in final and "# Title" not in final  # rendered as Markdown
    assert "\x16" not in final
    assert "prefill 20 tok (cached 0)" in re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", final)


# -- chat in a real terminal (tmux) --------------------------------------------------------------
TURN = re.compile(r"turn (\d+) · (\d+) tokens · .*?prefill (\d+) tok \(cached (\d+)\)")


class Tmux:
    def __init__(self, socket: Path):
        self.base = ["tmux", "-S", str(socket)]

    def __call__(self, *args) -> str:
        return subprocess.run(
            self.base + list(args), capture_output=True, text=True, timeout=10, check=True
        ).stdout

    def screen(self) -> str:
        # -J joins lines the terminal wrapped; -S - includes what scrolled away
        return self("capture-pane", "-p", "-J", "-S", "-", "-t", "chat")

    def wait_for(self, predicate, what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{screen}")
            time.sleep(0.2)

    def send(self, text: str) -> None:
        self("send-keys", "-t", "chat", "-l", text)
        self("send-keys", "-t", "chat", "Enter")


def start_chat(tmp_path: Path, *options: str) -> Tmux:
    """`gemma-mtp chat` on the tiny E2B pair in a detached 200x50 tmux session "chat", with a
    cache folder of its own; the shell prints CHAT-EXIT=<code> when it ends."""
    tmux = Tmux(tmp_path / "tmux.sock")
    chat = shlex.join([sys.executable, "-m", "gemma_mtp_mlx", "chat", "-m", str(E2B),
                       "--dtype", "float32", *options])
    # its own cache folder: what auto learned in other tests (kept with the calibration)
    # would otherwise decide whether this chat drafts at all
    cache = shlex.quote(str(tmp_path / "cache"))
    shell = (f"cd {shlex.quote(str(ROOT))} && GEMMA_MTP_CACHE={cache} {chat}; "
             "echo CHAT-EXIT=$?; sleep 120")
    tmux("new-session", "-d", "-s", "chat", "-x", "200", "-y", "50", shell)
    return tmux


def turn_stats(screen: str):
    return [tuple(map(int, m.groups())) for m in TURN.finditer(screen)]


@pytest.mark.skipif(
    shutil.which("tmux") is None,
    reason="tmux is not installed (apt-get install tmux / brew install tmux): "
    "the real-terminal chat test needs it",
)
def test_chat_in_a_real_terminal(tmp_path):
    from mlx_lm.utils import load_tokenizer

    from gemma_mtp_mlx.engine import encode_prompt

    tokenizer = load_tokenizer(E2B / "target")
    tmux = start_chat(tmp_path, "--max-tokens", "12")
    try:
        tmux.wait_for(lambda s: ">>>" in s, "the prompt")
        tmux.send("Hello there")
        tmux.wait_for(lambda s: len(turn_stats(s)) >= 1 and s.rstrip().endswith(">>>"), "turn 1")
        tmux.send("What next?")
        screen = tmux.wait_for(lambda s: len(turn_stats(s)) >= 2, "turn 2")
        (t1, n1, p1, c1), (t2, n2, p2, c2) = turn_stats(screen)[:2]
        assert (t1, c1, t2) == (1, 0, 2)
        # Turn 2 reuses all of turn 1: it prefills the last answer token, <turn|>\n closing
        # the answer (the fixture's template), and the new user turn.
        assert c2 == p1 + n1 - 1
        assert p2 == 1 + 2 + len(encode_prompt(tokenizer, "What next?")) - 1
        assert "tok/s" in screen and "acceptance" in screen and "TTFT" in screen
        tmux.wait_for(lambda s: s.rstrip().endswith(">>>"), "the prompt after turn 2")

        tmux.send("/stats")
        tmux.wait_for(lambda s: "per position" in s and "session: 2 turns" in s, "/stats")
        tmux.send("/reset")
        tmux.wait_for(lambda s: "conversation reset" in s, "/reset")
        tmux.send("again")
        screen = tmux.wait_for(lambda s: len(turn_stats(s)) >= 3, "the turn after /reset")
        assert turn_stats(screen)[2][0] == 1 and turn_stats(screen)[2][3] == 0
        tmux.wait_for(lambda s: s.rstrip().endswith(">>>"), "the prompt after /reset")
        tmux.send("/quit")
        screen = tmux.wait_for(lambda s: "CHAT-EXIT=" in s, "chat to exit")
        assert "CHAT-EXIT=0" in screen and "Traceback" not in screen
    finally:
        subprocess.run(tmux.base + ["kill-server"], capture_output=True, timeout=10)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_chat_ctrl_c_stops_an_answer_and_keeps_the_conversation(tmp_path):
    tmux = start_chat(tmp_path, "--max-tokens", "100000", "--ignore-eos")
    try:
        tmux.wait_for(lambda s: ">>>" in s, "the prompt")
        tmux.send("Hello there")
        # the live status panel, while the answer streams
        tmux.wait_for(lambda s: "tok/s now" in s and "per position" in s, "the live panel")
        tmux("send-keys", "-t", "chat", "C-c")
        screen = tmux.wait_for(lambda s: len(turn_stats(s)) >= 1, "the stopped turn")
        assert "interrupted" in screen and "Traceback" not in screen
        ((_, n1, p1, _),) = turn_stats(screen)
        tmux.wait_for(lambda s: s.rstrip().endswith(">>>"), "the prompt after Ctrl-C")

        tmux.send("go on")
        tmux.wait_for(lambda s: s.count("tok/s now") >= 1 and "turn 2" in s, "turn 2 streaming")
        tmux("send-keys", "-t", "chat", "C-c")
        screen = tmux.wait_for(lambda s: len(turn_stats(s)) >= 2, "the second stopped turn")
        (t2, _, p2, c2) = turn_stats(screen)[1]
        # the conversation is kept (turn 2, its prompt holds turn 1's answer) but the cache,
        # which may hold a half-verified draft, is rebuilt from the messages
        assert t2 == 2 and c2 == 0 and p2 > p1
        tmux.wait_for(lambda s: s.rstrip().endswith(">>>"), "the prompt")
        tmux("send-keys", "-t", "chat", "C-d")
        screen = tmux.wait_for(lambda s: "CHAT-EXIT=" in s, "chat to exit on Ctrl-D")
        assert "CHAT-EXIT=0" in screen
    finally:
        subprocess.run(tmux.base + ["kill-server"], capture_output=True, timeout=10)
