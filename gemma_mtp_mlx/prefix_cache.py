"""Recent conversations' caches, so a request that resends a conversation (what chat clients
do each turn) prefills only what is new.

Each entry is a `Session` and the token ids it holds (its cache, then the pending token). A
request takes the entry sharing the longest token prefix with its prompt, rolls that entry's
cache back to the shared prefix, and feeds only the rest; afterwards the session goes back
in with the prompt and the answer. Entries are evicted least recently used first, within a
byte budget. Output does not depend on where the prefix came from: a rolled-back cache holds
exactly what a fresh prefill of the same tokens holds (models/cache.py), and the prefix is
never cut inside what a sliding window has already dropped (`can_rollback`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .models.cache import cache_offset, can_rollback, rollback


@dataclass
class Entry:
    ids: list[int]
    session: object  # decoding.Session
    nbytes: int


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reusable(session, ids: list[int], prompt: list[int]) -> int:
    """How many of `prompt`'s tokens `session` (holding `ids`) can keep: the shared prefix,
    short of the whole prompt (its last token must be fed, for its logits), within what the
    cache holds (the pending token is not in it) and can roll back to. 0 if none."""
    held = cache_offset(session.cache)
    keep = min(common_prefix(ids, prompt), len(prompt) - 1, held)
    return keep if keep > 0 and can_rollback(session.cache, held - keep) else 0


class PrefixCache:
    def __init__(self, new_session, max_bytes: int):
        self.new_session = new_session  # () -> an empty Session
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, Entry] = OrderedDict()  # oldest first
        self._next = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def take(self, prompt: list[int]) -> tuple[object, int]:
        """(a session holding the first `kept` prompt tokens, kept); the entry it came
        from leaves the cache while in use."""
        best, kept = None, 0
        for key, entry in self.entries.items():
            n = reusable(entry.session, entry.ids, prompt)
            if n > kept:
                best, kept = key, n
        if best is None:
            return self.new_session(), 0
        session = self.entries.pop(best).session
        rollback(session.cache, cache_offset(session.cache) - kept)
        session.pending, session.carry = None, None
        return session, kept

    def put(self, session, ids: list[int]) -> None:
        """Keep `session` (holding exactly `ids`) as the most recent entry, evicting the
        least recently used beyond the budget."""
        if session.length != len(ids):  # not what we think it holds: never reuse it
            return
        nbytes = sum(c.nbytes for c in session.cache)
        if nbytes > self.max_bytes:
            return
        self.entries[self._next] = Entry(list(ids), session, nbytes)
        self._next += 1
        while self.nbytes > self.max_bytes:
            self.entries.popitem(last=False)
