"""The engine: text, token ids and statistics from a loaded pair, one Request per answer."""

import pytest
from conftest import engine, reference

from gemma_mtp_mlx.engine import ContextError, Engine, Request, RequestError, stop_prefix
from gemma_mtp_mlx.loading import DrafterLoadError, load_pair
from gemma_mtp_mlx.sampling import SamplingParams


def test_answers_with_and_without_drafter_agree():
    e = engine("e2b_tiny")
    ids = reference("e2b_tiny")["prompt_ids"].tolist()
    plain = e.run(ids, Request(max_tokens=30, draft="off"))
    spec = e.run(ids, Request(max_tokens=30, draft=3))
    assert plain.token_ids == spec.token_ids
    assert plain.text == spec.text and plain.text
    # (mlx-lm's streaming detokenizer drops the answer's leading space, as mlx-lm does.)
    decoded = e.tokenizer.decode([t for t in plain.token_ids if t not in e.eos_ids])
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
    assert plain.stats.draft_rounds == [] and not plain.stats.drafting


def test_stream_pieces_join_to_the_text():
    e = engine("dense31b_tiny")
    ids = e.encode("hello there", system="be brief")
    pieces = [c.text for c in e.stream(ids, Request(max_tokens=20))]
    assert "".join(pieces) == e.run(ids, Request(max_tokens=20)).text


def test_stop_strings_cut_the_text():
    e = engine("e2b_tiny")
    ids = reference("e2b_tiny")["prompt_ids"].tolist()
    full = e.run(ids, Request(max_tokens=40, draft="off")).text
    stop = full[10:13]
    cut = e.run(ids, Request(max_tokens=40, stop=(stop,)))
    assert cut.text == full[: full.index(stop)]
    assert cut.stats.finish_reason == "stop"


def test_sampling_is_reproducible_with_a_seed():
    e = engine("e2b_tiny")
    ids = reference("e2b_tiny")["prompt_ids"].tolist()
    request = Request(max_tokens=20, sampling=SamplingParams(temperature=0.8, top_p=0.9, seed=3))
    assert e.run(ids, request).token_ids == e.run(ids, request).token_ids


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
    assert stop_prefix("hello wo", ("world",)) == 2
    assert stop_prefix("hello", ("world",)) == 0
    assert stop_prefix("ab", ("abc", "b")) == 2


@pytest.mark.parametrize(
    "request_, words",
    [
        (Request(max_tokens=0), "max_tokens"),
        (Request(draft=0), "1..16"),
        (Request(draft=17), "1..16"),
        (Request(draft="sometimes"), "draft must be"),
        (Request(sampling=SamplingParams(top_p=0.0)), "top-p"),
        (Request(stop=("",)), "stop"),
        (Request(stop=("x",) * 17), "at most 16"),
        (Request(sampling=SamplingParams(temperature=float("nan"))), "finite"),
        (Request(sampling=SamplingParams(temperature=1.0, seed=-1)), "seed"),
    ],
)
def test_bad_requests_are_refused_in_one_line(request_, words):
    with pytest.raises(RequestError, match=words):
        request_.validate()


def test_a_vanishing_temperature_is_greedy():
    e = engine("e2b_tiny")
    ids = reference("e2b_tiny")["prompt_ids"].tolist()
    tiny = Request(max_tokens=6, sampling=SamplingParams(temperature=1e-40, seed=1))
    assert e.run(ids, tiny).token_ids == e.run(ids, Request(max_tokens=6)).token_ids


def test_drafting_without_a_drafter_is_refused():
    plain = engine("e2b_tiny", use_drafter=False)
    ids = reference("e2b_tiny")["prompt_ids"].tolist()
    with pytest.raises(RequestError, match="no drafter"):
        plain.run(ids, Request(max_tokens=4, draft=2))
    assert plain.run(ids, Request(max_tokens=4)).stats.drafting is False


def test_the_context_limit_refuses_long_prompts_and_cuts_the_budget():
    e = engine("e2b_tiny")
    short = Engine(e.pair, max_context=50)
    ids = reference("e2b_tiny")["prompt_ids"].tolist()
    assert len(ids) < 45
    with pytest.raises(ContextError, match="does not fit the context of 50 tokens"):
        short.run(ids * 2, Request(max_tokens=4))
    cut = short.run(ids, Request(max_tokens=100, ignore_eos=True))
    assert cut.stats.generated_tokens == 50 - len(ids) and cut.stats.finish_reason == "length"
    full = e.run(ids, Request(max_tokens=50 - len(ids), ignore_eos=True))
    assert full.token_ids == cut.token_ids


def test_a_session_carries_the_conversation():
    e = engine("e2b_tiny")
    ids = reference("e2b_tiny")["prompt_ids"].tolist()
    session = e.new_session()
    first = e.run(ids, Request(max_tokens=6, ignore_eos=True), session)
    more = e.run([5, 6], Request(max_tokens=6, ignore_eos=True), session)
    assert session.length == len(ids) + 6 + 2 + 6
    fresh = e.run(ids + first.token_ids + [5, 6], Request(max_tokens=6, draft="off",
                                                           ignore_eos=True))
    assert fresh.token_ids == more.token_ids


def test_the_calibration_is_stored_reused_and_remeasured_on_request(tmp_path, monkeypatch):
    """One measurement per machine and model: a second Engine.load reads it (and what auto
    learned with it) from the cache folder; ModelSpec(recalibrate=True) measures anew."""
    from conftest import FIXTURES

    from gemma_mtp_mlx import calibration
    from gemma_mtp_mlx.engine import ModelSpec

    monkeypatch.setenv("GEMMA_MTP_CACHE", str(tmp_path))
    measured = []
    real_measure = calibration.measure
    monkeypatch.setattr(calibration, "measure",
                        lambda target: measured.append(target) or real_measure(target))
    spec = ModelSpec(str(FIXTURES / "e2b_tiny"), dtype="float32")
    ids = reference("e2b_tiny")["prompt_ids"].tolist()

    first = Engine.load(spec, progress=False)
    assert first.calibration is None and "calibration" not in first.load_times  # lazily
    answer = first.run(ids, Request(max_tokens=24, ignore_eos=True))  # auto drafts
    assert len(measured) == 1 and "calibration" in first.load_times
    assert answer.stats.decode_width == first.calibration.decode_width
    stored = list((tmp_path / "calibration").glob("e2b_tiny-*.json"))
    assert [first.calibration.path] == stored
    learned = first.calibration.schedule_memory(first.drafter_name, greedy=True)
    lookups = first.calibration.schedule_memory(first.drafter_name, greedy=True, lookup=True)
    chosen = [r.source for r in answer.stats.rounds]
    assert learned.rounds == chosen.count("drafter") > 0  # auto's rounds, kept
    assert lookups.rounds == chosen.count("lookup") >= answer.stats.lookup_rounds
    assert first.decoder(Request(), ids).lookup
    assert not first.decoder(Request(lookup=False), ids).lookup

    second = Engine.load(spec, progress=False)
    again = second.run(ids, Request(max_tokens=24, ignore_eos=True))
    assert len(measured) == 1  # read from the file, not measured
    assert second.calibration.decode_width == first.calibration.decode_width
    assert again.token_ids == answer.token_ids
    # auto goes on from what the first engine learned (its rounds kept counting)
    memory = second.calibration.schedule_memory(second.drafter_name, greedy=True)
    drafter_rounds = [r for r in again.stats.rounds if r.source == "drafter"]
    assert memory.rounds == learned.rounds + len(drafter_rounds)

    third = Engine.load(ModelSpec(spec.model, dtype="float32", recalibrate=True), progress=False)
    third.run(ids, Request(max_tokens=4, draft="off"))  # even a plain request measures it
    assert len(measured) == 2 and "calibration" in third.load_times
    assert third.calibration.path == stored[0]
    fresh = third.calibration.schedule_memory(third.drafter_name, greedy=True)
    assert fresh.rounds == 0  # a new measurement starts auto afresh


def test_a_plain_engine_measures_first_and_drafting_then_agrees(tmp_path, monkeypatch):
    """--no-draft on a machine that never ran the model measures the calibration too (the
    decode width is the target's), so a drafted run afterwards decodes at the same width,
    reads what the plain run stored, and gives the same tokens."""
    from conftest import FIXTURES

    from gemma_mtp_mlx import calibration
    from gemma_mtp_mlx.engine import ModelSpec

    monkeypatch.setenv("GEMMA_MTP_CACHE", str(tmp_path))
    measured = []
    real_measure = calibration.measure
    monkeypatch.setattr(calibration, "measure",
                        lambda target: measured.append(target) or real_measure(target))
    model = str(FIXTURES / "dense31b_tiny")
    ids = reference("dense31b_tiny")["prompt_ids"].tolist()
    plain = Engine.load(ModelSpec(model, dtype="float32", no_draft=True), progress=False)
    before = plain.run(ids, Request(max_tokens=12, ignore_eos=True))
    assert len(measured) == 1 and "calibration" in plain.load_times
    assert before.stats.decode_width == plain.calibration.decode_width
    drafted = Engine.load(ModelSpec(model, dtype="float32"), progress=False)
    after = drafted.run(ids, Request(max_tokens=12, draft=3, ignore_eos=True))
    assert len(measured) == 1  # read from what the plain run stored
    assert after.stats.decode_width == before.stats.decode_width
    assert after.token_ids == before.token_ids and after.stats.draft_rounds
