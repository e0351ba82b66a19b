"""Startup: from process start to the first token, and where the time goes.

Runs `gemma-mtp generate --raw -n 1 --json` in fresh processes (the default model, so with
no network and nothing cached: the bundled Gemma 3 270M, already converted: a warm cache)
and times the first byte on stdout (the JSON comes right after the one token). The phases
come from the run's own `load_phases` (startup: interpreter and CLI imports; resolve: which
model, the hub check; imports: MLX and the model code; model: building it lazily;
tokenizer; weights: reading them; calibration: first-use measurements with a drafter) and
`ttft_s` (the prefill). Medians over --runs, one warm-up run first (page cache).

    python bench/startup.py --runs 5
    python bench/startup.py --runs 5 --network-down   # HF_HUB_OFFLINE unset, hub refusing
    python bench/startup.py --runs 5 -- -m out/e4b-4bit
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

PROMPT = "The capital of France is"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(network_down: bool) -> dict:
    env = dict(os.environ)
    if network_down:  # the common newcomer case: nobody set HF_HUB_OFFLINE
        env.pop("HF_HUB_OFFLINE", None)
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    else:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def one_run(extra: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "gemma_mtp_mlx", "generate", "--raw", "--prompt", PROMPT,
           "-n", "1", "--json", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(1)
    first_byte = time.perf_counter() - start
    out = first + proc.stdout.read()
    err = proc.stderr.read()
    if proc.wait() != 0 or not first:
        sys.exit(f"run failed: {err.decode(errors='replace').strip()}")
    data = json.loads(out)
    return {"first_byte_s": first_byte, "wall_s": time.perf_counter() - start,
            "ttft_s": data["ttft_s"], "load_s": data.get("load_s", 0.0),  # (older releases:
            **data.get("load_phases", {})}                                  # no phases)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--network-down", action="store_true")
    p.add_argument("extra", nargs="*", help="more generate options (after --)")
    args = p.parse_args()
    env = environment(args.network_down)
    one_run(args.extra, env)  # warm-up: the page cache, a first conversion if any
    runs = [one_run(args.extra, env) for _ in range(args.runs)]
    keys = list(dict.fromkeys(k for r in runs for k in r))
    medians = {k: round(statistics.median(r.get(k, 0.0) for r in runs), 3) for k in keys}
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(json.dumps({"runs": args.runs, "network_down": args.network_down,
                      "load_average_1min": float(load), "median": medians,
                      "first_byte_s": [round(r["first_byte_s"], 2) for r in runs]}, indent=1))


if __name__ == "__main__":
    main()
