"""`gemma-mtp chat`: the REPL's turn loop, and its state (messages plus the target's cache
for them)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from .live import is_terminal, make_view, stats_line, status_panel

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

    def __init__(self, engine, system: str | None = None):
        self.engine = engine
        self.tok = engine.tokenizer
        self.system = system
        self.messages: list[dict] = []
        self.session = None
        self.dirty = False  # the cache may not match `ids` (an interrupted answer)
        self.turns = 0
        self.model_role = engine.model_role
        try:
            added = self.tok.get_added_vocab()
        except AttributeError:
            added = {}
        self.special_text = [t for t in added if t]
        self.special_ids = set(added.values()) | set(engine.eos_ids)

    # template helpers
    def _render(self, messages: list[dict], generation_prompt: bool = True) -> str:
        return self.tok.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False
        )

    def _encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _all_messages(self, user_text: str | None = None) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs += self.messages
        if user_text is not None:
            msgs.append({"role": "user", "content": user_text})
        return msgs

    @property
    def ids(self) -> list[int]:
        """Tokens in the session: the cache, then `pending` (its history)."""
        return self.session.history.tokens if self.session is not None else []

    @property
    def cached(self) -> int:
        """Tokens in the cache proper (the pending token is not)."""
        if self.session is None:
            return 0
        return len(self.ids) - (self.session.pending is not None)

    def reset(self) -> None:
        self.session = self.engine.new_session()
        self.dirty = False

    def clear(self) -> None:
        self.messages = []
        self.turns = 0
        self.session = None
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
        if keep < len(self.ids):  # keep is len - 1: the pending token is not kept
            self.session.drop_pending()

    def record(self, user_text: str, answer: list[int], interrupted: bool):
        body = [t for t in answer]
        while body and body[-1] in self.engine.eos_ids:
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


@dataclass
class ChatScreen:
    """Where the REPL writes: answers to `console`; replies to commands beside the answers on
    a terminal, else on stderr (so stdout holds only answers)."""

    console: object
    note: object
    interactive: bool
    tty_out: bool
    last: tuple | None = field(default=None)  # (stats, cached) of the last turn
    answered: bool = False  # an answer was shown (the first one's stats add the load time)

    @classmethod
    def open(cls) -> ChatScreen:
        from rich.console import Console

        interactive, tty_out = is_terminal(sys.stdin), is_terminal(sys.stdout)
        console = Console(highlight=False)
        note = console if tty_out else Console(stderr=True, highlight=False, soft_wrap=True)
        if interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
        return cls(console, note, interactive, tty_out)


def run_chat(engine, request, system: str | None = None, on_first_turn=None) -> None:
    """Read messages until /quit or end of input; answer each with the conversation's cache.
    `on_first_turn`: called after the first answer (--verbose's load phases)."""
    screen = ChatScreen.open()
    convo = Conversation(engine, system)
    drafting = engine.drafting and request.drafts
    if screen.tty_out:
        screen.console.print(
            f"[bold]gemma-mtp chat[/] · {engine.path} · drafter "
            f"{request.draft_label(engine.drafting)} · /help for commands, Ctrl-D to exit",
            style="dim",
        )
    while True:
        try:
            message = read_message(screen.interactive, screen.console)
        except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line
            screen.console.print()
            continue
        if message is None:
            if screen.interactive:
                screen.console.print()
            return
        if not message.strip():
            continue
        text = message.strip()
        if text.startswith("/") and "\n" not in text:
            if not chat_command(text, convo, screen, drafting):
                return
            continue
        first = not screen.answered
        answer_turn(engine, request, convo, message, screen, drafting)
        if first and screen.answered and on_first_turn is not None:
            on_first_turn()


def chat_command(text: str, convo: Conversation, screen: ChatScreen, drafting: bool) -> bool:
    """Run one /command; False to end the chat."""
    command, _, arg = text.partition(" ")
    note = screen.note
    if command in ("/quit", "/exit", "/q"):
        return False
    if command == "/reset":
        convo.clear()
        screen.last = None
        note.print("[dim]conversation reset[/]")
    elif command == "/system":
        convo.system = arg.strip() or None
        state = "set" if convo.system else "cleared"
        note.print(f"[dim]system prompt {state} (applies from the next turn)[/]")
    elif command == "/stats":
        if screen.last is None:
            note.print("[dim]no turn yet[/]")
        else:
            stats, cached = screen.last
            if screen.tty_out:
                note.print(status_panel(stats, drafting, title="last turn"))
            else:
                note.print(stats_line(stats, drafting, cached=cached), markup=False)
        note.print(f"[dim]session: {convo.turns} turns, {len(convo.ids)} tokens in context[/]")
    elif command in ("/help", "/?"):
        note.print(CHAT_HELP_TEXT, markup=False)
    else:
        note.print(f"unknown command {command} (try /help)", markup=False)
    return True


def answer_turn(engine, request, convo, message: str, screen: ChatScreen, drafting: bool):
    """One turn: feed what the cache lacks, stream the answer, record it (also when Ctrl-C
    stops it)."""
    from .request import RequestError

    fed = convo.plan(message)
    cached = convo.cached
    turn = convo.turns + 1
    view = make_view(drafting, title=f"turn {turn}")
    answer: list[int] = []
    stats = None
    interrupted = False
    with view:
        try:
            for chunk in engine.stream(fed, request, convo.session):
                answer += chunk.tokens
                stats = chunk.stats
                view.add(chunk)
        except KeyboardInterrupt:
            interrupted = True
        except RequestError as e:  # e.g. the conversation outgrew the context
            screen.note.print(f"error: {e} (/reset starts over)", markup=False)
            convo.dirty = True
            return
        load_s = None if screen.answered else engine.load_seconds  # it waited for the loading
        view.finish(stats, drafting, interrupted=interrupted, turn=turn, cached=cached,
                    load_s=load_s)
        screen.answered = True
    if interrupted and stats is None:
        screen.note.print("[dim](stopped before the first token)[/]")
    convo.record(message, answer, interrupted)
    if stats is not None:
        screen.last = (stats, cached)
