"""One draft step's time (median ms) of a drafter and of the same drafter deepened to more
layers (`distill.deepen`), against one plain target step, at a given context length; and
four draft steps right after a target step (as a K = 4 round drafts, the weights no longer
in cache), alternated: decoding's own `Decoder.draft` with numpy's step
(`gemma4_assistant_host`, "host_step": its head as 8-bit rows where that pays, host_gemv;
"host_step_float32_head": the float32 head) and with MLX's step ("mlx_step": the head's product
through sgemv, `one_row_logits`), and MLX's step with MLX's matmul for the head too.

    cd bench && OPENBLAS_NUM_THREADS=1 ../.venv/bin/python draft_step_cost.py \\
        --target /work/runs/g3_270m_pair/target --drafter ../gemma_mtp_mlx/data/gemma3-270m-drafter
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import common as C


def main(argv=None):
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model

    from gemma_mtp_mlx.decoding import Decoder, Session
    from gemma_mtp_mlx.distill import build_drafter, deepen
    from gemma_mtp_mlx.loading import load_drafter, load_target, read_config

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--drafter", required=True)
    p.add_argument("--layers", type=int, nargs="*", default=[4])
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--runs", type=int, default=40)
    args = p.parse_args(argv)
    target = load_target(Path(args.target))
    config = {k: v for k, v in read_config(Path(args.drafter)).items()
              if k not in ("quantization", "dtype")}
    base = build_drafter(config)
    base.load_weights(tree_flatten(dequantize_model(load_drafter(args.drafter)).parameters()))
    cache = target.make_cache()
    mx.eval(target(mx.array([[2] + [100 + i for i in range(args.context - 1)]]), cache))
    shared = target.shared_kv(cache)
    x = mx.random.normal((1, 1, 2 * target.hidden_size))
    last = mx.array([[7]])
    out = {"context": args.context}

    def plain_step():
        mx.eval(target(last, cache))
        for c in cache:
            c.trim(1)  # stay at the same context

    out["target_step_ms"] = C.median_ms(plain_step, args.runs)
    for n, (_, d) in [(config["text_config"]["num_hidden_layers"], (config, base))] + [
            (n, deepen(base, config, n)) for n in args.layers]:
        out[f"draft_step_ms_{n}_layers"] = C.median_ms(
            lambda d=d: mx.eval(d.propose(x, args.context, shared)), args.runs)
    session = Session(target, cache=cache, pending=7, carry=x[..., target.hidden_size:])
    with_host, without = Decoder(target, base), Decoder(target, base, host_draft=False)
    float_head = Decoder(target, base)
    float_head.host_step().head_rows = None  # its head in float32 (before host_gemv)
    drafts = {
        "host_step": lambda: mx.eval(with_host.draft(session, 4)[0]),
        "host_step_float32_head": lambda: mx.eval(float_head.draft(session, 4)[0]),
        "mlx_step": lambda: mx.eval(without.draft(session, 4)[0]),
        "mlx_step_mlx_matmul": lambda: [mx.eval(base.propose(x, args.context, shared))
                                        for _ in range(4)],
    }
    for _ in range(2):  # alternated
        for name, draft in drafts.items():
            out.setdefault(f"four_steps_after_target_ms_{name}", []).append(
                round(after_target(draft, plain_step, args.runs), 2))
    print(json.dumps(out, indent=1))


def after_target(draft, target_step, runs: int) -> float:
    """Median ms of `draft`, each run after a target step (which evicts the drafter)."""
    times = []
    for _ in range(runs):
        target_step()
        t = time.perf_counter()
        draft()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


if __name__ == "__main__":
    main()
