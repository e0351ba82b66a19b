"""KV caches that roll back exactly, which speculative decoding needs.

mlx-lm's `KVCache` already trims exactly, so full-attention layers use it as is.
Its `RotatingKVCache` cannot: once the ring buffer has wrapped, `trim` only moves
an index and the entries it overwrote are gone, so output drifts past the sliding
window. `SlidingKVCache` keeps a plain, time-ordered buffer instead and drops old
entries only when they can no longer be seen by any future query, even after the
largest rollback we allow. Attention still sees exactly the window, because the
keys it returns are sliced (one query) or masked (a block of queries).
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import KVCache, _BaseCache

__all__ = ["KVCache", "SlidingKVCache", "cache_offset", "can_rollback", "rollback"]


class SlidingKVCache(_BaseCache):
    step = 256

    def __init__(self, window: int, max_rollback: int = 64):
        self.window = window
        self.max_rollback = max_rollback
        self.keys = None
        self.values = None
        self.offset = 0  # absolute position of the next token
        self.start = 0  # absolute position of buffer row 0

    def _first_visible(self, offset: int) -> int:
        """Earliest position a query at `offset` may attend to."""
        return max(0, offset - self.window + 1)

    def _compact(self):
        # Everything before `keep_from` is invisible to every future query, even
        # after rolling back `max_rollback` tokens (and to the drafter, which
        # reads one entry more than the window). Copy only when it pays off.
        keep_from = max(0, self.offset - self.window - self.max_rollback - 1)
        drop = keep_from - self.start
        if drop >= self.step:
            self.keys = self.keys[..., drop:, :]
            self.values = self.values[..., drop:, :]
            self.start += drop

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        n_new = keys.shape[2]
        if self.keys is not None:
            self._compact()
        used = self.offset - self.start
        if self.keys is None or used + n_new > self.keys.shape[2]:
            B, H, _, Dk = keys.shape
            grow = ((n_new + self.step - 1) // self.step) * self.step
            new_k = mx.zeros((B, H, grow, Dk), keys.dtype)
            new_v = mx.zeros((B, H, grow, values.shape[3]), values.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[..., :used, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., :used, :], new_v], axis=2)
        self.keys[..., used : used + n_new, :] = keys
        self.values[..., used : used + n_new, :] = values
        first = self._first_visible(self.offset) - self.start
        self.offset += n_new
        end = self.offset - self.start
        return self.keys[..., first:end, :], self.values[..., first:end, :]

    def make_mask(self, N: int, window_size: int | None = None, return_array: bool = False):
        # Called before update_and_fetch, with the keys it will return in mind:
        # positions first .. offset+N-1. One query sees exactly its window.
        if N == 1:
            return None
        first = self._first_visible(self.offset)
        if self.offset + N - first <= self.window:
            return "causal"  # every query sees all earlier keys: the fast path
        q = mx.arange(self.offset, self.offset + N)[:, None]
        k = mx.arange(first, self.offset + N)[None]
        return (k <= q) & (k > q - self.window)

    def fetch_last(self, n: int):
        """The last `n` committed keys and values (fewer at the start)."""
        end = self.offset - self.start
        first = max(0, end - n)
        return self.keys[..., first:end, :], self.values[..., first:end, :]

    def size(self):
        return min(self.offset, self.window)

    @property
    def state(self):
        return self.keys, self.values

    @state.setter
    def state(self, v):
        self.keys, self.values = v

    @property
    def meta_state(self):
        return tuple(map(str, (self.window, self.max_rollback, self.offset, self.start)))

    @meta_state.setter
    def meta_state(self, v):
        self.window, self.max_rollback, self.offset, self.start = map(int, v)

    def is_trimmable(self):
        return True

    def copy_before(self, end: int, n: int) -> tuple[mx.array, mx.array]:
        """Copies of the `n` entries before absolute position `end` (which must be held)."""
        first = max(end - n, 0)
        assert first >= self.start and end <= self.offset, "those entries are not held"
        a, b = first - self.start, end - self.start
        return mx.array(self.keys[..., a:b, :]), mx.array(self.values[..., a:b, :])

    @classmethod
    def resumed(cls, window: int, max_rollback: int, keys, values, end: int):
        """A cache at position `end` holding `keys`/`values` as its entries just before it
        (copy_before's output): attention from `end` on sees what it saw the first time."""
        cache = cls(window, max_rollback)
        cache.keys, cache.values = keys, values
        cache.offset, cache.start = end, end - keys.shape[2]
        return cache

    def can_trim(self, n: int) -> bool:
        """Whether the buffer still holds what every query after a rollback of `n` tokens
        sees (always true up to max_rollback; further while nothing needed was dropped,
        e.g. a conversation shorter than the window)."""
        return n <= self.max_rollback or self.start <= max(0, self.offset - n - self.window - 1)

    def trim(self, n: int) -> int:
        if not self.can_trim(n):
            raise ValueError(f"cannot roll back {n} tokens: the sliding window dropped them")
        n = min(self.offset, n)
        self.offset -= n
        return n

    def empty(self):
        return self.keys is None

    @property
    def nbytes(self):
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


def rollback(cache: list, n: int) -> None:
    """Forget the last `n` tokens in every layer's cache."""
    if n > 0:
        for c in cache:
            c.trim(n)


def can_rollback(cache: list, n: int) -> bool:
    """Whether `rollback(cache, n)` is exact (full-attention layers keep every token)."""
    return all(c.can_trim(n) for c in cache if isinstance(c, SlidingKVCache))


def cache_offset(cache: list) -> int:
    return cache[0].offset
