"""`gemma-mtp convert`: layout, losslessness, streaming memory, validation, atomicity, Hub."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from gemma_mtp_mlx.convert import ConvertError, cache_name, convert_pair, resolve_model
from gemma_mtp_mlx.convert import writer as writer_mod
from gemma_mtp_mlx.decoding import Decoder, DraftSchedule, Session
from gemma_mtp_mlx.loading import load_drafter, load_pair, load_target

FIX = Path(__file__).parent / "fixtures"
E2B, DENSE, MOE = FIX / "e2b_tiny", FIX / "dense31b_tiny", FIX / "moe26b_tiny"


def _need(*paths):
    for p in paths:
        if not (p / "target" / "config.json").is_file():
            pytest.skip(f"fixture {p.name} not built")


def weights_of(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("model*.safetensors")):
        out.update(mx.load(str(f)))
    return out


def prompt(fixture: Path) -> tuple[list[int], np.ndarray]:
    ref = np.load(fixture / "reference.npz")
    return ref["prompt_ids"].tolist(), ref["prompt_logits"]


def logits_of(target, ids: list[int]) -> np.ndarray:
    out, _ = target(mx.array(ids, dtype=mx.uint32)[None], target.make_cache())
    return np.array(out[0].astype(mx.float32))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each fixture pair converted at float32 (unquantized), 8 and 4 bits."""
    _need(E2B, DENSE)
    root = tmp_path_factory.mktemp("converted")
    out = {}
    for fx in (E2B, DENSE):
        for bits in (None, 8, 4):
            out[fx.name, bits] = convert_pair(
                str(fx / "target"),
                str(fx / "drafter"),
                root / f"{fx.name}-{bits}",
                bits=bits,
                dtype="float32",
                progress=False,
            )
    return out


# -- layout ----------------------------------------------------------------------------


def test_layout_and_manifest(converted):
    out = converted["e2b_tiny", 4]
    assert sorted(p.name for p in out.iterdir()) == ["drafter", "manifest.json", "target"]
    for part in ("target", "drafter"):
        names = {p.name for p in (out / part).iterdir()}
        assert {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= names
        assert {"chat_template.jinja", "generation_config.json"} <= names
        index = json.loads((out / part / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(weights_of(out / part))
    m = json.loads((out / "manifest.json").read_text())
    assert m["bits"] == 4 and m["drafter_bits"] == 4 and m["group_size"] == 64
    assert m["dtype"] == "float32" and m["version"]
    assert m["target"]["revision"] == str((E2B / "target").resolve())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left

    cfg = json.loads((out / "target" / "config.json").read_text())
    assert cfg["model_type"] == "gemma4" and cfg["vocab_size"] == 512
    assert cfg["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert cfg["quantization_config"] == cfg["quantization"]
    w = weights_of(out / "target")
    assert all(k.startswith("language_model.model.") for k in w)
    # Quantized: 64-wide inputs. Not: norms, scalars, the 16-wide per-layer projection.
    assert w["language_model.model.layers.0.mlp.down_proj.weight"].dtype == mx.uint32
    assert "language_model.model.embed_tokens.scales" in w
    assert w["language_model.model.layers.0.per_layer_projection.weight"].dtype == mx.float32
    assert w["language_model.model.layers.0.layer_scalar"].dtype == mx.float32
    assert w["language_model.model.norm.weight"].dtype == mx.float32

    d = weights_of(out / "drafter")
    assert d["masked_embedding.centroids.weight"].dtype == mx.float32
    assert d["masked_embedding.token_ordering"].dtype == mx.int32
    assert d["pre_projection.weight"].dtype == mx.uint32  # 128 wide
    assert d["model.embed_tokens.weight"].dtype == mx.float32  # 32 wide: not a multiple of 64
    dcfg = json.loads((out / "drafter" / "config.json").read_text())
    assert dcfg["model_type"] == "gemma4_assistant" and dcfg["quantization"]["bits"] == 4


def test_unquantized_bf16_default(tmp_path):
    _need(E2B)
    out = convert_pair(str(E2B / "target"), None, tmp_path / "o", progress=False)
    assert not (out / "drafter").exists()
    w = weights_of(out / "target")
    assert {v.dtype for v in w.values()} == {mx.bfloat16}
    cfg = json.loads((out / "target" / "config.json").read_text())
    assert "quantization" not in cfg
    assert json.loads((out / "manifest.json").read_text())["drafter"] is None


@pytest.mark.parametrize("fixture,bits", [(E2B, 4), (MOE, 4), (MOE, 8)])
def test_same_as_mlx_lm_convert(tmp_path, fixture, bits):
    """Byte-identical weights and the same quantization config as `mlx_lm.convert`."""
    _need(fixture)
    from mlx_lm.convert import convert

    ref = tmp_path / "ref"
    convert(str(fixture / "target"), str(ref), quantize=True, q_bits=bits, dtype="float32")
    out = convert_pair(str(fixture / "target"), None, tmp_path / "o", bits=bits,
                       dtype="float32", max_shard_bytes=40_000, progress=False)  # fmt: skip
    a, b = weights_of(ref), weights_of(out / "target")
    assert len(list((out / "target").glob("model-*.safetensors"))) > 1  # sharded
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert mx.array_equal(a[k], b[k]).item(), k
    ca = json.loads((ref / "config.json").read_text())
    cb = json.loads((out / "target" / "config.json").read_text())
    assert ca["quantization"] == cb["quantization"]
    assert ca["quantization_config"] == cb["quantization_config"]
    assert ca["vocab_size"] == cb["vocab_size"] and ca["text_config"] == cb["text_config"]
    if fixture is MOE:  # the router stays at 8 bits, recorded per path as mlx-lm does
        assert cb["quantization"]["language_model.model.layers.0.router.proj"] == {
            "group_size": 64,
            "bits": 8,
        }


# -- numerics ----------------------------------------------------------------------------


def test_float32_conversion_is_exact(converted):
    for fx in (E2B, DENSE):
        ids, hf_logits = prompt(fx)
        direct = logits_of(load_target(fx / "target"), ids)
        conv = logits_of(load_target(converted[fx.name, None] / "target"), ids)
        np.testing.assert_allclose(conv, direct, atol=1e-5, rtol=0)
        np.testing.assert_allclose(conv, hf_logits, atol=2e-3, rtol=0)


def test_mlx_lm_load_matches_our_loader(converted):
    import mlx_lm

    for bits in (None, 4):
        out = converted["e2b_tiny", bits] / "target"
        model, _ = mlx_lm.load(str(out))
        ids, _ = prompt(E2B)
        theirs = np.array(model(mx.array(ids)[None])[0].astype(mx.float32))
        ours = logits_of(load_target(out), ids)
        np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)


def test_quantization_error(converted, capsys):
    """Quantized logits differ from float only by the weight rounding itself.

    The tiny fixtures are random (weights of std ~0.2, logits of std ~8), which
    amplifies rounding far more than a trained model does: the error is reported,
    and checked to be exactly that of running the dequantized weights in float.
    """
    from mlx_lm.utils import dequantize_model

    errors = {}
    for fx in (E2B, DENSE):
        ids, _ = prompt(fx)
        ref = logits_of(load_target(converted[fx.name, None] / "target"), ids)
        for bits in (8, 4):
            target = load_target(converted[fx.name, bits] / "target")
            q = logits_of(target, ids)
            errors[fx.name, bits] = float(np.abs(q - ref).max())
            dequantize_model(target.lm)
            # float32 rounding only (logits of std ~8): the dequantized weights run as plain
            # matmuls, the quantized ones through quantized_matmul, summing in other orders.
            np.testing.assert_allclose(logits_of(target, ids), q, atol=3e-4, rtol=0)
    with capsys.disabled():
        print("\nmax |logit error| vs float32:", {f"{k[0]}@{k[1]}": round(v, 3) for k, v in
                                                  errors.items()})  # fmt: skip
    for fx in (E2B, DENSE):
        assert 0 < errors[fx.name, 8] < errors[fx.name, 4]


class OracleDrafter:
    """The converted drafter, but proposing the known greedy continuation, wrong every 4th.

    The tiny random drafters almost never agree with their targets; this one makes
    the verify step accept multi-token blocks, on the quantized target."""

    def __init__(self, drafter, sequence: list[int], vocab: int):
        self.drafter, self.sequence, self.vocab = drafter, sequence, vocab
        self.last, self.i = None, 0

    def __call__(self, x, position, shared):
        _, carry = self.drafter(x, position, shared)
        self.i = self.i + 1 if position == self.last else 0
        self.last = position
        j = position + 1 + self.i
        token = self.sequence[j] if j < len(self.sequence) else 0
        if j % 4 == 3:
            token = (token + 1) % self.vocab
        return mx.eye(self.vocab)[token][None, None] * 10.0, carry


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("fixture", [E2B, DENSE])
def test_lossless_greedy(converted, fixture, bits):
    pair = load_pair(converted[fixture.name, bits])
    assert pair.drafter is not None
    ids, _ = prompt(fixture)
    ids = ids[:12]
    accepted = []

    def run(dec, k):
        events = list(dec.generate(Session(pair.target), ids, 20, DraftSchedule(fixed=k)))
        accepted.extend(e.round.accepted for e in events if e.round is not None)
        return [t for e in events for t in e.tokens]

    plain = run(Decoder(pair.target), 0)
    assert len(plain) == 20
    oracle = OracleDrafter(pair.drafter, ids + plain, pair.target.vocab_size)
    # The oracle is accepted, so it verifies blocks of every width 2..9; the real drafter
    # (mostly rejected: the redo and rollback paths) at a short, a middle and the longest K.
    for drafter, lengths in ((oracle, range(1, 9)), (pair.drafter, (1, 4, 8))):
        spec = Decoder(pair.target, drafter)  # one greedy-margin calibration for all k
        for k in lengths:
            assert run(spec, k) == plain, f"draft length {k}"
    assert sum(accepted) > 50  # the oracle's blocks were accepted


def test_drafter_bits_override(tmp_path):
    _need(E2B)
    out = convert_pair(str(E2B / "target"), str(E2B / "drafter"), tmp_path / "o", bits=4,
                       drafter_bits="none", progress=False)  # fmt: skip
    assert "quantization" not in json.loads((out / "drafter" / "config.json").read_text())
    assert weights_of(out / "drafter")["pre_projection.weight"].dtype == mx.bfloat16
    load_drafter(out / "drafter")
    out8 = convert_pair(str(E2B / "target"), str(E2B / "drafter"), tmp_path / "o8", bits=4,
                        drafter_bits=8, progress=False)  # fmt: skip
    assert json.loads((out8 / "drafter" / "config.json").read_text())["quantization"]["bits"] == 8
    load_pair(out8)


def test_non_text_parts_dropped(tmp_path):
    _need(E2B)
    src = tmp_path / "src"
    shutil.copytree(E2B / "target", src)
    extra = {
        "model.vision_tower.encoder.weight": mx.zeros((8, 8)),
        "model.embed_vision.embedding_projection.weight": mx.zeros((64, 8)),
        "model.audio_tower.layer.weight": mx.zeros((4,)),
        "model.embed_audio.embedding_projection.weight": mx.zeros((64, 8)),
    }
    mx.save_safetensors(str(src / "model-00005-of-00005.safetensors"), extra)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"].update({k: "model-00005-of-00005.safetensors" for k in extra})
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    out = convert_pair(str(src), None, tmp_path / "o", dtype="float32", progress=False)
    w = weights_of(out / "target")
    assert not [k for k in w if "vision" in k or "audio" in k]
    assert "language_model.model.embed_tokens_per_layer.weight" in w


# -- validation: one line, nothing written --------------------------------------------------


def _fails(tmp_path, match, target, drafter=None, **kw):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConvertError, match=match) as e:
        convert_pair(str(target), None if drafter is None else str(drafter), tmp_path / "out",
                     progress=False, **kw)  # fmt: skip
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    return str(e.value)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_validation_inputs(tmp_path):
    _need(E2B)
    _fails(tmp_path, "no such folder", tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(tmp_path, "no config.json", empty)

    bad = _copy(E2B / "target", tmp_path / "bad")
    (bad / "config.json").write_text("{not json")
    _fails(tmp_path, "not valid JSON", bad)
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _fails(tmp_path, "'llama' is not a Gemma 4", bad)

    nowts = _copy(DENSE / "target", tmp_path / "nowts")
    (nowts / "model.safetensors").unlink()
    _fails(tmp_path, "no model.*safetensors", nowts)

    missing = _copy(E2B / "target", tmp_path / "missing")
    (missing / "model-00002-of-00004.safetensors").unlink()
    _fails(tmp_path, "model-00002-of-00004.safetensors: missing", missing)

    trunc = _copy(E2B / "target", tmp_path / "trunc")
    f = trunc / "model-00003-of-00004.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    _fails(
        tmp_path, r"model-00003-of-00004.safetensors: corrupt safetensors file \(truncated", trunc
    )

    garbage = _copy(E2B / "target", tmp_path / "garbage")
    f = garbage / "model-00001-of-00004.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:8] + b"\x00garbage" + data[16:])
    _fails(tmp_path, "model-00001-of-00004.safetensors: corrupt safetensors file", garbage)
    f.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    _fails(tmp_path, "model-00001-of-00004.safetensors: corrupt safetensors file", garbage)

    nokey = _copy(DENSE / "target", tmp_path / "nokey")
    w = mx.load(str(nokey / "model.safetensors"))
    w.pop("model.language_model.norm.weight")
    mx.save_safetensors(str(nokey / "model.safetensors"), w)
    _fails(tmp_path, "'language_model.model.norm.weight' is missing", nokey)

    notok = _copy(DENSE / "target", tmp_path / "notok")
    (notok / "tokenizer.json").unlink()
    _fails(tmp_path, "no tokenizer.json or tokenizer.model", notok)

    quant = _copy(E2B / "target", tmp_path / "quant")
    cfg = json.loads((quant / "config.json").read_text())
    cfg["quantization"] = {"group_size": 64, "bits": 4}
    (quant / "config.json").write_text(json.dumps(cfg))
    _fails(tmp_path, "already quantized", quant)


def test_validation_drafter_mismatch(tmp_path):
    _need(E2B)
    _fails(tmp_path, "drafter", E2B / "target", E2B / "target")  # a target is no drafter
    d = _copy(E2B / "drafter", tmp_path / "d")
    cfg = json.loads((d / "config.json").read_text())
    cfg["backbone_hidden_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    _fails(tmp_path, "not a drafter for this target: .*hidden size 128", E2B / "target", d)
    v = _copy(DENSE / "drafter", tmp_path / "v")
    cfg = json.loads((v / "config.json").read_text())
    cfg["text_config"]["vocab_size"] = 256
    (v / "config.json").write_text(json.dumps(cfg))
    w = mx.load(str(v / "model.safetensors"))
    w["model.embed_tokens.weight"] = w["model.embed_tokens.weight"][:256]
    mx.save_safetensors(str(v / "model.safetensors"), w)
    _fails(tmp_path, r"vocabulary \(256\)", DENSE / "target", v)


def test_validation_options(tmp_path):
    _need(E2B)
    t = E2B / "target"
    _fails(tmp_path, "--bits 3 is not supported", t, bits=3)
    _fails(tmp_path, "--group-size 48 is not supported", t, bits=4, group_size=48)
    _fails(tmp_path, "--dtype float64 is not supported", t, dtype="float64")
    _fails(tmp_path, "--drafter-bits 2 is not supported", t, bits=4, drafter_bits=2)
    (tmp_path / "out").mkdir()
    _fails(tmp_path, "already exists", t)


# -- atomicity -------------------------------------------------------------------------------


def _interrupt_after(monkeypatch, n, exc):
    real = writer_mod.ShardWriter.write
    calls = {"n": 0}

    def write(self, name, array):
        calls["n"] += 1
        if calls["n"] > n:
            raise exc
        return real(self, name, array)

    monkeypatch.setattr(writer_mod.ShardWriter, "write", write)


def test_interrupt_leaves_nothing(tmp_path, monkeypatch):
    _need(E2B)
    _interrupt_after(monkeypatch, 30, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        convert_pair(str(E2B / "target"), str(E2B / "drafter"), tmp_path / "o", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_only_when_complete(tmp_path, monkeypatch):
    _need(E2B)
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    _interrupt_after(monkeypatch, 30, OSError("disk full"))
    with pytest.raises(OSError):
        convert_pair(str(E2B / "target"), None, out, force=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["o"]
    assert (out / "old.txt").read_text() == "keep me"
    monkeypatch.undo()
    convert_pair(str(E2B / "target"), None, out, force=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["o"]
    assert (out / "manifest.json").is_file() and not (out / "old.txt").exists()


def test_refuses_to_overwrite_source(tmp_path):
    _need(DENSE)
    src = _copy(DENSE, tmp_path / "pair")
    with pytest.raises(ConvertError, match="would overwrite the source"):
        convert_pair(str(src / "target"), None, src, force=True, progress=False)
    assert (src / "target" / "model.safetensors").is_file()


# -- the Hugging Face Hub, offline -----------------------------------------------------------


def _fake_hub(cache: Path, repo: str, files: Path, sha: str) -> None:
    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / sha
    shutil.copytree(files, snap)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(sha)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_offline_snapshot(tmp_path, offline_hub):
    _need(E2B)
    _fake_hub(offline_hub, "org/tiny-it", E2B / "target", "a" * 40)
    _fake_hub(offline_hub, "org/tiny-it-assistant", E2B / "drafter", "b" * 40)
    out = convert_pair("org/tiny-it", None, tmp_path / "o", bits=8, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["target"] == {"source": "org/tiny-it", "repo_id": "org/tiny-it", "revision": "a" * 40}
    assert m["drafter"]["repo_id"] == "org/tiny-it-assistant"
    assert m["drafter"]["revision"] == "b" * 40
    load_pair(out)

    msg = _fails(tmp_path, "not in the local Hugging Face cache and HF_HUB_OFFLINE", "org/unknown")
    assert msg.startswith("org/unknown:")
    # A target whose drafter repo is not cached fails before writing anything.
    _fake_hub(offline_hub, "org/lonely-it", E2B / "target", "c" * 40)
    _fails(tmp_path, "org/lonely-it-assistant: not in the local", "org/lonely-it")


def test_resolve_model(tmp_path, offline_hub, monkeypatch):
    _need(E2B)
    assert resolve_model(str(E2B)) == E2B  # local folders as they are
    with pytest.raises(ConvertError, match="no such model folder"):
        resolve_model(str(tmp_path / "nope"))

    _fake_hub(offline_hub, "google/tiny-it", E2B / "target", "d" * 40)
    _fake_hub(offline_hub, "google/tiny-it-assistant", E2B / "drafter", "e" * 40)
    cache = tmp_path / "gm"
    first = resolve_model("google/tiny-it", bits=4, cache_dir=cache, progress=False)
    assert first == cache / cache_name("google/tiny-it", 4) == cache / "google--tiny-it-4bit"
    load_pair(first)
    monkeypatch.setattr("gemma_mtp_mlx.convert.pair.convert_pair", None)  # must not convert again
    assert resolve_model("google/tiny-it", bits=4, cache_dir=cache, progress=False) == first

    # An mlx-community style repo (already MLX layout) is used as downloaded.
    mlx_model = convert_pair(str(E2B / "target"), None, tmp_path / "m", bits=4, progress=False)
    _fake_hub(offline_hub, "mlx-community/tiny-it-4bit", mlx_model / "target", "f" * 40)
    got = resolve_model("mlx-community/tiny-it-4bit", cache_dir=cache, progress=False)
    assert got.name == "f" * 40 and (got / "config.json").is_file()
    load_target(got)


# -- streaming: peak memory on a checkpoint of several hundred MB ------------------------------

BIG_CONFIG = {
    "model_type": "gemma4",
    "vocab_size": 32768,
    "text_config": {
        "model_type": "gemma4_text",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "global_head_dim": 128,
        "layer_types": ["sliding_attention"] * 3
        + ["full_attention"]
        + ["sliding_attention"] * 3
        + ["full_attention"],
        "sliding_window": 64,
        "vocab_size": 32768,
        "hidden_size_per_layer_input": 0,
        "num_kv_shared_layers": 0,
        "attention_k_eq_v": False,
        "final_logit_softcapping": 30.0,
        "tie_word_embeddings": True,
    },
}


def _make_big_checkpoint(folder: Path) -> tuple[int, int]:
    """~300 MB of bf16 in 5 shards, HF layout; returns (total, largest shard) bytes."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(BIG_CONFIG))
    shutil.copy(E2B / "target" / "tokenizer.json", folder)
    model_class, args_class = _get_classes(BIG_CONFIG)
    model = model_class(args_class.from_dict(json.loads(json.dumps(BIG_CONFIG))))
    params = {k.replace("language_model.model.", "model.language_model."): v.shape
              for k, v in tree_flatten(model.parameters())}  # fmt: skip
    groups: dict[str, dict] = {}
    for k, shape in params.items():
        layer = k.split("layers.")[1].split(".")[0] if "layers." in k else None
        name = "rest" if layer is None else str(int(layer) // 2)
        groups.setdefault(name, {})[k] = shape
    weight_map, sizes = {}, []
    n = len(groups)
    for i, (_, group) in enumerate(sorted(groups.items())):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        arrays = {k: (mx.random.normal(s) * 0.02).astype(mx.bfloat16) for k, s in group.items()}
        mx.save_safetensors(str(folder / fname), arrays)
        del arrays
        weight_map.update({k: fname for k in group})
        sizes.append((folder / fname).stat().st_size)
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return sum(sizes), max(sizes)


@pytest.mark.big
def test_streaming_peak_memory(tmp_path):
    _need(E2B)
    total, largest = _make_big_checkpoint(tmp_path / "big")
    assert total > 250e6 and largest < total / 3
    code = textwrap.dedent(
        f"""
        import json, time, mlx.core as mx
        from gemma_mtp_mlx.convert import convert_pair
        import mlx_lm.utils  # the converter's (with transformers): imported before the baseline
        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        base = status("VmRSS:")
        t = time.perf_counter()
        convert_pair({str(tmp_path / "big")!r}, None, {str(tmp_path / "out")!r}, bits=4,
                     max_shard_bytes=64 << 20, progress=False)
        secs = time.perf_counter() - t
        print(json.dumps({{"base": base, "peak": status("VmHWM:"), "secs": secs}}))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout.strip().splitlines()[-1])
    grow = m["peak"] - m["base"]
    print(f"\nbig checkpoint: {total / 1e6:.0f} MB in 5 shards (largest {largest / 1e6:.0f} MB), "
          f"4-bit in {m['secs']:.1f} s; RSS before {m['base'] / 1e6:.0f} MB, "
          f"peak {m['peak'] / 1e6:.0f} MB (+{grow / 1e6:.0f} MB)")  # fmt: skip
    assert grow < 2 * largest
    w = weights_of(tmp_path / "out" / "target")
    assert w["language_model.model.layers.7.mlp.down_proj.weight"].dtype == mx.uint32
    assert len(list((tmp_path / "out" / "target").glob("model-*.safetensors"))) > 1
