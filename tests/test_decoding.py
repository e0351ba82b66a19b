"""The speculative loop: greedy output identical to plain decoding, exact rollback,
stops, chat continuation, and the target's distribution under sampling."""

from functools import cache

import mlx.core as mx
import numpy as np
import pytest
from conftest import PAIRS, pair, reference
from stats import chi2_fits

from gemma_mtp_mlx.decoding import AutoSchedule, Decoder, DraftSchedule, Session
from gemma_mtp_mlx.models.cache import SlidingKVCache
from gemma_mtp_mlx.sampling import SamplingParams
from gemma_mtp_mlx.scripted import ScriptedDrafter

N_NEW = 48
SCHEDULES = list(range(1, 9)) + [None]  # fixed K = 1..8, then the heuristic


def run(target, drafter, prompt, n=N_NEW, schedule=None, session=None, eos=(), **kw):
    session = session or Session(target)
    decoder = Decoder(target, drafter, kw.pop("sampling", None), **kw)
    tokens, rounds, finish = [], [], None
    for event in decoder.generate(session, prompt, n, schedule, eos):
        tokens += event.tokens
        finish = event.finish_reason
        if event.round is not None:
            rounds.append(event.round)
    return tokens, rounds, finish, session


@cache
def plain(name, dtype, n=N_NEW):
    p = pair(name, dtype)
    return tuple(run(p.target, None, reference(name)["prompt_ids"].tolist(), n)[0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", PAIRS)
def test_greedy_speculative_equals_plain(name, dtype):
    """Every fixed K in 1..8 and the heuristic, with the real drafter and a scripted one."""
    p = pair(name, dtype)
    prompt = reference(name)["prompt_ids"].tolist()
    want = list(plain(name, dtype))
    accepted_total = 0
    for K in SCHEDULES:
        # Generated token i sits at absolute position len(prompt) + i.
        scripted = ScriptedDrafter(p.drafter, want, len(prompt), 0.7, seed=K or 0)
        for drafter in (p.drafter, scripted):
            got, rounds, _, _ = run(p.target, drafter, prompt, schedule=DraftSchedule(fixed=K))
            assert got == want, (K, type(drafter).__name__)
            assert all(r.draft_len <= (K or 8) for r in rounds)
            accepted_total += sum(r.accepted for r in rounds)
    assert accepted_total > 100  # the accept path was exercised, not only rejections


@pytest.mark.parametrize("name", PAIRS)
def test_redo_path_equals_plain(name):
    """With a margin no row can meet, every round redoes on the single-token path."""
    p = pair(name)
    prompt = reference(name)["prompt_ids"].tolist()
    want = list(plain(name, "float32"))
    drafter = ScriptedDrafter(p.drafter, want, len(prompt), 0.8)
    got, rounds, _, _ = run(p.target, drafter, prompt, schedule=DraftSchedule(fixed=4),
                            greedy_margin=1e9)
    assert got == want
    assert all(r.redone for r in rounds if r.draft_len > 0)
    assert sum(r.draft_len > 0 for r in rounds) > 5


def cache_contents(target, session):
    """What each layer can still attend to: the window (sliding) or everything (full)."""
    out = []
    for c in session.cache:
        if isinstance(c, SlidingKVCache):
            k, v = c.fetch_last(c.window)
        else:
            k, v = c.keys[..., : c.offset, :], c.values[..., : c.offset, :]
        out.append((np.array(k), np.array(v)))
    return out


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_caches_equal_plain_after_any_pattern(name, alpha):
    p = pair(name)
    prompt = reference(name)["prompt_ids"].tolist()
    want = list(plain(name, "float32"))
    _, _, _, plain_session = run(p.target, None, prompt)
    for K in (1, 3, 8, None):
        drafter = ScriptedDrafter(p.drafter, want, len(prompt), alpha, seed=7)
        got, _, _, session = run(p.target, drafter, prompt, schedule=DraftSchedule(fixed=K))
        assert got == want
        assert session.pending == plain_session.pending
        assert np.allclose(np.array(session.carry), np.array(plain_session.carry), atol=1e-4)
        ours, theirs = cache_contents(p.target, session), cache_contents(p.target, plain_session)
        assert len(ours) == len(theirs)
        for (k1, v1), (k2, v2) in zip(ours, theirs, strict=True):
            assert k1.shape == k2.shape
            # float32 rounding only: block and single-row matmuls sum in different orders
            # (OpenBLAS); a rollback bug leaves whole rows of other tokens' K/V, O(1) apart.
            np.testing.assert_allclose(k1, k2, atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(v1, v2, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("K", [None, 1, 4, 8])
def test_stops_at_eos_and_max_tokens(K):
    name = "e2b_tiny"
    p = pair(name)
    prompt = reference(name)["prompt_ids"].tolist()
    want = list(plain(name, "float32"))
    drafter = ScriptedDrafter(p.drafter, want, len(prompt), 0.9)
    eos = want[30]
    first = want.index(eos)
    got, _, finish, session = run(p.target, drafter, prompt, schedule=DraftSchedule(fixed=K),
                                  eos=[eos])
    assert got == want[: first + 1] and finish == "stop"
    assert session.length == len(prompt) + first + 1
    for n in (1, 2, 13):
        schedule = DraftSchedule(fixed=K)
        got, _, finish, session = run(p.target, drafter, prompt, n=n, schedule=schedule)
        assert got == want[:n] and finish == "length"
        assert session.length == len(prompt) + n


def test_chat_continuation_equals_plain():
    """A second turn on a kept session matches plain decoding of the same conversation."""
    name = "dense31b_tiny"
    p = pair(name)
    prompt = reference(name)["prompt_ids"].tolist()
    turn2 = prompt[5:12]
    outs = []
    for drafter in (None, p.drafter):
        session = Session(p.target)
        first, _, _, _ = run(p.target, drafter, prompt, n=20, session=session)
        second, _, _, _ = run(p.target, drafter, turn2, n=30, session=session)
        outs.append((first, second))
    assert outs[0] == outs[1]
    # And both equal decoding the whole conversation from scratch.
    whole = prompt + outs[0][0] + turn2
    fresh, _, _, _ = run(p.target, None, whole, n=30)
    assert fresh == outs[0][1]


def test_empty_prompt_is_refused():
    p = pair("e2b_tiny")
    with pytest.raises(ValueError):
        run(p.target, p.drafter, [])


def exact_pair_distribution(target, prompt, params):
    """P(tok1, tok2) under plain sampling, from the target's own logits."""
    from gemma_mtp_mlx.sampling import probabilities

    cache = target.make_cache()
    logits, _ = target(mx.array(prompt)[None], cache)
    p1 = np.array(probabilities(logits[0, -1], params))
    joint = np.zeros((len(p1), len(p1)))
    for t1 in np.nonzero(p1)[0]:
        lg, _ = target(mx.array(prompt + [int(t1)])[None], target.make_cache())
        joint[t1] = p1[t1] * np.array(probabilities(lg[0, -1], params))
    return joint


@pytest.mark.parametrize("name", PAIRS)
def test_speculative_sampling_matches_target_distribution(name):
    """Thousands of draws of (token 1, token 2), the second from a speculative round:
    chi-square against the exact plain-sampling probabilities (false alarm 0.1 %)."""
    p = pair(name)
    prompt = reference(name)["prompt_ids"].tolist()[:8]
    params = SamplingParams(temperature=1.0, top_k=6, seed=1)
    joint = exact_pair_distribution(p.target, prompt, params)
    greedy = list(run(p.target, None, prompt, n=4)[0])
    counts = np.zeros_like(joint)
    for i in range(1200):
        s = SamplingParams(temperature=1.0, top_k=6, seed=1000 + i)
        # Half the draws with the real drafter (mostly rejected), half with one that often
        # proposes the likely continuation (often accepted).
        drafter = p.drafter if i % 2 else ScriptedDrafter(p.drafter, greedy, len(prompt), 0.8, i)
        got, rounds, _, _ = run(p.target, drafter, prompt, n=3, sampling=s,
                                schedule=DraftSchedule(fixed=2))
        assert rounds[0].draft_len == 1  # token 2 came from a speculative round
        counts[got[0], got[1]] += 1
    stat, crit = chi2_fits(counts.ravel(), joint.ravel())
    assert stat < crit, (stat, crit)


@pytest.mark.parametrize("name", PAIRS)
def test_auto_schedule_output_equals_plain(name):
    p = pair(name)
    prompt = reference(name)["prompt_ids"].tolist()
    want = list(plain(name, "float32"))
    drafter = ScriptedDrafter(p.drafter, want, len(prompt), 0.8)
    got, rounds, _, _ = run(p.target, drafter, prompt, schedule=AutoSchedule())
    assert got == want
    assert any(r.draft_len > 0 for r in rounds)


@pytest.mark.parametrize("stop_after", [1, 3, 10])
def test_plain_run_ahead_keeps_the_session_consistent(stop_after):
    """Plain decoding queues the next step ahead; stops and early exits must undo it."""
    name = "e2b_tiny"
    p = pair(name)
    prompt = reference(name)["prompt_ids"].tolist()
    want = list(plain(name, "float32"))
    # EOS stop and the token budget.
    got, _, finish, session = run(p.target, None, prompt, eos=[want[stop_after - 1]])
    assert got == want[: want.index(want[stop_after - 1]) + 1] and finish == "stop"
    assert session.length == len(prompt) + len(got)
    # The consumer walks away mid-stream (Ctrl-C, closed pipe): the session stays usable.
    session = Session(p.target)
    events = Decoder(p.target).generate(session, prompt, 40)
    got = []
    for event in events:
        got += event.tokens
        if len(got) >= stop_after:
            break
    events.close()
    assert session.length == len(prompt) + len(got)
    more, _, _, _ = run(p.target, None, [], n=5, session=session)
    assert got + more == want[: len(got) + 5]


@pytest.mark.parametrize("width", [8, 17])
def test_padded_verify_equals_plain(width):
    """Verify passes padded to a fixed width (faster on some GPUs) change nothing."""
    name = "dense31b_tiny"
    p = pair(name)
    prompt = reference(name)["prompt_ids"].tolist()
    want = list(plain(name, "float32"))
    for K in (1, 4, None):
        drafter = ScriptedDrafter(p.drafter, want, len(prompt), 0.7, seed=3)
        got, _, _, session = run(p.target, drafter, prompt, schedule=DraftSchedule(fixed=K),
                                 verify_width=width)
        assert got == want
        assert session.length == len(prompt) + len(want)
    forced, rounds, _, _ = run(p.target, ScriptedDrafter(p.drafter, want, len(prompt), 0.7),
                               prompt, schedule=DraftSchedule(fixed=3), verify_width=width,
                               greedy_margin=1e9)
    assert forced == want and any(r.redone for r in rounds)


def test_verify_width_plan_pads_only_where_clearly_cheaper():
    from gemma_mtp_mlx.decoding import plan_verify_widths

    # Costs seen on an H100 (MLX CUDA, 31B 4-bit): 5 rows slower than 8 or 9.
    cuda = {2: 0.04, 3: 0.05, 4: 0.09, 5: 0.104, 6: 0.1, 7: 0.09, 8: 0.062, 9: 0.058}
    plan = plan_verify_widths(cuda)
    assert plan[5] == 9 and plan[4] == 9 and plan[2] == 2 and plan[8] == 8
    linear = {w: float(w) for w in range(2, 18)}  # the CPU backend: never pad
    assert all(n == w for n, w in plan_verify_widths(linear).items())


def test_auto_verify_width_uses_the_measured_costs_and_stays_lossless():
    name = "dense31b_tiny"
    p = pair(name)
    prompt = reference(name)["prompt_ids"].tolist()
    want = list(plain(name, "float32"))
    # As if measured on a GPU where 12 rows are cheapest: every verify pads to 12.
    p.target.verify_costs = {w: (0.5 if w == 12 else 1.0) for w in range(2, 18)}
    try:
        decoder = Decoder(p.target, p.drafter, verify_width="auto")
        decoder.prepare(prompt)
        assert all(decoder.width(n) == (12 if n <= 12 else n) for n in range(2, 18))
        drafter = ScriptedDrafter(p.drafter, want, len(prompt), 0.7, seed=5)
        got, _, _, session = run(p.target, drafter, prompt, schedule=DraftSchedule(fixed=4),
                                 verify_width="auto")
        assert got == want and session.length == len(prompt) + len(want)
    finally:
        del p.target.verify_costs
    with pytest.raises(ValueError):
        Decoder(p.target, p.drafter, verify_width=99)
