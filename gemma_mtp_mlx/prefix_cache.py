"""Recent conversations' caches, so a request that resends a conversation (what chat clients
do each turn) prefills only what is new, with output bit-for-bit that of a fresh prefill.

Exact by construction: a prompt is prefilled in chunks of PREFILL_CHUNK tokens from position
0 (decoding.Decoder.step), so a fresh prefill of a longer prompt computes its first whole
chunks exactly as the earlier request's prefill did: the same tokens, the same shapes, the
same kernels. Only those whole chunks are reused (`aligned` tokens). Tokens computed any
other way (the answer, one row or one verify block at a time; the last, partial chunk)
round differently on most backends (measured on the CPU: 1e-6..1e-5 in the logits), so they
are prefilled again. A full-attention layer keeps every entry, so the reused part is a view
of its first `aligned` entries; a sliding layer drops old entries as it moves on, so the
window + 1 entries before `aligned` are copied right after the prefill.

Entries are never changed by a request that reuses them (it gets views and copies), so an
unrelated request sharing only a template header cannot take a conversation's cache away.
An entry whose tokens a newer one extends is dropped; beyond the byte budget the least
recently used goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .models.cache import KVCache, SlidingKVCache
from .models.target import DRAFTER_SLIDING_SPAN_EXTRA


@dataclass
class Entry:
    session: object  # decoding.Session
    aligned: int  # leading tokens computed by whole prefill chunks
    sliding: dict  # layer index -> (keys, values) of the entries just before `aligned`
    nbytes: int  # its caches, tails and token history

    @property
    def ids(self) -> list[int]:
        """The tokens the session holds (its cache, then the pending token)."""
        return self.session.history.tokens


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def aligned_after_prefill(session, chunk: int) -> int:
    """Tokens of `session`'s cache computed by whole prefill chunks, right after the
    prefill of a prompt that started at a chunk boundary."""
    held = session.length - (session.pending is not None)
    return held // chunk * chunk


def sliding_tails(session, aligned: int) -> dict:
    """Copies of each sliding layer's entries that queries from `aligned` on can see."""
    tails = {}
    for i, c in enumerate(session.cache):
        if isinstance(c, SlidingKVCache):
            tails[i] = c.copy_before(aligned, c.window + DRAFTER_SLIDING_SPAN_EXTRA)
    return tails


def resume(new_session, entry: Entry):
    """A new session holding `entry`'s first `aligned` tokens, `entry` left as it was."""
    session = new_session()
    for i, old in enumerate(entry.session.cache):
        if isinstance(old, SlidingKVCache):
            keys, values = entry.sliding[i]
            session.cache[i] = SlidingKVCache.resumed(
                old.window, old.max_rollback, keys, values, entry.aligned)
        else:
            c = KVCache()
            c.keys = old.keys[..., : entry.aligned, :]
            c.values = old.values[..., : entry.aligned, :]
            c.offset = entry.aligned
            session.cache[i] = c
    session.history.extend(entry.ids[: entry.aligned])  # what lookup drafts copy from
    return session


class PrefixCache:
    def __init__(self, new_session, max_bytes: int, chunk: int):
        self.new_session = new_session  # () -> an empty Session
        self.max_bytes = max_bytes
        self.chunk = chunk  # the prefill chunk (decoding.PREFILL_CHUNK)
        self.entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self._next = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def take(self, prompt: list[int]) -> tuple[object, int]:
        """(a session holding the first `kept` prompt tokens, kept): the entry whose whole
        prefill chunks are the longest prefix of `prompt` (short of its last token)."""
        best, kept = None, 0
        for key, entry in self.entries.items():
            shared = min(common_prefix(entry.ids, prompt), len(prompt) - 1)
            if kept < entry.aligned <= shared:
                best, kept = key, entry.aligned
        if best is None:
            return self.new_session(), 0
        self.entries.move_to_end(best)
        return resume(self.new_session, self.entries[best]), kept

    def stream(self, engine, prompt: list[int], request):
        """(kept, chunks): `engine.stream` of `prompt` over the longest reusable prefix; the
        session goes in as an entry when the chunks end or their consumer stops (not after
        an error)."""
        session, kept = self.take(prompt)
        return kept, self._stream(engine, session, prompt, kept, request)

    def _stream(self, engine, session, prompt, kept, request):
        tokens, aligned, tails, ok = [], 0, {}, False
        chunks = engine.stream(prompt[kept:], request, session)
        try:
            for chunk in chunks:
                if chunk.round is None:  # the prefill is done: what a later request reuses
                    aligned = aligned_after_prefill(session, self.chunk)
                    tails = sliding_tails(session, aligned) if aligned else {}
                tokens += chunk.tokens
                yield chunk
            ok = True
        except GeneratorExit:  # the consumer stopped: the session is still consistent
            ok = True
            raise
        finally:
            chunks.close()
            if ok:
                self.put(session, prompt + tokens, aligned, tails)

    def put(self, session, ids: list[int], aligned: int, sliding: dict) -> None:
        """Keep `session` (holding exactly `ids`, its history; `aligned` and `sliding` as
        measured right after its prefill) as the most recent entry."""
        if session.history.tokens != ids or session.length != len(ids) or aligned <= 0:
            return  # nothing exact to offer
        nbytes = sum(c.nbytes for c in session.cache) + session.history.nbytes
        nbytes += sum(k.nbytes + v.nbytes for k, v in sliding.values())
        if nbytes > self.max_bytes:
            return
        for key in [k for k, e in self.entries.items() if ids[: len(e.ids)] == e.ids]:
            del self.entries[key]  # superseded: the new entry holds all it did
        self.entries[self._next] = Entry(session, aligned, sliding, nbytes)
        self._next += 1
        while self.nbytes > self.max_bytes:
            self.entries.popitem(last=False)
