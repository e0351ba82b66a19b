"""The released Gemma 4 text and drafter shapes (no imports: the transformers peer
baseline reads them without loading MLX)."""

SW, FU = "sliding_attention", "full_attention"
VOCAB = 262144

# Text configs of the released targets (/work/shared/reference/gemma4-shapes.md).
# E4B (marked "look up" there): 42 layers, intermediate 10240, 8 heads, 2 KV heads,
# pattern 5 sliding + 1 full, 18 KV-shared layers, no double-wide MLP; checked against
# several public configs/ports of google/gemma-4-E4B(-it) text_config.
TARGETS = {
    "E2B": dict(hidden_size=1536, num_hidden_layers=35, intermediate_size=6144,
                num_attention_heads=8, num_key_value_heads=1, sliding_window=512,
                sliding_window_pattern=5, num_kv_shared_layers=20,
                hidden_size_per_layer_input=256, use_double_wide_mlp=True),
    "E4B": dict(hidden_size=2560, num_hidden_layers=42, intermediate_size=10240,
                num_attention_heads=8, num_key_value_heads=2, sliding_window=512,
                sliding_window_pattern=6, num_kv_shared_layers=18,
                hidden_size_per_layer_input=256, use_double_wide_mlp=False),
    "26B-A4B": dict(hidden_size=2816, num_hidden_layers=30, intermediate_size=2112,
                    num_attention_heads=16, num_key_value_heads=8,
                    num_global_key_value_heads=2, attention_k_eq_v=True, sliding_window=1024,
                    sliding_window_pattern=6, num_kv_shared_layers=0,
                    hidden_size_per_layer_input=0, use_double_wide_mlp=False,
                    enable_moe_block=True, num_experts=128, top_k_experts=8,
                    moe_intermediate_size=704),
    "31B": dict(hidden_size=5376, num_hidden_layers=60, intermediate_size=21504,
                num_attention_heads=32, num_key_value_heads=16, num_global_key_value_heads=4,
                attention_k_eq_v=True, sliding_window=1024, sliding_window_pattern=6,
                num_kv_shared_layers=0, hidden_size_per_layer_input=0,
                use_double_wide_mlp=False),
}
DRAFTERS = {
    "E2B": dict(hidden=256, inter=2048, heads=4, kv=1, gkv=None, keqv=False, win=512, ordered=True),
    "E4B": dict(hidden=256, inter=2048, heads=4, kv=2, gkv=None, keqv=False, win=512, ordered=True),
    "26B-A4B": dict(hidden=1024, inter=8192, heads=16, kv=8, gkv=2, keqv=True, win=1024,
                    ordered=False),
    "31B": dict(hidden=1024, inter=8192, heads=32, kv=16, gkv=4, keqv=True, win=1024,
                ordered=False),
}
FAMILIES = tuple(TARGETS)
# Rope per layer type, as the released configs' `rope_parameters` give it.
ROPE = {
    SW: {"rope_type": "default", "rope_theta": 10_000.0},
    FU: {"rope_type": "proportional", "partial_rotary_factor": 0.25,
         "rope_theta": 1_000_000.0},
}


def text_config(family: str, layers: int | None = None) -> dict:
    """The target's text config (Hugging Face field names), optionally cut to `layers`."""
    cfg = dict(TARGETS[family], vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB,
               head_dim=256, global_head_dim=512, final_logit_softcapping=30.0,
               tie_word_embeddings=True)
    full = cfg["num_hidden_layers"]
    if layers is not None and layers < full:
        # Keep the ratio of KV-shared layers (E models) and the layer pattern.
        shared = round(cfg["num_kv_shared_layers"] * layers / full)
        # The producers must hold at least one layer of each type.
        p = cfg["sliding_window_pattern"]
        cfg["num_kv_shared_layers"] = max(0, min(shared, layers - p))
        cfg["num_hidden_layers"] = layers
    p = cfg.pop("sliding_window_pattern")
    pattern = [SW] * (p - 1) + [FU]
    n = cfg["num_hidden_layers"]
    cfg["layer_types"] = (pattern * (n // p + 1))[:n]
    cfg["sliding_window_pattern"] = p
    return cfg
