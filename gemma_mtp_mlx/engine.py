"""One engine for every front-end: `generate`, `chat`, `bench` and `serve`.

    engine = Engine.load(ModelSpec("out/e4b-4bit"))
    request = Request(max_tokens=64, sampling=SamplingParams(temperature=0.7, seed=1))
    for piece in engine.stream(engine.encode("Why is the sky blue?"), request):
        print(piece.text, end="")

- `Engine`: what is loaded once: target, drafter, tokenizer, end-of-sequence ids, the
  context limit and the one-off measurements the decoder needs: the target's calibration on
  this machine (calibration.py: decode width, guard margins, verify widths), which also
  keeps what the auto schedule learned (schedule.ScheduleMemory), stored under the cache
  folder so that chat turns, server requests and later runs go on from it.
- `Request`: what one answer needs, checked once: token budget, sampling, draft policy,
  stop strings. Nothing else decides these, so a front-end cannot pass two that disagree.
- `Session` (decoding.py): one conversation's cache, kept across turns (chat, the
  server's prefix cache).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .request import ContextError, ModelSpec, Request, RequestError, SamplingParams

__all__ = ["ContextError", "Engine", "ModelSpec", "Request", "RequestError", "SamplingParams"]


@dataclass
class Chunk:
    text: str  # new printable text (may be empty while a multi-byte char is pending)
    tokens: list[int]
    stats: object  # stats.Stats
    round: object | None = None  # decoding.RoundInfo


@dataclass
class Result:
    text: str
    token_ids: list[int]
    stats: object  # stats.Stats


class Engine:
    """A loaded model pair and everything one answer needs besides its request."""

    def __init__(self, pair, max_context: int | None = None, progress: bool = False,
                 recalibrate: bool = False):
        self.pair = pair
        self.target = pair.target
        self.drafter = pair.drafter
        self.tokenizer = pair.tokenizer
        self.eos_ids = set(pair.eos_ids)
        self.path = pair.path
        self.max_context = max_context or model_context(pair.target)
        self.progress = progress  # a spinner on a terminal's stderr while calibrating
        # seconds per phase until the first token can be computed (calibration is added by
        # the first request that drafts)
        self.load_times: dict[str, float] = dict(getattr(pair, "load_times", {}))
        self.recalibrate = recalibrate  # measure anew at the first request, ignoring the file
        self.calibration = None  # calibration.Calibration, at the first request (calibrated())
        self._calibrated = False

    @classmethod
    def load(cls, spec: ModelSpec, progress: bool | None = None) -> Engine:
        """Resolve and load `spec`, refusing (UserError, one line) what cannot load or fit.
        `progress`: bars and spinners on stderr (default: when it is a terminal)."""
        from .live import is_terminal
        from .resolve import load_model

        progress = is_terminal(sys.stderr) if progress is None else progress
        pair, max_context = load_model(spec, progress)
        return cls(pair, max_context, progress, spec.recalibrate)

    @property
    def load_seconds(self) -> float:
        return sum(self.load_times.values())

    @property
    def drafter_name(self) -> str | None:
        """The drafter's folder, as the stats name it."""
        path = getattr(self.pair, "drafter_path", None)
        return str(path) if self.drafter is not None and path is not None else None

    @property
    def drafting(self) -> bool:
        return self.drafter is not None

    @property
    def has_chat_template(self) -> bool:
        return getattr(self.tokenizer, "chat_template", None) is not None

    # -- prompts --------------------------------------------------------------------------------
    def encode(self, prompt: str, system: str | None = None, raw: bool = False) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, system, raw)

    @cached_property
    def model_role(self) -> str:
        """'assistant' or 'model': whichever the chat template re-renders an answer with,
        right after its generation prompt."""
        tok = self.tokenizer
        user = [{"role": "user", "content": "x"}]
        try:
            prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        except Exception:
            return "assistant"
        for role in ("assistant", "model"):
            try:
                text = tok.apply_chat_template(user + [{"role": role, "content": "y"}],
                                               add_generation_prompt=False, tokenize=False)
            except Exception:
                continue
            if text.startswith(prompt + "y"):
                return role
        return "assistant"

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids for a conversation through the chat template, ready for the answer."""
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    # -- answers --------------------------------------------------------------------------------
    def new_session(self):
        from .decoding import Session

        return Session(self.target)

    def calibrated(self):
        """The target's calibration (calibration.Calibration), obtained at the first request:
        the one stored under the cache folder or, when there is none (or `recalibrate`),
        measured (a spinner meanwhile) and stored; the time is the load phase "calibration".
        Every request uses it, plain ones and those of an engine loaded without its drafter
        too: plain decoding then runs at the decode width drafted decoding runs at, so the
        two agree whichever ran first on this machine."""
        from . import calibration as calib
        from .progress import spinner

        if self._calibrated:
            return self.calibration
        start = time.perf_counter()
        if self.path is None:  # nothing to key a stored one by: this process only
            found = calib.in_memory(self.target)
        else:
            key = calib.calibration_key(self.target, str(Path(self.path).resolve()))
            found = None if self.recalibrate else calib.load(key)
            if found is None:
                with spinner(self.progress, "measuring this machine's kernels (once)"):
                    found = calib.load_or_measure(self.target, key, recalibrate=True)
        self.load_times["calibration"] = time.perf_counter() - start
        self.calibration, self._calibrated = found, True
        return found

    def decoder(self, request: Request, prompt_ids: list[int]):
        """A Decoder for one request, given the engine's calibration and, when it drafts,
        what auto learned before with this drafter (greedy and sampled apart, and of its
        lookup rounds apart)."""
        from .decoding import Decoder

        drafter = self.drafter if request.drafts else None
        calibration = self.calibrated()
        memory = lookup_memory = None
        if calibration is not None and drafter is not None:
            name, greedy = self.drafter_name or "", request.sampling.greedy
            memory = calibration.schedule_memory(name, greedy)
            if request.lookup:
                lookup_memory = calibration.schedule_memory(name, greedy, lookup=True)
        decoder = Decoder(self.target, drafter, request.sampling, calibration=calibration,
                          schedule_memory=memory, lookup=request.lookup,
                          lookup_memory=lookup_memory)
        decoder.prepare(prompt_ids)  # nothing left to measure: the calibration is given
        return decoder

    def check_context(self, session, prompt_ids: list[int]) -> None:
        held = session.length if session is not None else 0
        if held + len(prompt_ids) >= self.max_context:
            where = f" after {held} tokens of conversation" if held else ""
            raise ContextError(
                f"the prompt ({len(prompt_ids)} tokens{where}) does not fit the context of "
                f"{self.max_context} tokens"
            )

    def stream(self, prompt_ids: list[int], request: Request, session=None) -> Iterator[Chunk]:
        """Decode an answer to `prompt_ids` (after what `session` holds), yielding text as
        it comes; the token budget is cut where the context ends."""
        request.validate(self.drafting)
        if not prompt_ids and (session is None or session.pending is None):
            raise RequestError("empty prompt")
        session = session if session is not None else self.new_session()
        self.check_context(session, prompt_ids)
        decoder = self.decoder(request, prompt_ids)
        schedule = decoder.schedule(request.schedule_spec, request.seeded)
        budget = min(request.max_tokens, self.max_context - session.length - len(prompt_ids))
        eos = () if request.ignore_eos else self.eos_ids
        prompt_tokens = len(prompt_ids) + (session.pending is not None)
        events = decoder.generate(session, prompt_ids, budget, schedule, eos)
        try:
            yield from self._text(events, request, prompt_tokens, decoder)
        finally:  # the consumer may stop early: the decoder then rolls its cache back
            events.close()

    def _text(self, events, request: Request, prompt_tokens: int, decoder):
        """Decoder events as text pieces: multi-byte characters never split, stop strings
        never shown (a tail that may begin one is held back until it cannot)."""
        from .stats import Stats

        detok = self.tokenizer.detokenizer
        detok.reset()
        drafting = decoder.drafter is not None
        stats = Stats(prompt_tokens=prompt_tokens, drafting=drafting,
                      drafter=self.drafter_name if drafting else None,
                      decode_width=decoder.decode_width)
        t0 = time.perf_counter()
        text, shown = "", 0  # all text so far; how much of it was yielded
        for event in events:
            stats.add(event, time.perf_counter() - t0)
            for tok in event.tokens:
                if tok not in self.eos_ids:
                    detok.add_token(tok)
            if event.finish_reason:
                detok.finalize()
            text += detok.last_segment
            hit = min((text.index(s) for s in request.stop if s in text), default=None)
            if hit is not None:
                stats.finish_reason = "stop"
                yield Chunk(text[shown:hit], event.tokens, stats, event.round)
                return
            end = len(text) if event.finish_reason else len(text) - stop_prefix(text, request.stop)
            yield Chunk(text[shown:end], event.tokens, stats, event.round)
            shown = end

    def run(self, prompt_ids: list[int], request: Request, session=None) -> Result:
        """The whole answer at once."""
        text, ids, stats = "", [], None
        for chunk in self.stream(prompt_ids, request, session):
            text += chunk.text
            ids += chunk.tokens
            stats = chunk.stats
        return Result(text, ids, stats)


def encode_prompt(tokenizer, prompt: str, system: str | None = None, raw: bool = False):
    """Token ids for one user message: through the chat template unless `raw` (or the
    model has none)."""
    if raw or getattr(tokenizer, "chat_template", None) is None:
        return list(tokenizer.encode(prompt))
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": prompt})
    return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True))


def model_context(target) -> int:
    """The model's own context limit (max_position_embeddings; 131072 when unknown)."""
    return int(getattr(target.args, "max_position_embeddings", 0) or 131072)


def stop_prefix(text: str, stop_strings: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    return max(
        (n for s in stop_strings for n in range(min(len(s) - 1, len(text)), 0, -1)
         if s.startswith(text[-n:])),
        default=0,
    )
