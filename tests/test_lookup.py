"""Prompt-lookup drafts: what the n-gram index finds (decoding with them: test_decoding.py)."""

from gemma_mtp_mlx.lookup import TokenHistory


def history(tokens, ngram=2):
    h = TokenHistory(ngram)
    h.extend(tokens)
    return h


def test_continuation_follows_the_latest_earlier_occurrence():
    h = history([1, 2, 3, 4, 9, 1, 2, 5, 6, 7, 1, 2])
    assert h.continuation(3) == [5, 6, 7]  # after the second "1 2", not the first
    assert h.continuation(1) == [5]


def test_a_copy_reaching_the_end_goes_on_with_the_period():
    assert history([7, 7, 7]).continuation(4) == [7, 7, 7, 7]  # one 7 after "7 7", then again
    assert history([1, 2, 3, 1, 2]).continuation(8) == [3, 1, 2, 3, 1, 2, 3, 1]
    assert history([5, 1, 2, 6, 1, 2]).continuation(5) == [6, 1, 2, 6, 1]


def test_no_continuation_where_the_ngram_is_new_or_the_history_short():
    assert history([1, 2, 3, 4]).continuation(4) == []
    assert history([5]).continuation(4) == []
    assert history([]).continuation(4) == []
    assert history([1, 2, 3, 2, 3], ngram=3).continuation(4) == []
    assert history([1, 2, 3, 9, 1, 2, 3], ngram=3).continuation(4) == [9, 1, 2, 3]


def test_extending_in_pieces_equals_extending_at_once():
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3]
    whole, pieces = history(tokens), TokenHistory()
    for i in range(0, len(tokens), 3):
        pieces.extend(tokens[i : i + 3])
    assert pieces.tokens == whole.tokens and pieces.follows == whole.follows
    for n in range(2, len(tokens)):
        h = history(tokens[:n])
        assert h.continuation(5) == brute_force(tokens[:n], 2, 5)


def brute_force(seq, n, k):
    """The draft's tokens are what the text would be if it went on repeating from j on."""
    for j in range(len(seq) - 1, n - 1, -1):
        if seq[j - n : j] == seq[-n:]:
            text = list(seq)
            while len(text) < len(seq) + k:
                text.append(text[j + len(text) - len(seq)])
            return text[len(seq) :]
    return []
