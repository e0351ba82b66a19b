"""Peer baseline: Hugging Face transformers decoding a Gemma 4 text model of a real shape.

    python3 bench/transformers_peer.py --family E2B E4B --prompt 256 --tokens 64 --runs 3

Runs with torch + transformers (not MLX; CI never needs it): random bf16 weights of the
released shape (bench/shapes.py), greedy, no EOS stop, default dynamic cache. Decode
tokens/s = (N - 1) / (t(N new tokens) - t(1 new token)), so prefill is not counted;
medians over --runs. Compare with our no-draft decoding (baseline_vs_mlx_lm.py --bits 16
--dtype bfloat16) of the same shape on the same machine. Speed does not depend on the
weight values for the dense models; the MoE model's routing does, so its figure is
indicative.
"""

from __future__ import annotations

import argparse
import statistics
import time

from shapes import FAMILIES, ROPE, text_config


def build(family: str, layers: int | None, device: str):
    import torch
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4ForCausalLM

    cfg = text_config(family, layers)
    cfg.pop("sliding_window_pattern")
    config = Gemma4TextConfig(**cfg, rope_parameters=ROPE, hidden_activation="gelu_pytorch_tanh")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = Gemma4ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    return model.eval()


def timed_generate(model, ids, n: int, sync) -> float:
    import torch

    with torch.inference_mode():
        sync()
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
        sync()
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - t


def main(argv=None):
    import torch

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--family", nargs="+", default=["E2B", "E4B"], choices=FAMILIES)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {name}")
    print("| model (random bf16 weights) | prompt | new tokens | prefill + 1 token (s) | "
          "decode tok/s |")
    print("|---|---|---|---|---|")
    for family in args.family:
        model = build(family, args.layers, device)
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 262144, (1, args.prompt), generator=gen).to(device)
        timed_generate(model, ids, 4, sync)  # warm-up
        first, full = [], []
        for _ in range(args.runs):
            first.append(timed_generate(model, ids, 1, sync))
            full.append(timed_generate(model, ids, args.tokens, sync))
        t1, tn = statistics.median(first), statistics.median(full)
        layers = f" ({args.layers} layers)" if args.layers else ""
        print(f"| {family}{layers} | {args.prompt} | {args.tokens} | {t1:.3f} | "
              f"{(args.tokens - 1) / (tn - t1):.1f} |", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
