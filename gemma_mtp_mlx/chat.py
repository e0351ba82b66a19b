"""The chat REPL's state: messages plus the target's cache for them."""

from __future__ import annotations

import sys

CHAT_HELP_TEXT = (
    "commands: /reset (forget the conversation), /stats (last turn and session), "
    "/system TEXT (set the system prompt), /quit (or Ctrl-D). "
    'A line ending with \\ continues; """ starts and ends a multi-line block. '
    "Ctrl-C stops an answer."
)


class Conversation:
    """Messages plus the target's cache for them (a Session), kept across turns.

    A turn feeds only what the cache lacks: the templated conversation minus the
    tokens already in the session (token prefix, or, at a special-token
    boundary, text prefix, so the model's own tokens for its answers stay).
    When the history re-renders differently, the cache is rebuilt from scratch.
    """

    def __init__(self, pair, system: str | None = None):
        from .decoding import Session

        self._session_cls = Session
        self.pair = pair
        self.tok = pair.tokenizer
        self.system = system
        self.messages: list[dict] = []
        self.session = None
        self.ids: list[int] = []  # tokens in the session: the cache, then `pending`
        self.dirty = False  # the cache may not match `ids` (an interrupted answer)
        self.turns = 0
        self.model_role = self._probe_model_role()
        try:
            added = self.tok.get_added_vocab()
        except AttributeError:
            added = {}
        self.special_text = [t for t in added if t]
        self.special_ids = set(added.values()) | set(pair.eos_ids)

    # template helpers
    def _render(self, messages: list[dict], generation_prompt: bool = True) -> str:
        return self.tok.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False
        )

    def _encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _probe_model_role(self) -> str:
        """'assistant' or 'model': whichever re-renders an answer after the generation prompt."""
        user = [{"role": "user", "content": "x"}]
        try:
            prompt = self._render(user)
        except Exception:
            return "assistant"
        for role in ("assistant", "model"):
            try:
                text = self._render(user + [{"role": role, "content": "y"}], False)
            except Exception:
                continue
            if text.startswith(prompt + "y"):
                return role
        return "assistant"

    def _all_messages(self, user_text: str | None = None) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs += self.messages
        if user_text is not None:
            msgs.append({"role": "user", "content": user_text})
        return msgs

    @property
    def cached(self) -> int:
        """Tokens in the cache proper (the pending token is not)."""
        if self.session is None:
            return 0
        return len(self.ids) - (self.session.pending is not None)

    def reset(self) -> None:
        self.session = self._session_cls(self.pair.target)
        self.ids = []
        self.dirty = False

    def clear(self) -> None:
        self.messages = []
        self.turns = 0
        self.session = None
        self.ids = []
        self.dirty = False

    def plan(self, user_text: str) -> list[int]:
        """The ids to feed for this turn; drops or rebuilds the cache when it cannot be reused."""
        text = self._render(self._all_messages(user_text))
        full = self._encode(text)
        if self.session is None or self.dirty:
            self.reset()
            return full
        S = self.ids
        # Keep the pending token when it re-renders, else drop it (it is not in the cache).
        for keep in (len(S), len(S) - 1):
            if keep > 0 and len(full) > keep and full[:keep] == S[:keep]:
                self._keep(keep)
                return full[keep:]
        for keep in (len(S), len(S) - 1):
            if keep <= 0:
                continue
            prefix = self._decode(S[:keep])
            rest = text[len(prefix) :]
            clean = S[keep - 1] in self.special_ids or any(
                rest.startswith(t) for t in self.special_text
            )
            if rest and clean and text.startswith(prefix):
                self._keep(keep)
                return self._encode(rest)
        self.reset()
        return full

    def _keep(self, keep: int) -> None:
        if keep < len(self.ids):
            self.session.pending = None
            self.ids = self.ids[:keep]

    def record(self, user_text: str, fed: list[int], answer: list[int], interrupted: bool):
        self.ids = self.ids + fed + answer
        body = [t for t in answer]
        while body and body[-1] in self.pair.eos_ids:
            body.pop()
        self.messages.append({"role": "user", "content": user_text})
        self.messages.append({"role": self.model_role, "content": self._decode(body)})
        self.turns += 1
        if interrupted:
            self.dirty = True


def read_message(interactive: bool, console) -> str | None:
    """One user message (None at end of input): `\\` continues a line, \"\"\" opens a block."""

    def line(prompt: str) -> str | None:
        if interactive:
            try:
                return console.input(prompt)
            except EOFError:
                return None
        got = sys.stdin.readline()
        return got.rstrip("\n").rstrip("\r") if got else None

    first = line("[bold green]>>> [/]")
    if first is None:
        return None
    if first.strip() == '"""':
        lines = []
        while (nxt := line("[dim]... [/]")) is not None and nxt.strip() != '"""':
            lines.append(nxt)
        return "\n".join(lines)
    lines = [first]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        nxt = line("[dim]... [/]")
        if nxt is None:
            break
        lines.append(nxt)
    return "\n".join(lines)
