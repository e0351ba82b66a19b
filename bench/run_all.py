"""Run the benchmark scripts (`make bench`). Benchmarks print tables; nothing passes or fails.

    .venv/bin/python bench/run_all.py --quick --append     # a small subset
    .venv/bin/python bench/run_all.py --append             # everything (hours on a CPU)

--quick on a CPU uses reduced depth and short prompts, because the MLX CPU backend's
4-bit matmul costs grow linearly with the number of rows (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUICK = [
    ["pass_costs.py", "--family", "E2B", "--layers", "10", "--bits", "4", "16",
     "--widths", "1", "2", "3", "5", "9", "--contexts", "512", "--reps", "1"],
    ["pass_costs.py", "--family", "E4B", "--layers", "12", "--bits", "4",
     "--widths", "1", "3", "5", "--contexts", "512", "--reps", "1"],
    ["pass_costs.py", "--family", "31B", "--bits", "4", "--widths", "1", "3", "5",
     "--contexts", "512", "--reps", "1"],
    ["acceptance.py", "--family", "E2B", "--layers", "10", "--bits", "4", "--alpha", "0.8",
     "--k", "2", "4", "--prompt", "16", "--tokens", "16", "--runs", "2"],
    ["acceptance.py", "--family", "E4B", "--layers", "6", "--bits", "4", "--alpha", "0.8",
     "--k", "2", "4", "--prompt", "16", "--tokens", "16", "--runs", "2"],
    ["baseline_vs_mlx_lm.py", "--family", "E2B", "E4B", "--layers", "6", "--bits", "4",
     "--prompt", "16", "--tokens", "12", "--runs", "3"],
    ["memory.py", "--family", "E2B", "E4B", "--layers", "6", "--bits", "4", "--prompt", "16",
     "--tokens", "8"],
]
FULL = [
    ["pass_costs.py", "--family", "E2B", "E4B", "26B-A4B", "31B", "--bits", "4", "16"],
    ["acceptance.py", "--family", "E2B", "E4B", "26B-A4B", "31B", "--bits", "4", "16"],
    ["baseline_vs_mlx_lm.py", "--family", "E2B", "E4B", "26B-A4B", "31B", "--bits", "4", "16"],
    ["memory.py", "--family", "E2B", "E4B", "26B-A4B", "31B", "--bits", "4", "16"],
]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--append", action="store_true", help="append every table to BENCHMARKS.md")
    p.add_argument("--device", choices=["cpu", "gpu"], default=None)
    p.add_argument("--only", nargs="*", default=None, help="script names to run")
    args = p.parse_args()
    extra = (["--append"] if args.append else []) + (["--device", args.device]
                                                      if args.device else [])
    for cmd in QUICK if args.quick else FULL:
        if args.only and cmd[0] not in args.only:
            continue
        print(f"\n== {' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:], *extra], cwd=HERE,
                       check=False)


if __name__ == "__main__":
    main()
