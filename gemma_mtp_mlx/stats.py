"""What one answer cost and how the drafter did: the numbers every front-end shows."""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx

from .decoding import RoundInfo


@dataclass
class Stats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    ttft_s: float = 0.0
    finish_reason: str | None = None
    rounds: list[RoundInfo] = field(default_factory=list)
    drafting: bool = True  # a drafter ran (False: plain decoding)
    drafter: str | None = None  # which one (its folder), when it ran
    decode_width: int = 1  # rows of each single-token pass (calibration.py)

    def add(self, event, elapsed: float) -> None:
        """Count one decoder Event that arrived `elapsed` seconds after the request began."""
        if event.round is None:
            self.prefill_seconds = self.ttft_s = elapsed
        else:
            self.rounds.append(event.round)
            self.decode_seconds = elapsed - self.ttft_s
        self.generated_tokens += len(event.tokens)
        self.finish_reason = event.finish_reason

    @property
    def tokens_per_s(self) -> float:
        # Decode speed: tokens after the first, over the time after the first.
        n = self.generated_tokens - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def draft_rounds(self) -> list[RoundInfo]:
        return [r for r in self.rounds if r.draft_len > 0]

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(r.draft_len for r in self.draft_rounds)
        return sum(r.accepted for r in self.draft_rounds) / drafted if drafted else 0.0

    @property
    def measured_acceptance(self) -> float | None:
        """acceptance_rate, or None when nothing was drafted (no rate was measured)."""
        return self.acceptance_rate if self.draft_rounds else None

    @property
    def mean_accepted_per_round(self) -> float:
        rounds = self.draft_rounds
        return sum(r.accepted for r in rounds) / len(rounds) if rounds else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        """Fraction of rounds in which draft i (1-based) survived, among rounds drafting i."""
        rounds = self.draft_rounds
        longest = max((r.draft_len for r in rounds), default=0)
        out = []
        for i in range(1, longest + 1):
            tried = [r for r in rounds if r.draft_len >= i]
            out.append(sum(r.accepted >= i for r in tried) / len(tried))
        return out

    @property
    def lookup_rounds(self) -> int:
        """Draft rounds whose drafts were copied from the context (lookup.py)."""
        return sum(r.source == "lookup" for r in self.draft_rounds)

    @property
    def redone_rounds(self) -> int:
        """Draft rounds whose verify row was too close to a tie to trust, redone on the
        single-token path (greedy guard)."""
        return sum(r.redone for r in self.draft_rounds)

    @property
    def redo_rate(self) -> float:
        rounds = len(self.draft_rounds)
        return self.redone_rounds / rounds if rounds else 0.0

    @property
    def accepted_histogram(self) -> dict[int, int]:
        hist: dict[int, int] = {}
        for r in self.draft_rounds:
            hist[r.accepted] = hist.get(r.accepted, 0) + 1
        return dict(sorted(hist.items()))

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "finish_reason": self.finish_reason,
            "tokens_per_s": round(self.tokens_per_s, 3),
            "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 3),
            "ttft_s": round(self.ttft_s, 4),
            "drafter": self.drafter,
            "acceptance_rate": _rounded(self.measured_acceptance),
            "mean_accepted_per_round": _rounded(
                self.mean_accepted_per_round if self.draft_rounds else None
            ),
            "per_position_acceptance": [round(x, 4) for x in self.per_position_acceptance],
            "draft_rounds": len(self.draft_rounds),
            "lookup_rounds": self.lookup_rounds,
            "draft_lengths": [r.draft_len for r in self.draft_rounds],
            "redone_rounds": self.redone_rounds,
            "redo_rate": _rounded(self.redo_rate if self.draft_rounds else None),
            "decode_width": self.decode_width,
            "peak_memory_gb": round(peak_memory_gb(), 4),
        }


def _rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def peak_memory_gb() -> float:
    try:
        return mx.get_peak_memory() / 1e9
    except AttributeError:  # older MLX
        return 0.0
