"""Test targets that round like real backends do: multi-row passes differ from 1-row passes.

`RoundingTarget` wraps a bfloat16 fixture target (on the Linux CPU its passes are bitwise
row-invariant: measured 0 difference at every width and context, see test_calibration),
and adds, to the logits of passes of `from_rows` rows or more, a deterministic
input-dependent difference delta * u(row, v), u in [-1, 1), from a hash of the row's hidden
state: as a backend whose kernels change with the number of rows (Metal's 1-row `qmv` vs
`qmv_wide`), or, with `from_keys`, only past a context length (attention kernels that
switch at 1024 keys). It also makes near-ties: about a third of the rows, chosen by
another hash of the hidden state (the same for every width), get their runner-up moved to
within `tie` of the top logit, so differences of realistic size can flip an argmax.
Logits are float32.
"""

from __future__ import annotations

import mlx.core as mx

from gemma_mtp_mlx.models.cache import cache_offset


def _frac(x: mx.array) -> mx.array:
    return x - mx.floor(x)


class RoundingTarget:
    def __init__(self, target, delta: float = 0.02, from_rows: int = 2, from_keys: int = 0,
                 tie: float = 0.02):
        self.target = target
        self.delta = delta
        self.from_rows = from_rows
        self.from_keys = from_keys
        self.tie = tie
        self.weights = mx.linspace(0.5, 1.5, 16)

    def __getattr__(self, name):  # everything else is the wrapped target's
        return getattr(self.target, name)

    def __call__(self, tokens: mx.array, cache: list) -> tuple[mx.array, mx.array]:
        keys = cache_offset(cache) + tokens.shape[1]
        hidden = self.target.hidden(tokens, cache)
        rounds = tokens.shape[1] >= self.from_rows and keys > self.from_keys
        return self._logits(hidden, rounds), hidden

    def logits(self, hidden: mx.array) -> mx.array:  # the prefill's last row
        return self._logits(hidden, hidden.shape[1] >= self.from_rows)

    def _logits(self, hidden: mx.array, rounds: bool) -> mx.array:
        logits = self.target.logits(hidden).astype(mx.float32)
        seed = (hidden[..., :16].astype(mx.float32) * self.weights).sum(-1, keepdims=True)
        logits = self._near_ties(logits, seed)
        if rounds:
            v = mx.arange(logits.shape[-1]).astype(mx.float32)
            u = 2 * _frac(mx.sin(seed * 12.9898 + v * 78.233) * 43758.5453) - 1
            logits = logits + self.delta * u
        return logits

    def _near_ties(self, logits: mx.array, seed: mx.array) -> mx.array:
        h = _frac(mx.sin(seed * 3.7 + 1.0) * 9973.0)  # [.., 1] in [0, 1)
        order = mx.argsort(logits, axis=-1)
        top = mx.take_along_axis(logits, order[..., -1:], axis=-1)
        second = order[..., -2:-1]
        gap = self.tie * _frac(h * 7.0)
        is_second = mx.arange(logits.shape[-1]) == second
        return mx.where((h < 1 / 3) & is_second, top - gap, logits)
