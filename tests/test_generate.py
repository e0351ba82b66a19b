"""The Python API: text, token ids and statistics from a loaded pair."""

from conftest import pair, reference

from gemma_mtp_mlx.generate import encode_prompt, generate, stream_generate
from gemma_mtp_mlx.loading import DrafterLoadError, load_pair
from gemma_mtp_mlx.sampling import SamplingParams


def test_generate_with_and_without_drafter_agree():
    p = pair("e2b_tiny")
    ids = reference("e2b_tiny")["prompt_ids"].tolist()
    plain = generate(p, ids, max_tokens=30, use_drafter=False)
    spec = generate(p, ids, max_tokens=30, num_draft=3)
    assert plain.token_ids == spec.token_ids
    assert plain.text == spec.text and plain.text
    # (mlx-lm's streaming detokenizer drops the answer's leading space, as mlx-lm does.)
    decoded = p.tokenizer.decode([t for t in plain.token_ids if t not in p.eos_ids])
    assert plain.text == decoded.lstrip(" ")
    s = spec.stats
    assert s.generated_tokens == len(spec.token_ids) <= 30
    assert s.prompt_tokens == len(ids)
    assert len(s.draft_rounds) > 0 and all(r.draft_len <= 3 for r in s.draft_rounds)
    d = s.to_dict()
    for key in ("tokens_per_s", "ttft_s", "acceptance_rate", "per_position_acceptance",
                "draft_lengths", "peak_memory_gb", "finish_reason"):
        assert key in d
    assert d["draft_rounds"] == len(d["draft_lengths"])
    assert plain.stats.draft_rounds == []


def test_stream_pieces_join_to_the_text():
    p = pair("dense31b_tiny")
    ids = encode_prompt(p.tokenizer, "hello there", system="be brief")
    pieces = [c.text for c in stream_generate(p, ids, max_tokens=20)]
    assert "".join(pieces) == generate(p, ids, max_tokens=20).text


def test_stop_strings_cut_the_text():
    p = pair("e2b_tiny")
    ids = reference("e2b_tiny")["prompt_ids"].tolist()
    full = generate(p, ids, max_tokens=40, use_drafter=False).text
    stop = full[10:13]
    cut = generate(p, ids, max_tokens=40, stop_strings=(stop,))
    assert cut.text == full[: full.index(stop)]
    assert cut.stats.finish_reason == "stop"


def test_sampling_is_reproducible_with_a_seed():
    p = pair("e2b_tiny")
    ids = reference("e2b_tiny")["prompt_ids"].tolist()
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=3)
    a = generate(p, ids, max_tokens=20, sampling=params)
    b = generate(p, ids, max_tokens=20, sampling=params)
    assert a.token_ids == b.token_ids


def test_drafter_for_another_target_is_refused(tmp_path):
    from conftest import FIXTURES

    try:
        load_pair(FIXTURES / "e2b_tiny" / "target",
                  drafter_path=FIXTURES / "dense31b_tiny" / "drafter")
    except DrafterLoadError as e:
        assert "drafter" in str(e)
    else:  # both fixtures share hidden size and vocab; the head dims must still match
        raise AssertionError("a drafter for another target was accepted")


def test_stop_prefix_is_held_back():
    from gemma_mtp_mlx.generate import _stop_prefix

    assert _stop_prefix("hello wo", ("world",)) == 2
    assert _stop_prefix("hello", ("world",)) == 0
    assert _stop_prefix("ab", ("abc", "b")) == 2
