"""What the CLI shows while a model answers.

`StreamView` (a terminal): the answer as Markdown, updated live, with a status
panel under it: tokens/s now and on average, acceptance, current draft length,
accepted-per-round histogram, per-position acceptance, redone rounds and the decode
width, TTFT and peak memory.
`PlainView` (a pipe or a file): the answer's text as it comes, no ANSI, and the
stats in one line on stderr. `make_view` picks one.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import TYPE_CHECKING, TextIO

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # keep `import gemma_mtp_mlx.live` free of MLX
    from .engine import Chunk
    from .stats import Stats

# acceptance_rate below this after COLLAPSE_ROUNDS draft rounds: say so
COLLAPSE_RATE = 0.1
COLLAPSE_ROUNDS = 8
SPARK = "▁▂▃▄▅▆▇█"
SEPARATOR = " · "


# -- numbers into words ------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def collapse_warning(stats: Stats) -> str | None:
    """One phrase when the drafter's guesses are almost never kept."""
    rounds = len(stats.draft_rounds)
    if rounds >= COLLAPSE_ROUNDS and stats.acceptance_rate < COLLAPSE_RATE:
        return (
            f"acceptance collapsed ({_pct(stats.acceptance_rate)} over {rounds} rounds): "
            "the drafter may not match this target, --no-draft may be faster"
        )
    return None


def sparkline(hist: dict[int, int]) -> str:
    """accepted-per-round counts 0..max as block characters."""
    if not hist:
        return ""
    top = max(hist.values())
    return "".join(
        SPARK[min(len(SPARK) - 1, round((len(SPARK) - 1) * hist.get(k, 0) / top))]
        if hist.get(k, 0)
        else " "
        for k in range(max(hist) + 1)
    )


def histogram_text(hist: dict[int, int]) -> str:
    return " ".join(f"{k}:{n}" for k, n in sorted(hist.items()))


def drafter_words(stats: Stats, drafting: bool) -> str:
    """How the drafter did, in the one wording every view uses (no rate when nothing was
    drafted: 0 rounds measure nothing)."""
    rounds = len(stats.draft_rounds)
    if not drafting:
        return "drafter off"
    if not rounds:
        return "drafter on · 0 draft rounds"
    copied = f" ({stats.lookup_rounds} by lookup)" if stats.lookup_rounds else ""
    return (f"acceptance {_pct(stats.acceptance_rate)} "
            f"({stats.mean_accepted_per_round:.2f}/round) · {rounds} draft rounds{copied}")


def stats_parts(
    stats: Stats,
    drafting: bool = True,
    turn: int | None = None,
    cached: int | None = None,
    interrupted: bool = False,
    load_s: float | None = None,
) -> list[str]:
    """Everything about one answer, as the phrases of its stats line. `load_s`: the time
    to load (said when over a second: TTFT is the prefill alone)."""
    parts = []
    if turn is not None:
        parts.append(f"turn {turn}")
    parts.append(f"{stats.generated_tokens} tokens")
    parts.append(f"{stats.tokens_per_s:.1f} tok/s")
    prefill = f"prefill {stats.prompt_tokens} tok"
    if cached is not None:
        prefill += f" (cached {cached})"
    parts.append(prefill)
    parts.append(f"TTFT {stats.ttft_s:.2f} s")
    if load_s is not None and load_s > 1.0:
        parts.append(f"load {load_s:.1f} s")
    parts.append(drafter_words(stats, drafting))
    if drafting and stats.redone_rounds:
        parts.append(f"{stats.redone_rounds} redone ({_pct(stats.redo_rate)})")
    parts.append(f"peak {_peak_gb():.2f} GB")
    if interrupted:
        parts.append("interrupted")
    elif stats.finish_reason:
        parts.append(f"finish {stats.finish_reason}")
    warning = collapse_warning(stats) if drafting else None
    if warning:
        parts.append(f"warning: {warning}")
    return parts


def stats_line(stats: Stats, drafting: bool = True, **kw) -> str:
    """Everything about one answer in one line (stderr after `generate`, under a chat turn)."""
    return SEPARATOR.join(stats_parts(stats, drafting, **kw))


def wrap_on_separators(parts: list[str], width: int) -> list[str]:
    """The phrases joined by SEPARATOR into lines of at most `width` cells, broken only
    between phrases (a phrase longer than a line gets a line of its own)."""
    from rich.cells import cell_len

    lines: list[str] = []
    for part in parts:
        joined = f"{lines[-1]}{SEPARATOR}{part}" if lines else part
        if lines and cell_len(joined) <= width:
            lines[-1] = joined
        else:
            lines.append(part)
    return lines


def _peak_gb() -> float:
    if "mlx.core" not in sys.modules:
        return 0.0
    from .stats import peak_memory_gb

    return peak_memory_gb()


# -- the live status panel ------------------------------------------------------------------
class RateMeter:
    """Tokens/s over the last few rounds (the 'current' speed)."""

    def __init__(self, window: int = 8):
        self.recent: deque[tuple[int, float]] = deque(maxlen=window)

    def add(self, chunk: Chunk) -> None:
        if chunk.round is not None:
            self.recent.append((chunk.round.emitted, chunk.round.seconds))

    @property
    def current(self) -> float:
        seconds = sum(s for _, s in self.recent)
        return sum(n for n, _ in self.recent) / seconds if seconds > 0 else 0.0


def status_panel(
    stats: Stats,
    drafting: bool,
    current_rate: float | None = None,
    draft_len: int | None = None,
    title: str | None = None,
) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    speed = f"{stats.tokens_per_s:.1f} tok/s avg"
    if current_rate is not None:
        speed = f"{current_rate:.1f} tok/s now · " + speed
    grid.add_row("speed", f"{speed} · {stats.generated_tokens} tokens")
    grid.add_row(
        "prefill",
        f"{stats.prompt_tokens} tok · {stats.prefill_tokens_per_s:.0f} tok/s · "
        f"TTFT {stats.ttft_s:.2f} s · peak {_peak_gb():.2f} GB",
    )
    words = drafter_words(stats, drafting).removeprefix("drafter ")  # the row says "drafter"
    if drafting:
        now = f" · draft length {draft_len}" if draft_len is not None else ""
        grid.add_row("drafter", words + now)
        if stats.draft_rounds:  # rounds whose verify was too near a tie: redone plainly
            grid.add_row("exactness", f"redone {stats.redone_rounds} "
                                      f"({_pct(stats.redo_rate)}) · "
                                      f"decode width {stats.decode_width}")
        hist = stats.accepted_histogram
        if hist:
            grid.add_row("accepted/round", f"[{sparkline(hist)}] {histogram_text(hist)}")
        pos = stats.per_position_acceptance
        if pos:
            grid.add_row("per position", " ".join(f"{i}:{_pct(p)}" for i, p in enumerate(pos, 1)))
        warning = collapse_warning(stats)
        if warning:
            grid.add_row("[yellow]warning[/]", Text(warning, style="yellow"))
    else:
        grid.add_row("drafter", words)
    return Panel(grid, title=title, title_align="left", border_style="dim", expand=False)


class _Tail:
    """The last lines of a renderable that fit above the status panel."""

    def __init__(self, renderable, reserve: int):
        self.renderable = renderable
        self.reserve = reserve

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(self.renderable, options.update(height=None), pad=False)
        room = max(1, (options.max_height or console.height) - self.reserve)
        for line in lines[-room:]:
            yield from line
            yield Segment.line()


_CONTROL = {c: None for c in range(32) if chr(c) not in "\n\t"} | {127: None}


def _printable(text: str) -> str:
    """The text without C0 control characters, which would move a terminal's cursor."""
    return text.translate(_CONTROL)


# -- views ------------------------------------------------------------------------------------
class PlainView:
    """Text as it comes to `out` (flushed per piece); the stats line to `err`."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, show_stats=True):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.show_stats = show_stats
        self.text = ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add(self, chunk: Chunk) -> None:
        if chunk.text:
            self.text += chunk.text
            self.out.write(chunk.text)
            self.out.flush()

    def finish(self, stats: Stats | None, drafting: bool, interrupted=False, **line_kw) -> None:
        if self.text and not self.text.endswith("\n"):
            self.out.write("\n")
        self.out.flush()
        if self.show_stats and stats is not None:
            self.err.write(stats_line(stats, drafting, interrupted=interrupted, **line_kw) + "\n")
            self.err.flush()


class StreamView:
    """Rich Live: the answer as Markdown, the status panel under it; printed in full at the end."""

    def __init__(self, console: Console, drafting: bool, markdown: bool = True, title=None):
        self.console = console
        self.drafting = drafting
        self.markdown = markdown
        self.title = title
        self.text = ""
        self.stats: Stats | None = None
        self.meter = RateMeter()
        self.draft_len: int | None = None
        self.live = Live(
            console=console,
            refresh_per_second=8,
            transient=True,
            vertical_overflow="crop",
            get_renderable=self._render,
        )

    def _body(self):
        from rich.markdown import Markdown  # (markdown-it: imported only for a terminal)

        text = _printable(self.text)
        return Markdown(text) if self.markdown else Text(text)

    def _render(self):
        if self.stats is None:
            return Text("…", style="dim")
        panel = status_panel(
            self.stats, self.drafting, self.meter.current, self.draft_len, self.title
        )
        reserve = len(self.console.render_lines(panel, pad=False)) + 1
        return Group(_Tail(self._body(), reserve), panel)

    def __enter__(self):
        self.live.start()
        return self

    def __exit__(self, *exc):
        self.live.stop()
        return False

    def add(self, chunk: Chunk) -> None:
        self.text += chunk.text
        self.stats = chunk.stats
        self.meter.add(chunk)
        if chunk.round is not None and chunk.round.draft_len:
            self.draft_len = chunk.round.draft_len

    def finish(self, stats: Stats | None, drafting: bool, interrupted=False, **line_kw) -> None:
        self.live.stop()
        if self.text:
            self.console.print(self._body())
        if stats is not None:  # wrapped between phrases, never inside one
            parts = stats_parts(stats, drafting, interrupted=interrupted, **line_kw)
            lines = wrap_on_separators(parts, self.console.width)
            self.console.print(Text("\n".join(lines), style="dim"))


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def make_view(drafting: bool, markdown: bool = True, out: TextIO | None = None, title=None):
    """A live Rich view on a terminal, plain text otherwise."""
    out = out or sys.stdout
    if is_terminal(out):
        return StreamView(Console(file=out), drafting, markdown, title)
    return PlainView(out)
