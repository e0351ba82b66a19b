"""`convert_pair`: a target and its drafter into one MLX folder, atomically.

OUT/target and OUT/drafter are plain mlx-lm model folders; OUT/manifest.json
records where they came from and how they were converted. Everything is built
in a hidden folder next to OUT and moved into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from gemma_mtp_mlx.progress import byte_bar
from gemma_mtp_mlx.tokenizer_cache import default_cache_dir

from .errors import ConvertError
from .plan import ModelPlan, check_drafter, check_options, plan_model, skeleton
from .source import Source, has_tokenizer, resolve
from .writer import MAX_SHARD_BYTES, write_model

SAME = "same"


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("gemma-mtp")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def _drafter_bits(bits: int | None, drafter_bits) -> int | None:
    if drafter_bits == SAME:
        return bits
    if drafter_bits in (None, "none", "None"):
        return None
    try:
        return int(drafter_bits)
    except (TypeError, ValueError):
        raise ConvertError(
            f"--drafter-bits {drafter_bits} is not supported (4, 8 or none)"
        ) from None


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _check_out(out: Path, force: bool, sources: list[Source]) -> None:
    if out.exists() or out.is_symlink():
        if not force:
            raise ConvertError(f"{out}: already exists (pass --force to replace it)")
        if not out.is_dir() or out.is_symlink():
            raise ConvertError(f"{out}: exists and is not a folder; remove it yourself")
    for s in sources:
        src = s.path.resolve()
        if out == src or out in src.parents:
            raise ConvertError(f"{out}: would overwrite the source {s.spec}")
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: no such folder")


def _write_all(plans: list[ModelPlan], tmp: Path, progress: bool, max_shard_bytes: int) -> None:
    total = sum(p.output_bytes for p in plans)
    with byte_bar(progress, total, "converting") as bar:
        for p in plans:
            bar.describe(f"converting {p.kind}")
            write_model(p, tmp / p.kind, max_shard_bytes, bar.advance)


def convert_pair(
    target: str,
    drafter: str | None,
    out: str | Path,
    *,
    bits: int | None = None,
    group_size: int = 64,
    dtype: str = "bfloat16",
    drafter_bits: int | None | str = SAME,
    force: bool = False,
    progress: bool = True,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Convert a Gemma 4 target (and its MTP drafter) into `out`; returns `out`.

    target / drafter: a local folder or a Hugging Face repo id. A repo id with no
    drafter given gets `<repo id>-assistant`; a local target with no drafter is
    converted alone. Nothing is written unless every check passes.
    """
    check_options(bits, group_size, dtype)
    dbits = _drafter_bits(bits, drafter_bits)
    check_options(dbits, group_size, dtype, what="--drafter-bits")
    out = Path(out).expanduser().absolute()
    if (out.exists() or out.is_symlink()) and not force:  # before any download
        raise ConvertError(f"{out}: already exists (pass --force to replace it)")
    if str(target).endswith(".gguf"):
        return convert_gguf_pair(Path(target), drafter, out, bits, group_size, dtype, progress)

    t0 = time.perf_counter()
    tsrc = resolve(target, progress)
    if drafter is None and tsrc.repo_id:
        drafter = tsrc.repo_id + "-assistant"
    dsrc = resolve(drafter, progress) if drafter is not None else None
    _check_out(out, force, [s for s in (tsrc, dsrc) if s is not None])

    # Configs first (cheap, and the clearest errors), then every weight header.
    tconfig, tmodel = skeleton(tsrc.path, "target")
    if dsrc is not None:
        dconfig, dmodel = skeleton(dsrc.path, "drafter")
        check_drafter(tmodel, dmodel, dsrc.path)
    if not has_tokenizer(tsrc.path):
        raise ConvertError(f"{tsrc.path}: no tokenizer.json or tokenizer.model")
    plans = [plan_model(tsrc.path, "target", bits, group_size, dtype, tconfig, tmodel)]
    if dsrc is not None:
        plans.append(plan_model(dsrc.path, "drafter", dbits, group_size, dtype, dconfig, dmodel))
    else:
        _say(progress, f"no drafter given: converting the target {target} only")

    def build(tmp: Path) -> dict:
        _write_all(plans, tmp, progress, max_shard_bytes)
        return {
            "target": {"source": tsrc.spec, **tsrc.describe()},
            "drafter": {"source": dsrc.spec, **dsrc.describe()} if dsrc else None,
            "bits": bits,
            "drafter_bits": dbits if dsrc else None,
            "group_size": group_size if (bits or dbits) else None,
            "dtype": dtype,
            "mode": "affine" if (bits or dbits) else None,
        }

    write_atomically(out, build)
    size = sum(p.output_bytes for p in plans)
    human = f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"
    _say(progress, f"wrote {out} ({human}, {time.perf_counter() - t0:.1f} s)")
    return out


def write_atomically(out: Path, build) -> None:
    """Run `build(tmp)` in a hidden folder next to `out` and move it into place only
    when complete (replacing an old `out` last). Any failure, Ctrl-C included, leaves
    `out` as it was. `build` returns the manifest's model-specific fields."""
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        manifest = {
            "tool": "gemma-mtp",
            "version": tool_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **build(tmp),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists() or out.is_symlink():  # --force: swap only now, complete
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
            old = None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_gguf_pair(gguf: Path, drafter, out: Path, bits, group_size, dtype, progress) -> Path:
    """A GGUF target (e.g. Gemma 3 270M): dequantized to `dtype`, then quantized like
    mlx_lm.convert when `bits` is set; a drafter folder, if given, is copied as is."""
    from .gguf import convert_gguf

    if not gguf.is_file():
        raise ConvertError(f"{gguf}: no such GGUF file")
    if drafter is not None and not (Path(drafter) / "config.json").is_file():
        raise ConvertError(f"{drafter}: not a drafter folder (no config.json)")

    def build(tmp: Path) -> dict:
        with byte_bar(progress, gguf.stat().st_size, f"converting {gguf.name}") as bar:
            convert_gguf(gguf, tmp / "target", dtype, bar=bar)
            if bits:
                bar.describe(f"quantizing to {bits} bits")
                _quantize_in_place(tmp / "target", bits, group_size)
        if drafter is not None:
            shutil.copytree(drafter, tmp / "drafter")
        return {
            "target": {"source": str(gguf.absolute()), "format": "gguf"},
            "drafter": {"source": str(Path(drafter).absolute())} if drafter else None,
            "bits": bits,
            "group_size": group_size if bits else None,
            "dtype": dtype,
            "mode": "affine" if bits else None,
        }

    write_atomically(out, build)
    _say(progress, f"wrote {out}")
    return out


def _quantize_in_place(folder: Path, bits: int, group_size: int) -> None:
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    model, config = load_model(folder, lazy=True)
    model, config = quantize_model(model, config, group_size, bits)
    quantized = folder.with_name(folder.name + ".quantized")
    quantized.mkdir()
    save_model(quantized, model)
    save_config(config, quantized / "config.json")
    for f in folder.iterdir():  # tokenizer and generation files come along
        if not f.name.startswith("model") and f.name != "config.json":
            shutil.copy2(f, quantized / f.name)
    shutil.rmtree(folder)
    quantized.rename(folder)


# -- resolve_model: what the CLI's -m accepts ---------------------------------------------


def cache_name(repo_id: str, bits: int | None) -> str:
    return repo_id.replace("/", "--") + (f"-{bits}bit" if bits else "-bf16")


def _is_mlx_repo(source: Source) -> bool:
    """Already in MLX layout: quantized by mlx-lm, or weights named as mlx-lm names them."""
    from .source import read_config

    config = read_config(source.path)
    if "quantization" in config or "quantization" in config.get("text_config", {}):
        return True
    index = source.path / "model.safetensors.index.json"
    if index.is_file():
        keys = json.loads(index.read_text()).get("weight_map", {})
    else:
        from .safetensors_io import read_header

        files = sorted(source.path.glob("model*.safetensors"))
        keys = read_header(files[0]) if files else {}
    return any(k.startswith("language_model.model.") for k in keys)


def resolve_model(
    spec: str, bits: int | None = 4, cache_dir: Path | None = None, progress: bool = True
) -> Path:
    """A folder the loader can use, for `-m SPEC`.

    A local folder is returned as is. A Hub id of an MLX model is downloaded and
    used directly. Any other Hub id (google/gemma-4-*-it) is converted once, with
    its `-assistant` drafter, into the cache and reused afterwards.
    """
    from .source import fetch, is_hub_id

    if not is_hub_id(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ConvertError(f"{spec}: no such model folder or Hugging Face repo id")
        return path
    dest = Path(cache_dir or default_cache_dir()) / cache_name(spec, bits)
    if (dest / "manifest.json").is_file():
        return dest
    # Config and index first: an MLX repo is used as is, anything else is converted.
    head = fetch(spec, ["config.json", "model.safetensors.index.json"], progress)
    if (
        not list(head.path.glob("*.safetensors"))
        and not (head.path / "model.safetensors.index.json").is_file()
    ):
        head = fetch(spec, None, progress)
    if _is_mlx_repo(head):
        return fetch(spec, None, progress).path
    dest.parent.mkdir(parents=True, exist_ok=True)
    _say(progress, f"converting {spec} once into {dest}")
    return convert_pair(spec, None, dest, bits=bits, progress=progress)
