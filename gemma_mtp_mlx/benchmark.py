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



def bench_table(rows: list[dict], texts: list[str], model: str, runs: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"gemma-mtp bench · {model} · greedy · medians of {runs} run(s)",
        title_justify="left",
    )
    for col in (
        "prompt",
        "mode",
        "tokens",
        "tok/s",
        "speedup",
        "acceptance",
        "acc/round",
        "redone",
        "TTFT s",
        "peak GB",
        "same output",
    ):
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
        plain = r["mode"] == "plain"
        table.add_row(
            label,
            r["mode"],
            str(r["tokens"]),
            f"{r['tokens_per_s']:.1f}",
            "1.00x" if plain else f"{r['speedup']:.2f}x",
            "" if plain else f"{100 * r['acceptance_rate']:.0f}%",
            "" if plain else f"{r['mean_accepted_per_round']:.2f}",
            "" if plain else f"{100 * r.get('redo_rate', 0.0):.0f}%",
            f"{r['ttft_s']:.3f}",
            f"{r['peak_memory_gb']:.2f}",
            "yes" if r["identical"] else "[bold red]NO[/]",
        )
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 132)
    console.print(table)


def run_bench(pair, texts, max_tokens, runs, num_draft, make_decoder):
    """Each prompt with and without the drafter (and each fixed K), greedy, `runs` times:
    one row of medians per prompt and mode, and every run that differs from plain decoding."""
    import mlx.core as mx

    from .generate import encode_prompt, generate
    from .sampling import SamplingParams

    greedy = SamplingParams()
    modes = [("plain", False, None), ("mtp auto", True, "auto")]
    modes += [("mtp heuristic", True, "heuristic")]
    modes += [(f"mtp k={k}", True, k) for k in dict.fromkeys(num_draft)]
    prompt_ids = [encode_prompt(pair.tokenizer, t) for t in texts]
    decoders = {name: make_decoder(pair, greedy, use) for name, use, _ in modes}
    for name, use, k in modes:  # warm up: compile kernels, allocate
        generate(
            pair,
            prompt_ids[0],
            max_tokens=min(8, max_tokens),
            num_draft=k,
            use_drafter=use,
            decoder=decoders[name],
        )

    rows, mismatches = [], []
    for p, ids in enumerate(prompt_ids, 1):
        reference = None
        base_speed = None
        for name, use, k in modes:
            results = []
            for _ in range(runs):
                if hasattr(mx, "reset_peak_memory"):
                    mx.reset_peak_memory()
                res = generate(
                    pair,
                    ids,
                    max_tokens=max_tokens,
                    num_draft=k,
                    use_drafter=use,
                    decoder=decoders[name],
                )
                results.append((res, res.stats.to_dict()))
                if reference is None:
                    reference = res.token_ids
                elif res.token_ids != reference:
                    at = first_difference(reference, res.token_ids)
                    mismatches.append({"prompt": p, "mode": name, "first_difference": at})

            def med(key, results=results):
                return statistics.median(d[key] for _, d in results)

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
                    "acceptance_rate": round(med("acceptance_rate"), 4),
                    "mean_accepted_per_round": round(med("mean_accepted_per_round"), 3),
                    "redo_rate": round(med("redo_rate"), 4),
                    "ttft_s": round(med("ttft_s"), 4),
                    "peak_memory_gb": round(max(d["peak_memory_gb"] for _, d in results), 3),
                    "identical": all(r.token_ids == reference for r, _ in results),
                }
            )

    return rows, mismatches
