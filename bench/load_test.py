"""Load test of `gemma-mtp serve`: N clients x M streamed requests, bounded in count and time.

    python bench/load_test.py --model tests/fixtures/e2b_tiny --clients 4 --requests 3
    python bench/load_test.py --url http://127.0.0.1:8080/v1 --clients 8 --requests 5

Starts the server itself (on a free port) unless --url is given. Each client sends its
requests one after another with the official `openai` client (streamed text completions, so
a base model serves too; --chat for chat completions). Reports requests/s, time to first
token and decode tokens/s percentiles, and checks that every request ended with a finish
reason and usage, and that none failed or was lost.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import openai

PROMPTS = (
    "The history of the printing press",
    "def fibonacci(n):",
    "A recipe for bread: first,",
    "Les montagnes du Jura sont",
    "The three laws of motion are",
    "Dear diary, today I",
)


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "gemma_mtp_mlx", "serve", "-m", model, "--port", "0",
           "--max-queue", "1000", *extra]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    for line in proc.stderr:
        sys.stderr.write(line)
        if m := re.search(r"(http://[\d.]+:\d+/v1)", line):
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit("the server did not start")


def one_request(client: openai.OpenAI, prompt: str, args) -> dict:
    t0 = time.perf_counter()
    first = None
    usage = finish = None
    text = []
    kw = dict(model="m", max_tokens=args.max_tokens, stream=True,
              stream_options={"include_usage": True}, temperature=args.temperature)
    if args.chat:
        stream = client.chat.completions.create(
            messages=[{"role": "user", "content": prompt}], **kw)
    else:
        stream = client.completions.create(prompt=prompt, **kw)
    for chunk in stream:
        if chunk.choices:
            c = chunk.choices[0]
            piece = (c.delta.content if args.chat else c.text) or ""
            if piece and first is None:
                first = time.perf_counter() - t0
            text.append(piece)
            finish = c.finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    total = time.perf_counter() - t0
    tokens = usage.completion_tokens if usage else 0
    decode = total - (first or total)
    return {"ttft": first, "seconds": total, "tokens": tokens, "finish": finish,
            "usage": usage is not None,
            "tokens_per_s": (tokens - 1) / decode if tokens > 1 and decode > 0 else None}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running server's /v1 address")
    p.add_argument("--model", default="tests/fixtures/e2b_tiny", help="served model (no --url)")
    p.add_argument("--serve-args", default="", help="extra `gemma-mtp serve` options")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=3, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--chat", action="store_true", help="chat completions (needs a template)")
    p.add_argument("--timeout", type=float, default=600, help="seconds for the whole test")
    p.add_argument("--request-timeout", type=float, default=120, help="seconds per request")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.model, args.serve_args.split())
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0,
                           timeout=args.request_timeout)
    jobs = [(c, PROMPTS[(c + r) % len(PROMPTS)]) for c in range(args.clients)
            for r in range(args.requests)]
    results, errors = [], []

    def client_loop(c: int):
        for _, prompt in [j for j in jobs if j[0] == c]:
            try:
                results.append(one_request(client, prompt, args))
            except Exception as e:  # counted, reported: the test is about failures too
                errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(args.clients)
    try:
        _, late = wait([pool.submit(client_loop, c) for c in range(args.clients)],
                       timeout=args.timeout)
        wall = time.perf_counter() - t0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # the bound holds even if a request hangs
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    complete = [r for r in results if r["finish"] and r["usage"]]
    errors += [f"no finish reason or usage: {r}" for r in results if r not in complete]
    report = {
        "clients": args.clients, "requests": len(jobs), "completed": len(complete),
        "failed": len(errors), "lost": len(jobs) - len(complete) - len(errors),
        "unfinished_clients": len(late), "wall_s": round(wall, 2),
        "requests_per_s": round(len(complete) / wall, 3),
        "ttft_s": {f"p{int(q * 100)}": round(pct([r["ttft"] for r in complete if r["ttft"]], q), 3)
                   for q in (0.5, 0.9, 0.99)},
        "tokens_per_s": {f"p{int(q * 100)}": round(pct(
            [r["tokens_per_s"] for r in complete if r["tokens_per_s"]], q), 2)
            for q in (0.5, 0.9, 0.99)},
        "median_tokens": statistics.median([r["tokens"] for r in complete]) if complete else 0,
        "errors": errors[:5],
    }
    print(json.dumps(report, indent=None if args.json else 2))
    ok = report["completed"] == len(jobs) and not report["lost"] and not report["failed"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
