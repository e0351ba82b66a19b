"""Which model a command runs: a folder, a hub id (converted once), or the offline fallback.

Failures are one line for the user (`fail`); a drafter problem suggests --no-draft.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .cli_options import DEFAULT_MODEL
from .errors import fail, first_line, say
from .fallback import BUNDLED_NAME
from .live import is_terminal

DEFAULT_BITS = 4
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(spec: str) -> Path:
    """A local folder as is; a hub repo id through the converter (download + convert once)."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            fail(f"{spec}: not a folder (make a model folder with `gemma-mtp convert`)")
        return path
    if HUB_ID.match(spec):
        try:
            from .convert import HubUnreachable, resolve_model
        except ImportError:
            fail(
                f"{spec}: no such folder, and fetching hub models needs the converter "
                "(gemma_mtp_mlx.convert), which is not installed; "
                "make a folder with `gemma-mtp convert`"
            )
        try:
            return Path(resolve_model(spec, bits=DEFAULT_BITS, progress=is_terminal(sys.stderr)))
        except HubUnreachable as e:
            if spec != DEFAULT_MODEL:
                fail(f"{spec}: {first_line(e)} (or convert it yourself with `gemma-mtp convert`)")
            from .fallback import NOTICE, bundled_pair

            say(NOTICE)
            try:
                return bundled_pair(progress=is_terminal(sys.stderr))
            except (ValueError, OSError) as e2:
                fail(f"the bundled fallback model is unavailable: {first_line(e2)}")
        except (ValueError, OSError) as e:  # ConvertError, ModelLoadError, network
            fail(f"{spec}: {first_line(e)} (or convert it yourself with `gemma-mtp convert`)")
    fail(
        f"{spec}: no such model folder (make one with "
        "`gemma-mtp convert --target google/gemma-4-E4B-it -o DIR`, or pass a hub repo id)"
    )


def load_model(spec):
    """(the model pair, its context limit) for a ModelSpec, or one line saying what is wrong
    (never a silent fallback). The weights are sized against memory before they are read."""
    from .engine import model_context
    from .loading import DrafterLoadError, ModelLoadError, load_pair, materialize
    from .memory import MIN_CONTEXT, fitting_context, plan, size

    path = resolve_model_path(spec.model)
    no_draft = spec.no_draft
    if path.name == BUNDLED_NAME and spec.drafter is None and not (path / "drafter").is_dir():
        say("note: no drafter is bundled for Gemma 3 270M yet: plain decoding")
        no_draft = True
    try:
        pair = load_pair(
            path, drafter_path=spec.drafter, use_drafter=not no_draft, dtype=spec.dtype, lazy=True
        )
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
        materialize(pair)
    except ModelLoadError as e:
        msg = first_line(e)
        if isinstance(e, DrafterLoadError) and "--no-draft" not in msg:
            msg += " (pass --no-draft to run the target alone)"
        fail(msg)
    return pair, context
