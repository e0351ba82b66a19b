"""Which model a command runs: a folder, a hub id (converted once), or the offline fallback.

Failures are one line for the user (`fail`) that names the model once; a drafter problem
suggests --no-draft, a damaged conversion in our cache names the folder to delete.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cli_options import DEFAULT_MODEL
from .errors import fail, first_line, say
from .fallback import BUNDLED_NAME
from .live import is_terminal

DEFAULT_BITS = 4
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONVERT_HINT = "make one with `gemma-mtp convert --target google/gemma-4-E4B-it -o DIR`"


@dataclass(frozen=True)
class Resolved:
    path: Path
    fallback: bool = False  # the default model was unreachable: this is the bundled one


def _without_name(spec: str, message: str) -> str:
    """The converter's message without its leading `spec: ` (the caller names it once)."""
    return message[len(spec) + 2 :] if message.startswith(f"{spec}: ") else message


def resolve_model(spec, progress: bool | None = None) -> Resolved:
    """A local folder as is; a hub repo id through the converter (download + convert once);
    the bundled model, with one line saying so, when the default model is unreachable."""
    progress = is_terminal(sys.stderr) if progress is None else progress
    name = spec.model
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            fail(f"{name}: not a folder ({CONVERT_HINT})")
        return Resolved(path)
    if not HUB_ID.match(name) or name.startswith((".", "/", "~")):
        fail(f"{name}: no such folder ({CONVERT_HINT})")
    try:
        from .convert import HubUnreachable
        from .convert import resolve_model as fetch_and_convert
    except ImportError:
        fail(f"{name}: no such folder, and fetching hub models needs the converter "
             "(gemma_mtp_mlx.convert), which is not installed; make a folder with "
             "`gemma-mtp convert`")
    try:
        return Resolved(Path(fetch_and_convert(name, bits=DEFAULT_BITS, progress=progress)))
    except HubUnreachable as e:
        if name != DEFAULT_MODEL:
            reason = "HF_HUB_OFFLINE is set" if "HF_HUB_OFFLINE" in str(e) else (
                "the Hugging Face Hub is unreachable")
            fail(f"{name}: no such folder (and not a cached hub model: {reason})")
    except (ValueError, OSError) as e:  # ConvertError, ModelLoadError, network
        fail(f"{name}: {_without_name(name, first_line(e))} (or convert it yourself with "
             "`gemma-mtp convert`)")
    return Resolved(_bundled(spec, progress), fallback=True)


def _bundled(spec, progress: bool) -> Path:
    from .fallback import bundled_pair, notice

    say(notice(spec.model, spec.no_draft, spec.drafter))
    try:
        return bundled_pair(progress=progress)
    except (ValueError, OSError) as e:
        fail(f"the bundled fallback model is unavailable: {first_line(e)}")


def damaged_conversion_hint(path: Path) -> str:
    """' (... delete FOLDER ...)' when `path` is a conversion in our cache, else ''."""
    from .convert import default_cache_dir

    try:
        inside = path.resolve().is_relative_to(default_cache_dir().resolve())
    except OSError:
        inside = False
    if not inside:
        return ""
    return f" (a damaged conversion: delete {path} and run again to convert it anew)"


def load_model(spec, progress: bool | None = None):
    """(the model pair, its context limit) for a ModelSpec, or one line saying what is wrong
    (never a silent fallback). The weights are sized against memory before they are read."""
    start = time.perf_counter()
    from .loading import DrafterLoadError, ModelLoadError, load_pair, materialize  # MLX
    from .progress import spinner

    imported = time.perf_counter()
    progress = is_terminal(sys.stderr) if progress is None else progress
    resolved = resolve_model(spec, progress)
    times = {"imports": imported - start, "resolve": time.perf_counter() - imported}
    path, no_draft = resolved.path, spec.no_draft
    if path.name == BUNDLED_NAME and spec.drafter is None and not (path / "drafter").is_dir():
        if not resolved.fallback:  # the fallback's notice said it already
            say("note: no drafter is bundled for Gemma 3 270M yet: plain decoding")
        no_draft = True
    try:
        with spinner(progress, f"loading {path}"):  # a few seconds: tokenizer and weights
            pair = load_pair(path, drafter_path=spec.drafter, use_drafter=not no_draft,
                             dtype=spec.dtype, lazy=True)
            pair.load_times = {**times, **pair.load_times}
            context = fit_context(pair, spec)
            materialize(pair)
    except ModelLoadError as e:
        msg = first_line(e)
        if isinstance(e, DrafterLoadError) and "--no-draft" not in msg:
            msg += " (pass --no-draft to run the target alone)"
        elif not isinstance(e, DrafterLoadError):
            msg += damaged_conversion_hint(path)
        fail(msg)
    return pair, context


def fit_context(pair, spec) -> int:
    """The context to run with: --max-context, else the model's own, shortened (with a note)
    to what fits in memory; a model that cannot fit is refused in one line."""
    from .engine import model_context
    from .memory import MIN_CONTEXT, fitting_context, plan, size

    limit = model_context(pair.target)
    if spec.max_context is not None and not 1 < spec.max_context <= limit:
        fail(f"--max-context must be in 2..{limit} (this model's context)", 2)
    context = spec.max_context or limit
    reserved = spec.reserved_bytes
    memory = plan(pair, context, reserved)
    fits = context if memory.fits else fitting_context(pair, limit, reserved)
    if not memory.fits and spec.max_context is None and fits >= MIN_CONTEXT:
        # No context asked: the longest that fits, as Ollama does, if it is a useful one.
        say(f"note: context {fits} tokens (of {limit}) to fit in memory "
            f"({size(memory.usable)} usable, {memory.usable_source})")
        context, memory = fits, plan(pair, fits, reserved)
    if not memory.fits:
        fail(memory.refusal(fits))
    return context
