"""Python API: prompts in, text pieces and decoding statistics out.

    pair = load_pair("out/gemma-4-E4B-it-4bit")
    for chunk in stream_generate(pair, encode_prompt(pair.tokenizer, "Hi")):
        print(chunk.text, end="")
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import mlx.core as mx

from .decoding import Decoder, RoundInfo, Session
from .loading import ModelPair
from .sampling import SamplingParams
from .schedule import make_schedule


@dataclass
class Stats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    ttft_s: float = 0.0
    finish_reason: str | None = None
    rounds: list[RoundInfo] = field(default_factory=list)
    decode_width: int = 1  # rows of each single-token pass (calibration.py)

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
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted_per_round": round(self.mean_accepted_per_round, 4),
            "per_position_acceptance": [round(x, 4) for x in self.per_position_acceptance],
            "draft_rounds": len(self.draft_rounds),
            "draft_lengths": [r.draft_len for r in self.draft_rounds],
            "redone_rounds": self.redone_rounds,
            "redo_rate": round(self.redo_rate, 4),
            "decode_width": self.decode_width,
            "peak_memory_gb": round(peak_memory_gb(), 4),
        }


@dataclass
class Chunk:
    text: str  # new printable text (may be empty while a multi-byte char is pending)
    tokens: list[int]
    stats: Stats
    round: RoundInfo | None = None


def peak_memory_gb() -> float:
    try:
        return mx.get_peak_memory() / 1e9
    except AttributeError:  # older MLX
        return 0.0


def encode_prompt(
    tokenizer,
    prompt: str,
    system: str | None = None,
    raw: bool = False,
    messages: list[dict] | None = None,
) -> list[int]:
    """Token ids for a prompt: through the chat template unless `raw`."""
    if raw or getattr(tokenizer, "chat_template", None) is None:
        ids = tokenizer.encode(prompt)
        return list(ids)
    msgs = list(messages or [])
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    msgs.append({"role": "user", "content": prompt})
    return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True))


def stream_generate(
    pair: ModelPair,
    prompt_ids: list[int],
    max_tokens: int = 256,
    sampling: SamplingParams | None = None,
    num_draft: int | str | None = None,  # K, "auto"/"heuristic", None: auto (heuristic if seeded)
    use_drafter: bool = True,
    stop_strings: tuple[str, ...] = (),
    session: Session | None = None,
    decoder: Decoder | None = None,
    ignore_eos: bool = False,
) -> Iterator[Chunk]:
    """Yield text as it is decoded. `session` carries a conversation's cache (chat)."""
    drafter = pair.drafter if use_drafter else None
    decoder = decoder or Decoder(pair.target, drafter, sampling)
    session = session or Session(pair.target)
    seeded = sampling is not None and not sampling.greedy and sampling.seed is not None
    schedule = make_schedule(num_draft, drafter is not None, seeded, decoder.schedule_memory)
    decoder.prepare(prompt_ids)  # not counted in TTFT
    detok = pair.tokenizer.detokenizer
    detok.reset()
    stats = Stats(prompt_tokens=len(prompt_ids) + (session.pending is not None),
                  decode_width=decoder.decode_width)
    t0 = time.perf_counter()
    text, shown = "", 0  # all text so far; how much of it was yielded
    eos = () if ignore_eos else pair.eos_ids  # ignore_eos: run to max_tokens (benchmarks, tests)
    for event in decoder.generate(session, prompt_ids, max_tokens, schedule, eos):
        now = time.perf_counter()
        if event.round is None:
            stats.prefill_seconds = stats.ttft_s = now - t0
        else:
            stats.rounds.append(event.round)
            stats.decode_seconds = now - t0 - stats.ttft_s
        stats.generated_tokens += len(event.tokens)
        stats.finish_reason = event.finish_reason
        for tok in event.tokens:
            if tok not in pair.eos_ids:
                detok.add_token(tok)
        if event.finish_reason:
            detok.finalize()
        text += detok.last_segment
        hit = min((text.index(s) for s in stop_strings if s in text), default=None)
        if hit is not None:
            stats.finish_reason = "stop"
            yield Chunk(text[shown:hit], event.tokens, stats, event.round)
            return
        # Hold back a tail that may be the start of a stop string still arriving.
        end = len(text) if event.finish_reason else len(text) - _stop_prefix(text, stop_strings)
        yield Chunk(text[shown:end], event.tokens, stats, event.round)
        shown = end


def _stop_prefix(text: str, stop_strings: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    return max(
        (n for s in stop_strings for n in range(min(len(s) - 1, len(text)), 0, -1)
         if s.startswith(text[-n:])),
        default=0,
    )


@dataclass
class Result:
    text: str
    token_ids: list[int]
    stats: Stats


def generate(pair: ModelPair, prompt_ids: list[int], **kwargs) -> Result:
    text, ids, stats = "", [], Stats()
    for chunk in stream_generate(pair, prompt_ids, **kwargs):
        text += chunk.text
        ids += chunk.tokens
        stats = chunk.stats
    return Result(text, ids, stats)
