"""What a front-end asks of the engine, checked once: which model (`ModelSpec`) and
what one answer needs (`Request`, with its `SamplingParams`). No MLX here, so the
command line can build these before anything heavy is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

# Below this a temperature is greedy, its limit: float32 logits / 1e-40 overflow to inf.
GREEDY_BELOW = 1e-5
MAX_STOPS, MAX_STOP_CHARS = 16, 256


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1 disables
    min_p: float = 0.0  # 0 disables
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def validate(self) -> None:
        if not all(map(math.isfinite, (self.temperature, self.top_p, self.min_p))):
            raise ValueError("temperature, top-p and min-p must be finite numbers")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError("seed must be in 0..2**63-1")
        if self.top_k < 0:
            raise ValueError("top-k must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top-p must be in (0, 1]")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError("min-p must be in [0, 1)")


MAX_DRAFT = 16  # decoding.MAX_DRAFT (repeated: importing decoding imports MLX)
DRAFT_NAMES = ("auto", "heuristic", "off")


class RequestError(ValueError):
    """A request the engine cannot run as asked; the message is one line for the user."""


class ContextError(RequestError):
    """The prompt does not fit in the model's context."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how (what `-m`, `--drafter`, `--no-draft`, `--dtype`,
    `--max-context` and `--recalibrate` say)."""

    model: str
    drafter: Path | None = None
    no_draft: bool = False
    dtype: str | None = None  # "bfloat16", "float16", "float32"; None: the checkpoint's
    max_context: int | None = None  # tokens; None: the model's own limit
    reserved_bytes: int = 0  # memory kept for other uses (the server's prefix cache)
    recalibrate: bool = False  # measure the calibration anew, not the stored one


@dataclass(frozen=True)
class Request:
    """One answer's settings. `draft`: None (the default: auto, or the heuristic when
    sampling with a seed, whose random draws must not follow timings), "auto",
    "heuristic", "off", or a fixed draft length K. `lookup`: where the context's last
    tokens occurred before, draft what followed them there instead (lookup.py; whenever
    the drafter drafts)."""

    max_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    draft: int | str | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # run to max_tokens (benchmarks, tests)
    lookup: bool = True

    def validate(self, drafting: bool = True) -> None:
        """Raise RequestError with a one-line reason when the request is not runnable."""
        if self.max_tokens < 1:
            raise RequestError("max_tokens must be at least 1")
        try:
            self.sampling.validate()
        except ValueError as e:
            raise RequestError(f"bad sampling option: {e}") from None
        d = self.draft
        if isinstance(d, bool) or not (d is None or d in DRAFT_NAMES or isinstance(d, int)):
            raise RequestError(f"draft must be a length or one of {', '.join(DRAFT_NAMES)}")
        if isinstance(d, int) and not 1 <= d <= MAX_DRAFT:
            raise RequestError(f"draft length must be in 1..{MAX_DRAFT}")
        if d not in (None, "off") and not drafting:
            raise RequestError("no drafter is loaded")
        if any(not s for s in self.stop):
            raise RequestError("stop strings must not be empty")
        if len(self.stop) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in self.stop):
            raise RequestError(f"at most {MAX_STOPS} stop strings of {MAX_STOP_CHARS} "
                               "characters each")

    @property
    def drafts(self) -> bool:
        return self.draft != "off"

    @property
    def schedule_spec(self) -> int | str | None:
        """What schedule.make_schedule takes."""
        return None if self.draft in (None, "off") else self.draft

    @property
    def seeded(self) -> bool:
        return not self.sampling.greedy and self.sampling.seed is not None

    def draft_label(self, drafting: bool) -> str:
        """How the drafter runs, in words: 'off', 'auto', 'heuristic' or 'K=4'."""
        if not drafting or self.draft == "off":
            return "off"
        if self.draft is None:
            return "heuristic" if self.seeded else "auto"
        return f"K={self.draft}" if isinstance(self.draft, int) else str(self.draft)
