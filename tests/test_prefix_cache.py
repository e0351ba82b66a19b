"""The server's prefix cache: the longest shared prefix is reused, the rest prefilled, the
output unchanged; least recently used entries go first beyond the byte budget."""

from conftest import engine, reference

from gemma_mtp_mlx.prefix_cache import PrefixCache, common_prefix
from gemma_mtp_mlx.request import Request


def answer(e, cache, prompt, n=8):
    session, kept = cache.take(prompt)
    result = e.run(prompt[kept:], Request(max_tokens=n, ignore_eos=True), session)
    cache.put(session, prompt + result.token_ids)
    return result, kept


def test_a_resent_conversation_prefills_only_what_is_new():
    e = engine("e2b_tiny")
    cache = PrefixCache(e.new_session, 10**9)
    prompt = reference("e2b_tiny")["prompt_ids"].tolist()
    first, kept = answer(e, cache, prompt)
    assert kept == 0 and len(cache.entries) == 1
    follow = prompt + first.token_ids + [7, 8, 9]
    second, kept = answer(e, cache, follow)
    # all of the conversation but the last answer token, which was never in the cache
    assert kept == len(prompt) + len(first.token_ids) - 1
    assert second.stats.prompt_tokens == len(follow) - kept
    fresh = e.run(follow, Request(max_tokens=8, ignore_eos=True, draft="off"))
    assert second.token_ids == fresh.token_ids

    # A shorter shared prefix (an edited last message): rolled back, still exact.
    edited = prompt + first.token_ids[:3] + [11, 12]
    third, kept = answer(e, cache, edited)
    assert kept == len(prompt) + 3
    assert third.token_ids == e.run(edited, Request(max_tokens=8, ignore_eos=True)).token_ids


def test_the_same_prompt_twice_feeds_its_last_token_again():
    e = engine("e2b_tiny")
    cache = PrefixCache(e.new_session, 10**9)
    prompt = reference("e2b_tiny")["prompt_ids"].tolist()
    a, _ = answer(e, cache, prompt)
    b, kept = answer(e, cache, prompt)
    assert kept == len(prompt) - 1 and a.token_ids == b.token_ids


def test_least_recently_used_goes_first_beyond_the_budget():
    e = engine("e2b_tiny")
    prompts = [[10 + i, 20 + i, 30 + i, 40 + i] for i in range(3)]  # nothing shared
    sizes = PrefixCache(e.new_session, 10**9)
    answer(e, sizes, prompts[0])
    one = sizes.nbytes
    cache = PrefixCache(e.new_session, 2 * one + one // 2)  # room for two conversations
    for p in prompts:
        answer(e, cache, p)
    held = [entry.ids[:4] for entry in cache.entries.values()]
    assert held == prompts[1:] and cache.nbytes <= cache.max_bytes
    _, kept = answer(e, cache, prompts[0] + [5])  # evicted: prefilled from scratch
    assert kept == 0


def test_a_session_that_does_not_hold_what_it_says_is_not_kept():
    e = engine("e2b_tiny")
    cache = PrefixCache(e.new_session, 10**9)
    session = e.new_session()
    e.run([2, 3, 4], Request(max_tokens=2, ignore_eos=True), session)
    cache.put(session, [2, 3, 4, 5])  # 5 tokens held, 4 claimed
    assert not cache.entries


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
