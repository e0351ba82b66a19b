"""Helpers of `gemma-mtp bench`: prompts in, a table of medians out."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .errors import fail

BENCH_PROMPTS = (
    "Explain how a hash map works, with a short Python example.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List the planets of the solar system with one fact about each.",
)


def load_prompts(path: Path | None) -> list[str]:
    if path is None:
        return list(BENCH_PROMPTS)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        fail(f"{path}: {e.strerror or e}", 2)
    prompts = []
    for line in lines:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            item = line
        if isinstance(item, dict):
            item = item.get("prompt", "")
        if isinstance(item, str) and item.strip():
            prompts.append(item)
        elif not isinstance(item, str):
            prompts.append(line)
    if not prompts:
        fail(f"{path}: no prompts (one per line, or JSON lines with a 'prompt' key)", 2)
    return prompts


def first_difference(a: list[int], b: list[int]) -> int:
    same = (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return next(same, min(len(a), len(b)))



COLUMNS = ("prompt", "mode", "tokens", "tok/s", "speedup", "acceptance", "acc/round", "redone",
           "TTFT s", "peak GB", "same output")
# nothing to compare without a drafter
DRAFTER_COLUMNS = ("speedup", "acceptance", "acc/round", "redone", "same output")


def bench_table(rows: list[dict], texts: list[str], model: str, runs: int,
                drafting: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"gemma-mtp bench · {model} · greedy · medians of {runs} run(s)"
    if not drafting:
        title += " · no drafter: plain decoding only"
    table = Table(title=title, title_justify="left")
    columns = [c for c in COLUMNS if drafting or c not in DRAFTER_COLUMNS]
    for col in columns:
        table.add_column(col, justify="left" if col in ("prompt", "mode") else "right")
    last_prompt = None
    for r in rows:
        label = ""
        if r["prompt"] != last_prompt:
            text = texts[r["prompt"] - 1].replace("\n", " ")
            label = f"{r['prompt']}. {text[:28]}{'…' if len(text) > 28 else ''}"
            if last_prompt is not None:
                table.add_section()
            last_prompt = r["prompt"]
        cells = dict(zip(COLUMNS, _cells(r, label), strict=True))
        table.add_row(*(cells[c] for c in columns))
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 132)
    console.print(table)


def _cells(r: dict, label: str) -> list[str]:
    plain = r["mode"] == "plain"
    measured = r["acceptance_rate"] is not None
    return [
        label,
        r["mode"],
        str(r["tokens"]),
        f"{r['tokens_per_s']:.1f}",
        "1.00x" if plain else f"{r['speedup']:.2f}x",
        "" if plain else f"{100 * r['acceptance_rate']:.0f}%" if measured else "–",
        "" if plain else f"{r['mean_accepted_per_round']:.2f}" if measured else "–",
        "" if plain else f"{100 * r['redo_rate']:.0f}%" if measured else "–",
        f"{r['ttft_s']:.3f}",
        f"{r['peak_memory_gb']:.2f}",
        "yes" if r["identical"] else "[bold red]NO[/]",
    ]


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def bench_modes(drafting: bool, fixed: tuple[int, ...]) -> list[tuple[str, str | int]]:
    """(row name, Request.draft) of each mode: plain first (the reference), then the drafter's."""
    if not drafting:
        return [("plain", "off")]
    modes = [("plain", "off"), ("mtp auto", "auto"), ("mtp heuristic", "heuristic")]
    return modes + [(f"mtp k={k}", k) for k in dict.fromkeys(fixed)]


def run_bench(engine, texts, max_tokens, runs, num_draft, on_row=None, lookup=True):
    """Each prompt with and without the drafter (and each fixed K), greedy, `runs` times:
    one row of medians per prompt and mode, and every run that differs from plain decoding.
    `on_row(row, of)`: called as each row is done (`of`: how many rows there will be).
    `lookup`: Request.lookup of the drafting modes."""
    import mlx.core as mx

    from .request import Request

    modes = bench_modes(engine.drafting, tuple(num_draft))
    prompt_ids = [engine.encode(t) for t in texts]
    for _, draft in modes:  # warm up: compile kernels, allocate
        engine.run(prompt_ids[0], Request(max_tokens=min(8, max_tokens), draft=draft,
                                          lookup=lookup))

    rows, mismatches = [], []
    for p, ids in enumerate(prompt_ids, 1):
        reference = None
        base_speed = None
        for name, draft in modes:
            request = Request(max_tokens=max_tokens, draft=draft, lookup=lookup)
            results = []
            for _ in range(runs):
                if hasattr(mx, "reset_peak_memory"):
                    mx.reset_peak_memory()
                res = engine.run(ids, request)
                results.append((res, res.stats.to_dict()))
                if reference is None:
                    reference = res.token_ids
                elif res.token_ids != reference:
                    at = first_difference(reference, res.token_ids)
                    mismatches.append({"prompt": p, "mode": name, "first_difference": at})

            def med(key, results=results):  # None when no run measured it (no drafts)
                values = [d[key] for _, d in results if d[key] is not None]
                return statistics.median(values) if values else None

            speed = med("tokens_per_s")
            if base_speed is None:
                base_speed = speed
            rows.append(
                {
                    "prompt": p,
                    "mode": name,
                    "tokens": results[0][1]["generated_tokens"],
                    "tokens_per_s": round(speed, 2),
                    "speedup": round(speed / base_speed, 3) if base_speed else 0.0,
                    "acceptance_rate": _round(med("acceptance_rate"), 4),
                    "mean_accepted_per_round": _round(med("mean_accepted_per_round"), 3),
                    "redo_rate": _round(med("redo_rate"), 4),
                    "ttft_s": round(med("ttft_s"), 4),
                    "peak_memory_gb": round(max(d["peak_memory_gb"] for _, d in results), 3),
                    "identical": all(r.token_ids == reference for r, _ in results),
                }
            )
            if on_row is not None:
                on_row(rows[-1], len(prompt_ids) * len(modes))

    return rows, mismatches
