"""The `gemma-mtp` command on the tiny fixtures (CPU, float32, greedy)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gemma_mtp_mlx.chat import Conversation
from gemma_mtp_mlx.cli import app
from gemma_mtp_mlx.request import Request

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
E2B = FIXTURES / "e2b_tiny"
DENSE = FIXTURES / "dense31b_tiny"
TARGET_ONLY = FIXTURES / "moe26b_tiny"
FAST = ["--dtype", "float32", "--max-tokens", "8"]
JSON_KEYS = {
    "text", "token_ids", "prompt_tokens", "generated_tokens", "finish_reason", "tokens_per_s",
    "prefill_tokens_per_s", "ttft_s", "acceptance_rate", "mean_accepted_per_round",
    "per_position_acceptance", "draft_rounds", "draft_lengths", "peak_memory_gb", "drafter",
    "load_s", "load_phases", "redone_rounds", "redo_rate", "decode_width", "lookup_rounds",
}  # fmt: skip
TURN = re.compile(r"turn (\d+) · (\d+) tokens · .*?prefill (\d+) tok \(cached (\d+)\)")

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def no_traceback(result):
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


def one_error_line(result, code):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    no_traceback(result)
    return lines[0]


@pytest.fixture(scope="module")
def e2b():
    from conftest import engine

    return engine("e2b_tiny")


def subprocess_cli(*args):
    return [sys.executable, "-m", "gemma_mtp_mlx", *[str(a) for a in args]]


# -- help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["generate"], ["chat"], ["bench"], ["serve"], ["convert"]])
def test_help_shows_examples(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.stdout and "gemma-mtp" in result.stdout


@pytest.mark.parametrize("command", ["generate", "chat", "bench", "serve", "convert"])
def test_help_shows_flags_as_plain_flags(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout and "list[" not in result.stdout
    assert "--help" in result.stdout


def test_no_arguments_prints_help():
    result = run()
    assert result.exit_code == 0
    assert "generate" in result.stdout and "chat" in result.stdout


# -- generate -----------------------------------------------------------------------------------
def test_generate_streams_text_and_stats_line(e2b):
    # a fixed draft length: auto may have learned in earlier tests that this drafter never
    # pays (it remembers, per machine) and then drafts nothing, so no acceptance to show
    result = run("generate", "-m", E2B, "--prompt", "Hello there", "--num-draft", "2", *FAST)
    assert result.exit_code == 0, result.stderr
    expected = e2b.run(e2b.encode("Hello there"), Request(max_tokens=8))
    assert result.stdout == expected.text + "\n"
    (line,) = result.stderr.strip().splitlines()
    for word in ("8 tokens", "tok/s", "prefill", "TTFT", "acceptance", "draft rounds", "peak"):
        assert word in line
    assert "\x1b" not in result.stdout + result.stderr  # not a terminal: no ANSI


def test_stdin_is_appended_to_the_prompt(e2b):
    result = run(
        "generate", "-m", E2B, "--prompt", "Summarize:", "--json", *FAST, input="my notes\n"
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    ids = e2b.encode("Summarize:\n\nmy notes")
    assert data["prompt_tokens"] == len(ids)

    alone = json.loads(run("generate", "-m", E2B, "--json", *FAST, input="my notes").stdout)
    assert alone["prompt_tokens"] == len(e2b.encode("my notes"))


@pytest.mark.parametrize("fixture", [E2B, DENSE], ids=["e2b", "dense31b"])
def test_json_keys_and_drafting_changes_nothing(fixture, tmp_path, monkeypatch):
    # a machine that never ran this model: what auto learns in other tests is kept with the
    # calibration, and a drafter that never agrees is then rarely tried
    monkeypatch.setenv("GEMMA_MTP_CACHE", str(tmp_path))
    base = ["generate", "-m", fixture, "--prompt", "Write a poem about the sea", "--json"]
    base += ["--dtype", "float32", "--max-tokens", "24"]
    drafted = json.loads(run(*base).stdout)
    plain = json.loads(run(*base, "--no-draft").stdout)
    fixed = json.loads(run(*base, "--num-draft", "3").stdout)
    drafter_only = json.loads(run(*base, "--num-draft", "3", "--no-lookup").stdout)
    assert drafter_only["token_ids"] == fixed["token_ids"] and drafter_only["lookup_rounds"] == 0
    assert JSON_KEYS <= drafted.keys()
    assert drafted["generated_tokens"] == len(drafted["token_ids"]) == 24
    assert drafted["token_ids"] == plain["token_ids"] == fixed["token_ids"]
    assert drafted["text"] == plain["text"]
    assert drafted["draft_rounds"] > 0 and plain["draft_rounds"] == 0
    assert drafted["draft_rounds"] == len(drafted["draft_lengths"])
    # which drafter ran, if any; no rate where nothing was drafted
    assert drafted["drafter"] == str(fixture / "drafter") and plain["drafter"] is None
    assert 0 <= drafted["acceptance_rate"] <= 1 and plain["acceptance_rate"] is None
    assert plain["mean_accepted_per_round"] is None
    assert drafted["load_s"] == pytest.approx(sum(drafted["load_phases"].values()), abs=0.01)
    assert {"startup", "tokenizer", "weights", "calibration"} <= drafted["load_phases"].keys()
    assert "calibration" in plain["load_phases"]  # read from what the drafted run stored
    assert set(fixed["draft_lengths"]) <= {3, 2, 1}  # 3, shortened only by the token budget
    # the first drafted run measured the calibration and stored it; every run decodes at its
    # decode width (--no-draft too: it reads the stored one)
    stored = list((tmp_path / "calibration").glob("*.json"))
    assert len(stored) == 1
    width = json.loads(stored[0].read_text())["decode_width"]
    assert drafted["decode_width"] == plain["decode_width"] == fixed["decode_width"] == width
    for run_ in (drafted, fixed):
        assert isinstance(run_["redone_rounds"], int)
        assert 0 <= run_["redone_rounds"] <= run_["draft_rounds"]
        assert run_["redo_rate"] == round(run_["redone_rounds"] / run_["draft_rounds"], 4)
    assert plain["redone_rounds"] == 0 and plain["redo_rate"] is None


def test_the_calibration_is_measured_once_and_again_with_recalibrate(tmp_path, monkeypatch):
    from gemma_mtp_mlx import calibration

    monkeypatch.setenv("GEMMA_MTP_CACHE", str(tmp_path))
    measured = []
    real_measure = calibration.measure
    monkeypatch.setattr(calibration, "measure",
                        lambda target: measured.append(target) or real_measure(target))
    base = ["generate", "-m", E2B, "--prompt", "hi", "--json", *FAST]
    first = json.loads(run(*base).stdout)
    second = json.loads(run(*base).stdout)
    assert len(measured) == 1  # the second run read what the first stored
    assert "calibration" in first["load_phases"] and "calibration" in second["load_phases"]
    plain = json.loads(run(*base, "--no-draft", "--recalibrate").stdout)
    assert len(measured) == 2 and "calibration" in plain["load_phases"]
    assert plain["token_ids"] == first["token_ids"] == second["token_ids"]
    for command in ("chat", "bench", "serve"):
        assert "--recalibrate" in run(command, "--help").stdout


@pytest.fixture
def no_template(tmp_path):
    """The e2b pair without a chat template."""
    folder = tmp_path / "pair"
    shutil.copytree(E2B, folder, ignore=shutil.ignore_patterns("reference.npz"))
    (folder / "target" / "chat_template.jinja").unlink()
    config = json.loads((folder / "target" / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "target" / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_system_without_a_chat_template_is_refused_not_ignored(no_template):
    line = one_error_line(run("generate", "-m", no_template, "--prompt", "hi", "--system", "Be",
                              *FAST), 2)
    assert "--system needs a chat template" in line
    ok = run("generate", "-m", no_template, "--prompt", "hi", "--json", *FAST)
    assert ok.exit_code == 0, ok.stderr  # without --system: the prompt as is


def test_system_goes_through_the_template(e2b):
    base = ["generate", "-m", E2B, "--prompt", "hi", "--json", *FAST]
    plain = json.loads(run(*base).stdout)
    system = json.loads(run(*base, "--system", "Be brief.").stdout)
    assert system["prompt_tokens"] == len(e2b.encode("hi", system="Be brief."))
    assert system["prompt_tokens"] > plain["prompt_tokens"]


def test_verbose_says_where_the_load_time_went():
    result = run("generate", "-m", E2B, "--prompt", "hi", *FAST, "--verbose")
    assert result.exit_code == 0, result.stderr
    phases = result.stderr.strip().splitlines()[-1]
    assert re.match(r"load [\d.]+ s: startup [\d.]+ · imports [\d.]+ · resolve", phases)
    for phase in ("tokenizer", "weights", "calibration"):
        assert f" {phase} " in phases


def test_raw_and_stop():
    result = run("generate", "-m", E2B, "--prompt", "abc", "--raw", "--json", *FAST)
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["generated_tokens"] == 8
    stop = data["text"][2:4]
    if stop.strip():
        cut = json.loads(
            run(
                "generate", "-m", E2B, "--prompt", "abc", "--raw", "--json", *FAST, "--stop", stop
            ).stdout
        )
        assert cut["finish_reason"] == "stop" and stop not in cut["text"]


def test_low_acceptance_is_reported():
    # The fixtures' random drafter almost never agrees with the target. A fixed K: the
    # default (auto) schedule soon stops drafting with it, leaving too few rounds to judge.
    result = run("generate", "-m", E2B, "--prompt", "hi", "--dtype", "float32", "-n", "24",
                 "--num-draft", "2")
    assert "acceptance collapsed" in result.stderr and "--no-draft" in result.stderr


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["", "   \n  "])
def test_empty_prompt(prompt):
    line = one_error_line(run("generate", "-m", E2B, "--prompt", prompt, input=""), 2)
    assert "empty prompt" in line


def test_missing_model_points_to_convert(tmp_path):
    line = one_error_line(run("generate", "-m", tmp_path / "nope", "--prompt", "hi"), 1)
    assert "gemma-mtp convert" in line


@pytest.mark.parametrize(
    "options",
    [
        ["--temp", "-1"],
        ["--top-p", "0"],
        ["--top-p", "1.5"],
        ["--min-p", "1"],
        ["--top-k", "-2"],
        ["--temp", "warm"],
        ["--max-tokens", "0"],
        ["--num-draft", "0"],
        ["--num-draft", "99"],
        ["--num-draft", "2", "--no-draft"],
        ["--dtype", "float8"],
        ["--bogus"],
    ],
)
def test_bad_options(options):
    one_error_line(run("generate", "-m", E2B, "--prompt", "hi", *options), 2)


def test_unknown_command():
    one_error_line(run("frobnicate"), 2)


def test_missing_drafter_suggests_no_draft():
    line = one_error_line(run("generate", "-m", TARGET_ONLY, "--prompt", "hi"), 1)
    assert "--no-draft" in line
    ok = run("generate", "-m", TARGET_ONLY, "--prompt", "hi", "--no-draft", *FAST)
    assert ok.exit_code == 0 and "drafter off" in ok.stderr and "acceptance" not in ok.stderr


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize("option", [["--num-draft", "4"], ["--draft-schedule", "auto"]])
def test_asking_for_drafts_without_a_drafter_is_one_line(tmp_path, command, option):
    """The bundled model without its drafter (as this release ships it): plain decoding, said
    once; asking for drafts is an error, not a silent 'drafter off'."""
    from gemma_mtp_mlx.fallback import BUNDLED_NAME

    folder = tmp_path / BUNDLED_NAME
    shutil.copytree(E2B / "target", folder / "target")
    args = [command, "-m", folder, *option, *FAST]
    result = run(*args, "--prompt", "hi") if command == "generate" else run(*args, input="hi\n")
    assert result.exit_code == 2, result.stderr
    note, error = result.stderr.strip().splitlines()
    assert note == "note: no drafter is bundled for Gemma 3 270M yet: plain decoding"
    assert error.startswith(f"error: {option[0]} needs a drafter, and none is loaded")


@pytest.fixture
def mismatched_drafter(tmp_path):
    """The e2b drafter, relabelled as one for a target with another hidden size."""
    folder = tmp_path / "drafter"
    shutil.copytree(E2B / "drafter", folder)
    config = json.loads((folder / "config.json").read_text())
    config["backbone_hidden_size"] = 2 * config["backbone_hidden_size"]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_mismatched_drafter_fails_loudly(mismatched_drafter):
    args = ["generate", "-m", E2B, "--prompt", "hi", "--drafter", mismatched_drafter]
    line = one_error_line(run(*args), 1)
    assert "--no-draft" in line


def test_not_a_drafter_fails_loudly():
    args = ["generate", "-m", E2B, "--drafter", E2B / "target", "--prompt", "hi"]
    line = one_error_line(run(*args), 1)
    assert "not a Gemma 4 drafter" in line and "--no-draft" in line


def test_hub_id_goes_through_resolve_model(monkeypatch):
    calls = []

    def resolve_model(spec, bits=4, cache_dir=None, progress=True):
        calls.append((spec, bits))
        return E2B

    fake = types.ModuleType("gemma_mtp_mlx.convert")
    fake.resolve_model = resolve_model
    fake.HubUnreachable = type("HubUnreachable", (ValueError,), {})
    monkeypatch.setitem(sys.modules, "gemma_mtp_mlx.convert", fake)
    result = run("generate", "--prompt", "hi", *FAST)  # the default model
    assert result.exit_code == 0, result.stderr
    assert calls == [("google/gemma-4-E4B-it", 4)]

    def broken(spec, **kw):
        raise ValueError("repository not found")

    fake.resolve_model = broken
    line = one_error_line(run("generate", "-m", "someone/nothing", "--prompt", "hi"), 1)
    assert "repository not found" in line and "gemma-mtp convert" in line


def test_hub_id_without_converter(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma_mtp_mlx.convert", None)  # import fails
    line = one_error_line(run("generate", "-m", "google/gemma-4-E4B-it", "--prompt", "hi"), 1)
    assert "gemma-mtp convert" in line


# -- pipes and signals (real processes) ------------------------------------------------------------
def test_closed_pipe_exits_quietly():
    cmd = " ".join(
        subprocess_cli("generate", "-m", E2B, "--prompt", "hi", "--dtype", "float32", "-n", "400")
    )
    shell = f"set -o pipefail; {cmd} < /dev/null | head -c 5"
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode in (0, 141), err  # 141: killed by SIGPIPE, like `cat`
    assert len(proc.stdout) == 5
    assert "Traceback" not in err and "error" not in err.lower()


def test_piped_stdin_in_a_real_process():
    cmd = subprocess_cli("generate", "-m", E2B, "--prompt", "Summarize:", "--json", *FAST)
    proc = subprocess.run(cmd, input="notes", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["generated_tokens"] == 8


def test_ctrl_c_prints_interrupted():
    cmd = subprocess_cli(
        "generate", "-m", E2B, "--prompt", "hi", *FAST[:2], "-n", "5000", "--ignore-eos"
    )
    # As from a terminal: a run started in the background (nohup, `&` in a script) inherits
    # SIGINT ignored, and Python keeps it so.
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        os.set_blocking(proc.stdout.fileno(), True)
        assert proc.stdout.read(1)  # generating
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.decode().strip().splitlines()[-1] == "interrupted"
    assert b"Traceback" not in err


# -- bench --------------------------------------------------------------------------------------
def test_bench_outputs_identical(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello there\n\n" + json.dumps({"prompt": "Tell me a story"}) + "\n")
    args = ["bench", "-m", E2B, "--prompts", prompts, "--runs", "1", *FAST, "--num-draft", "2"]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["identical"] and not data["mismatches"]
    assert [(r["prompt"], r["mode"]) for r in data["rows"]] == [
        (p, m) for p in (1, 2) for m in ("plain", "mtp auto", "mtp heuristic", "mtp k=2")
    ]
    assert all(r["identical"] and r["tokens"] == 8 for r in data["rows"])
    assert data["calibration"]["decode_width"] >= 1
    fixed = [r for r in data["rows"] if r["mode"] == "mtp k=2"]  # drafts every round
    assert all(0 <= r["redo_rate"] <= 1 for r in fixed)
    # progress on stderr, a line per prompt and mode as it finishes (stdout stays the JSON)
    done = [line for line in result.stderr.splitlines() if line.startswith("bench: ")]
    assert done[0].startswith("bench: 1.plain done (8 tokens, ") and len(done) == 8
    assert all(line.endswith("· 8 rows in all") for line in done)

    table = run(*args)
    assert table.exit_code == 0
    assert "same output" in table.stdout and "NO" not in table.stdout
    assert "redone" in table.stdout


def test_bench_without_a_drafter_is_one_plain_row_and_says_so():
    args = ["bench", "-m", TARGET_ONLY, "--no-draft", "--runs", "1", *FAST]
    result = run(*args, "--json")  # the three built-in prompts
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["drafter"] is None and data["identical"]
    assert {r["mode"] for r in data["rows"]} == {"plain"} and len(data["rows"]) == 3
    assert all(r["acceptance_rate"] is None for r in data["rows"])
    table = run(*args)
    assert "no drafter: plain decoding only" in table.stdout
    assert "mtp auto" not in table.stdout and "acceptance" not in table.stdout


def test_bench_reports_a_mismatch_loudly(monkeypatch):
    from gemma_mtp_mlx.engine import Engine

    real = Engine.run

    def corrupted(self, ids, request, session=None):
        res = real(self, ids, request, session)
        if request.draft != "off" and request.max_tokens > 4:
            res.token_ids = res.token_ids[:3] + [7] + res.token_ids[4:]
        return res

    monkeypatch.setattr(Engine, "run", corrupted)
    result = run("bench", "-m", E2B, "--runs", "1", "--max-tokens", "6", "--dtype", "float32")
    assert result.exit_code == 1
    assert "MISMATCH" in result.stderr and "at token 3" in result.stderr
    no_traceback(result)


# -- chat ---------------------------------------------------------------------------------------
def turns(stderr: str) -> list[tuple[int, int, int, int]]:
    """(turn, generated, prefill, cached) of each stats line."""
    return [tuple(map(int, m.groups())) for m in TURN.finditer(stderr)]


def test_chat_keeps_the_cache_between_turns(e2b):
    script = "Hello there\nWhat next?\n/stats\n/reset\nagain\n/quit\nnever sent\n"
    result = run("chat", "-m", E2B, *FAST, input=script)
    assert result.exit_code == 0, result.stderr
    no_traceback(result)
    (t1, n1, p1, c1), (t2, n2, p2, c2), (t3, n3, p3, c3) = turns(result.stderr)
    assert (t1, t2, t3) == (1, 2, 1)  # /reset starts over
    assert c1 == 0 and p1 == len(e2b.encode("Hello there"))
    # Turn 2 reuses all of turn 1 and prefills the last answer token plus the new message.
    assert c2 == p1 + n1 - 1
    # the fixture template: <turn|>\n closing the answer, then the user turn, then model\n
    assert p2 == 1 + 2 + len(e2b.encode("What next?")) - 1
    assert c3 == 0 and p3 == len(e2b.encode("again"))
    assert "session: 2 turns" in result.stderr and "conversation reset" in result.stderr
    assert "\x1b" not in result.stdout + result.stderr

    # The first answer is what `generate` gives; drafting changes no answer.
    first = run("generate", "-m", E2B, "--prompt", "Hello there", *FAST).stdout
    assert result.stdout.startswith(first)
    plain = run("chat", "-m", E2B, *FAST, "--no-draft", input=script)
    assert plain.stdout == result.stdout


def test_chat_multiline_system_and_unknown_command():
    script = '"""\nfirst line\nsecond line\n"""\ncontin\\\nued\n/system Be brief.\nok\n/nope\n'
    result = run("chat", "-m", E2B, *FAST, input=script)
    assert result.exit_code == 0, result.stderr
    (t1, _, p1, _), (t2, _, _, c2), (t3, _, _, c3) = turns(result.stderr)
    assert (t1, t2, t3) == (1, 2, 3) and c2 > 0
    assert c3 == 0  # a new system prompt changes the start: the cache is rebuilt
    assert "unknown command /nope" in result.stderr


def test_reused_cache_gives_the_same_answer_as_a_fresh_prefill(e2b):
    """Turn 2 on the kept cache == plain decoding of the same tokens from scratch."""
    convo = Conversation(e2b)
    for i, message in enumerate(["Hello there", "What next?"]):
        fed = convo.plan(message)
        before = list(convo.ids)
        answer = []
        for chunk in e2b.stream(fed, Request(max_tokens=10), convo.session):
            answer += chunk.tokens
        convo.record(message, answer, interrupted=False)
        if i == 1:
            fresh = e2b.run(before + fed, Request(max_tokens=10, draft="off"))
            assert fresh.token_ids == answer
            assert len(fed) < len(before)


def test_an_interrupted_turn_rebuilds_the_cache(e2b):
    convo = Conversation(e2b)
    fed = convo.plan("Hello there")
    convo.record("Hello there", [300, 301], interrupted=True)
    again = convo.plan("next")
    assert convo.cached == 0 and again[: len(fed)] == fed  # everything fed again
    assert convo.messages[1]["content"] == e2b.tokenizer.decode([300, 301])


def test_chat_model_role_matches_the_template(e2b):
    # The fixture template writes roles verbatim and prompts with "model".
    assert Conversation(e2b).model_role == "model"


# -- convert ------------------------------------------------------------------------------------
def test_convert_calls_convert_pair(monkeypatch, tmp_path):
    calls = []

    class ConvertError(ValueError):
        pass

    def convert_pair(target, drafter, out, **kw):
        calls.append((target, drafter, out, kw))
        if target == "bad":
            raise ConvertError("bad: not a Gemma 4 checkpoint")
        return Path(out)

    fake = types.ModuleType("gemma_mtp_mlx.convert")
    fake.convert_pair, fake.ConvertError = convert_pair, ConvertError
    monkeypatch.setitem(sys.modules, "gemma_mtp_mlx.convert", fake)
    out = tmp_path / "out"
    result = run(
        "convert", "--target", "google/gemma-4-E2B-it", "-o", out, "--bits", "8",
        "--group-size", "32", "--drafter-bits", "none", "--force",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    target, drafter, path, kw = calls[0]
    assert (target, drafter, path) == ("google/gemma-4-E2B-it", None, out)
    assert kw["bits"] == 8 and kw["group_size"] == 32 and kw["drafter_bits"] is None
    assert kw["dtype"] == "bfloat16" and kw["force"] is True

    run("convert", "--target", "t", "--drafter", "d", "-o", out)
    assert calls[1][1] == "d" and calls[1][3]["bits"] is None
    assert calls[1][3]["drafter_bits"] == "same"

    line = one_error_line(run("convert", "--target", "bad", "-o", out), 1)
    assert "not a Gemma 4 checkpoint" in line
    one_error_line(run("convert", "--target", "t", "-o", out, "--bits", "3"), 2)


def test_convert_without_the_converter(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gemma_mtp_mlx.convert", None)
    one_error_line(run("convert", "--target", "t", "-o", tmp_path / "o"), 1)


def test_python_dash_m_entry_point():
    start = time.perf_counter()
    proc = subprocess.run(subprocess_cli("--help"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Examples" in proc.stdout
    assert time.perf_counter() - start < 20


def test_convert_then_generate_with_the_real_converter(tmp_path):
    pytest.importorskip("gemma_mtp_mlx.convert")
    out = tmp_path / "pair"
    args = ["--target", E2B / "target", "--drafter", E2B / "drafter", "-o", out]
    result = run("convert", *args, "--dtype", "float32")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    gen = ["generate", "-m", out, "--prompt", "hi", "--json", "-n", "12"]
    drafted, plain = json.loads(run(*gen).stdout), json.loads(run(*gen, "--no-draft").stdout)
    assert drafted["token_ids"] == plain["token_ids"] and drafted["draft_rounds"] > 0
    again = run("convert", *args)
    assert again.exit_code == 1 and "--force" in again.stderr


def test_draft_schedule_auto_gives_the_same_tokens():
    base = ["generate", "-m", E2B, "--prompt", "hello", *FAST, "--json"]
    plain = json.loads(run(*base, "--no-draft").stdout)
    auto = run(*base, "--draft-schedule", "auto")
    assert auto.exit_code == 0, auto.stderr
    data = json.loads(auto.stdout)
    assert data["token_ids"] == plain["token_ids"]
    both = run(*base, "--draft-schedule", "auto", "--num-draft", "2")
    assert both.exit_code == 2


# -- distill ------------------------------------------------------------------------------------
def test_distill_passes_its_options(monkeypatch, tmp_path):
    """The command line's part: options into distill_command, its summary out as JSON, its
    errors as one line (tests/test_distill.py trains for real)."""
    import gemma_mtp_mlx.distill as distill

    calls = []

    def distill_command(model, out, **options):
        calls.append((model, out, options))
        if options["steps"] == 13:
            raise ValueError("too few tokens for one batch")
        return {"trained_tokens": 42}

    monkeypatch.setattr(distill, "distill_command", distill_command)
    out = tmp_path / "drafter"
    args = ["distill", "-m", E2B, "-o", out, "--tokens", "1000", "--hidden", "32",
            "--vocab-subset", "256", "--batch", "2", "--init", E2B / "drafter", "--seed", "7",
            "--greedy-rows", "64"]
    result = run(*args, "--steps", "3")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"trained_tokens": 42}
    model, target, options = calls[0]
    assert (model, target) == (str(E2B), str(out))
    assert options == {"init": str(E2B / "drafter"), "tokens": 1000, "steps": 3,
                       "draft_depth": 3, "hidden": 32, "vocab_subset": 256, "batch": 2,
                       "lr": 1e-3, "seed": 7, "prompts": None, "greedy_rows": 64}
    line = one_error_line(run(*args, "--steps", "13"), 1)
    assert line == "error: too few tokens for one batch"


@pytest.mark.slow
def test_distill_writes_a_loadable_drafter(tmp_path):
    out = tmp_path / "drafter"
    args = ["distill", "-m", E2B, "-o", out, "--tokens", "1000", "--steps", "3",
            "--hidden", "32", "--vocab-subset", "256", "--batch", "2"]
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["trained_tokens"] > 0 and (out / "config.json").is_file()
    gen = run("generate", "-m", E2B / "target", "--drafter", out, "--prompt", "hi", *FAST, "--json")
    assert gen.exit_code == 0, gen.stderr
    plain = run("generate", "-m", E2B, "--no-draft", "--prompt", "hi", *FAST, "--json")
    assert json.loads(gen.stdout)["token_ids"] == json.loads(plain.stdout)["token_ids"]


def test_distill_missing_model():
    result = run("distill", "-m", "/no/such/model", "-o", "/tmp/never")
    assert result.exit_code == 1 and "gemma-mtp convert" in result.stderr


def test_ignore_eos_runs_to_max_tokens():
    base = ["generate", "-m", E2B, "--prompt", "hi", "--dtype", "float32", "--json"]
    stopped = json.loads(run(*base, "-n", "400").stdout)
    assert stopped["finish_reason"] == "stop"  # this prompt meets an EOS id early
    n = stopped["generated_tokens"] + 5
    full = json.loads(run(*base, "-n", str(n), "--ignore-eos").stdout)
    assert full["finish_reason"] == "length" and full["generated_tokens"] == n
    assert full["token_ids"][: len(stopped["token_ids"])] == stopped["token_ids"]



# -- memory and context -------------------------------------------------------------------------
def test_a_model_too_big_for_memory_is_refused_before_loading():
    # The tiny pair's weights are ~1.7 MB: 1 MB of usable memory cannot hold them.
    args = ["generate", "-m", E2B, "--prompt", "hi", *FAST]
    line = one_error_line(runner.invoke(app, args, env={"GEMMA_MTP_MEMORY_GB": "0.001"}), 1)
    assert "needs" in line and "weights" in line and "GEMMA_MTP_MEMORY_GB" in line
    assert "--bits 4" in line


def test_the_context_is_cut_to_fit_memory_unless_asked():
    # 10 MB: the weights fit, the KV cache of the model's full 131072-token context does not.
    env = {"GEMMA_MTP_MEMORY_GB": "0.01"}
    args = ["generate", "-m", E2B, "--prompt", "hi", "--json", *FAST]
    fitted = runner.invoke(app, args, env=env)
    assert fitted.exit_code == 0, fitted.stderr
    note = re.search(r"note: context (\d+) tokens \(of 131072\)", fitted.stderr)
    assert note and 4096 <= int(note.group(1)) < 131072
    asked = runner.invoke(app, [*args, "--max-context", "131072"], env=env)
    line = one_error_line(asked, 1)
    assert "KV cache" in line and f"--max-context {note.group(1)}" in line


def test_a_prompt_longer_than_the_context_is_an_error():
    prompt = " ".join(["word"] * 80)
    line = one_error_line(run("generate", "-m", E2B, "--prompt", prompt, *FAST,
                              "--max-context", "32"), 2)
    assert "does not fit the context of 32 tokens" in line
    line = one_error_line(run("generate", "-m", E2B, "--prompt", "hi", "--max-context", "1"), 2)
    assert "--max-context must be in 2..131072" in line


def test_chat_with_a_seed_is_reproducible():
    script = "Hello there\nWhat next?\n"
    args = ["chat", "-m", E2B, "--dtype", "float32", "-n", "24", "--temp", "0.9", "--seed", "1"]
    first, second = run(*args, input=script), run(*args, input=script)
    assert first.exit_code == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.strip()
    other = run(*args[:-1], "2", input=script)
    assert other.stdout != first.stdout  # the seed decides the text
