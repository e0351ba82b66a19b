"""The server's prefix cache: a resent conversation reuses the whole prefill chunks of the
earlier request, bit for bit what a fresh prefill computes; entries are never taken over by
an unrelated request; least recently used entries go first beyond the byte budget."""

import mlx.core as mx
from conftest import engine

from gemma_mtp_mlx.decoding import PREFILL_CHUNK, Decoder
from gemma_mtp_mlx.prefix_cache import PrefixCache, common_prefix
from gemma_mtp_mlx.request import Request

LONG = [(i * 37) % 500 + 10 for i in range(PREFILL_CHUNK + 190)]  # one whole chunk and a part


def answer(cache, prompt, n=8, draft=None):
    e = engine("e2b_tiny")
    kept, chunks = cache.stream(e, prompt, Request(max_tokens=n, ignore_eos=True, draft=draft))
    return [t for c in chunks for t in c.tokens], kept


def first_logits(session, tokens):
    e = engine("e2b_tiny")
    logits, _ = Decoder(e.target).step(session, tokens)
    return logits


def test_a_resent_conversation_reuses_whole_chunks_exactly():
    e = engine("e2b_tiny")
    cache = PrefixCache(e.new_session, 10**9, PREFILL_CHUNK)
    first, kept = answer(cache, LONG)
    assert kept == 0 and len(cache.entries) == 1
    follow = LONG + first + [7, 8, 9]
    session, kept = cache.take(follow)
    assert kept == PREFILL_CHUNK  # the answer and the partial chunk are prefilled again
    assert session.history.tokens == LONG[:kept]  # what lookup drafts copy from
    cached = first_logits(session, follow[kept:])
    fresh = first_logits(e.new_session(), follow)
    assert mx.array_equal(cached, fresh).item()  # bit for bit
    for draft in ("off", 3):
        again, kept = answer(cache, follow, draft=draft)
        assert kept == PREFILL_CHUNK
        plain = e.run(follow, Request(max_tokens=8, ignore_eos=True, draft="off")).token_ids
        assert again == plain


def test_an_unrelated_request_does_not_take_a_conversation_away():
    e = engine("e2b_tiny")
    cache = PrefixCache(e.new_session, 10**9, PREFILL_CHUNK)
    first, _ = answer(cache, LONG)
    _, kept = answer(cache, LONG[:6] + [99, 98, 97])  # shares a 6-token "header"
    assert kept == 0
    _, kept = answer(cache, LONG + first + [5])
    assert kept == PREFILL_CHUNK
    # The follow-up supersedes the first conversation's entry (the unrelated request, with
    # no whole chunk, left none).
    assert [len(x.ids) for x in cache.entries.values()] == [len(LONG) + 8 + 1 + 8]


def test_short_prompts_reuse_nothing_but_stay_exact():
    e = engine("e2b_tiny")
    cache = PrefixCache(e.new_session, 10**9, PREFILL_CHUNK)
    prompt = LONG[:40]
    a, kept = answer(cache, prompt)
    b, kept = answer(cache, prompt + a + [3])
    assert kept == 0 and not cache.entries  # no whole chunk: nothing worth keeping
    assert b == e.run(prompt + a + [3], Request(max_tokens=8, ignore_eos=True)).token_ids


def test_least_recently_used_goes_first_beyond_the_budget():
    e = engine("e2b_tiny")
    prompts = [[10 + i, 20 + i, *LONG] for i in range(3)]  # nothing shared at the start
    sizes = PrefixCache(e.new_session, 10**9, PREFILL_CHUNK)
    answer(sizes, prompts[0])
    one = sizes.nbytes
    cache = PrefixCache(e.new_session, 2 * one + one // 2, PREFILL_CHUNK)  # room for two
    for p in prompts:
        answer(cache, p)
    assert [x.ids[:2] for x in cache.entries.values()] == [p[:2] for p in prompts[1:]]
    assert cache.nbytes <= cache.max_bytes
    _, kept = answer(cache, prompts[0] + [5])  # evicted: prefilled from scratch
    assert kept == 0


def test_a_consumer_that_stops_early_leaves_a_consistent_entry():
    e = engine("e2b_tiny")
    cache = PrefixCache(e.new_session, 10**9, PREFILL_CHUNK)
    kept, chunks = cache.stream(e, LONG, Request(max_tokens=40, ignore_eos=True, draft=3))
    got = []
    for chunk in chunks:
        got += chunk.tokens
        if len(got) >= 5:
            break
    chunks.close()
    (entry,) = cache.entries.values()
    assert entry.ids == LONG + got and entry.session.length == len(entry.ids)


def test_a_session_that_does_not_hold_what_it_says_is_not_kept():
    e = engine("e2b_tiny")
    cache = PrefixCache(e.new_session, 10**9, PREFILL_CHUNK)
    session = e.new_session()
    e.run(LONG, Request(max_tokens=2, ignore_eos=True), session)
    cache.put(session, LONG + [5], PREFILL_CHUNK, {})  # len(LONG) + 2 held, one less claimed
    held = list(session.history.tokens)
    cache.put(session, held[:-1] + [held[-1] + 1], PREFILL_CHUNK, {})  # other tokens
    assert not cache.entries
    cache.put(session, held, PREFILL_CHUNK, {})
    (entry,) = cache.entries.values()
    # Its bytes count the token history lookup drafts copy from, not only the caches.
    assert entry.nbytes == sum(c.nbytes for c in session.cache) + 150 * len(held)


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
