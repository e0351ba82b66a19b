"""The `gemma-mtp` command: generate, chat, bench and convert.

Errors are one line on stderr (`error: ...`) and a non-zero exit code, never a
traceback: 1 for a model or conversion problem, 2 for a bad option or an empty
prompt, 130 for Ctrl-C. MLX and the models are imported inside the commands,
so `gemma-mtp --help` is instant.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from .benchmark import bench_table, load_prompts, run_bench
from .cli_group import Command, CommandGroup
from .cli_options import (
    DEFAULT_MODEL,
    MAX_DRAFT,
    Bits,
    DrafterBits,
    DrafterOpt,
    DType,
    DTypeOpt,
    GroupSize,
    IgnoreEosOpt,
    MaxContextOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    NoDraftOpt,
    NoLookupOpt,
    NumDraftOpt,
    RecalibrateOpt,
    Schedule,
    ScheduleOpt,
    SeedOpt,
    SystemOpt,
    TempOpt,
    TopKOpt,
    TopPOpt,
    VerboseOpt,
)
from .errors import fail, first_line, say
from .live import PlainView, is_terminal
from .request import ModelSpec, Request, SamplingParams

app = typer.Typer(
    cls=CommandGroup,
    name="gemma-mtp",
    help="Gemma 4 on MLX, faster with its multi-token-prediction drafter, "
    "with output identical to plain decoding.",
    epilog="Examples:\n\n"
    "  gemma-mtp chat                                  [dim]# google/gemma-4-E4B-it, 4-bit[/]\n\n"
    '  gemma-mtp generate --prompt "Why is the sky blue?"\n\n'
    '  cat notes.txt | gemma-mtp generate --prompt "Summarize:" > summary.md\n\n'
    "  gemma-mtp bench -m out/gemma-4-E4B-it-4bit --runs 3\n\n"
    "  gemma-mtp convert --target google/gemma-4-E4B-it -o out/e4b-4bit --bits 4",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main() -> None:
    """Gemma 4 on MLX, faster with its multi-token-prediction drafter, output unchanged."""


# -- options shared by the commands: straight into one ModelSpec and one Request ----------------
def model_spec(model: str, drafter: Path | None, no_draft: bool, dtype: DType | None,
               max_context: int | None = None, recalibrate: bool = False) -> ModelSpec:
    if no_draft and drafter is not None:
        fail("--drafter and --no-draft exclude each other", 2)
    return ModelSpec(model, drafter, no_draft, dtype.value if dtype else None, max_context,
                     recalibrate=recalibrate)


def draft_policy(no_draft: bool, num_draft: int | None, schedule: Schedule | None):
    """Request.draft from the three flags that say it, or a one-line error (exit 2)."""
    if num_draft is not None and schedule is not None:
        fail("--num-draft and --draft-schedule exclude each other", 2)
    if no_draft and (num_draft is not None or schedule is not None):
        fail("--num-draft/--draft-schedule and --no-draft exclude each other", 2)
    if num_draft is not None and not 1 <= num_draft <= MAX_DRAFT:
        fail(f"--num-draft must be in 1..{MAX_DRAFT} (use --no-draft for none)", 2)
    if no_draft:
        return "off"
    return num_draft if num_draft is not None else (schedule.value if schedule else None)


def make_request(max_tokens: int, *, sampling: SamplingParams | None = None, draft=None,
                 stop: list[str] | None = None, ignore_eos: bool = False,
                 no_lookup: bool = False) -> Request:
    """The one Request the command runs with, or a one-line error (exit 2)."""
    request = Request(max_tokens, sampling or SamplingParams(), draft, tuple(stop or ()),
                      ignore_eos, lookup=not no_lookup)
    try:
        request.validate()
    except ValueError as e:
        fail(str(e), 2)
    return request


def load_engine(spec: ModelSpec):
    """The engine, its load phases starting with this process's own start-up."""
    from .engine import Engine
    from .timing import process_age

    startup = process_age()
    engine = Engine.load(spec)
    engine.load_times = {"startup": startup, **engine.load_times}
    return engine


def check_drafting(engine, request: Request) -> None:
    """A draft length or schedule asked of a model without a drafter: one line, exit 2."""
    if request.draft not in (None, "off") and not engine.drafting:
        option = "--num-draft" if isinstance(request.draft, int) else "--draft-schedule"
        fail(f"{option} needs a drafter, and none is loaded (drop it, or pass --drafter DIR)", 2)


def load_phases(engine) -> str:
    """--verbose: where the time before the first token went."""
    phases = " · ".join(f"{k} {v:.2f}" for k, v in engine.load_times.items())
    return f"load {engine.load_seconds:.2f} s: {phases} (then TTFT: the prefill)"


def base_model_note(engine) -> None:
    """Said once, where the bundled base model answers through the chat template."""
    from .fallback import BASE_MODEL_NOTE, is_bundled

    if is_bundled(engine.path):
        say(BASE_MODEL_NOTE)


def read_prompt(prompt: str | None) -> str:
    """--prompt, then what is piped on stdin (not a terminal), joined by a blank line."""
    piped = None
    if not is_terminal(sys.stdin):
        try:
            piped = sys.stdin.read()
        except (OSError, ValueError):
            piped = None
    parts = [p.strip("\n") for p in (prompt, piped) if p and p.strip()]
    if not parts:
        fail("empty prompt: pass --prompt TEXT or pipe text on stdin", 2)
    return "\n\n".join(parts)


# -- generate ----------------------------------------------------------------------------------
GENERATE_EXAMPLES = (
    "Examples:\n\n"
    '  gemma-mtp generate --prompt "Write a limerick about MLX"\n\n'
    '  cat notes.txt | gemma-mtp generate --prompt "Summarize:" > summary.md\n\n'
    '  gemma-mtp generate -m out/e4b-4bit --prompt "2+2=" --raw --max-tokens 8 --json\n\n'
    '  gemma-mtp generate --prompt "Hi" --temp 0.8 --top-p 0.95 --seed 1 --no-draft'
)


@app.command(cls=Command, epilog=GENERATE_EXAMPLES)
def generate(
    model: ModelOpt = DEFAULT_MODEL,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Prompt; piped stdin is appended.")
    ] = None,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = 256,
    temp: TempOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    min_p: MinPOpt = 0.0,
    seed: SeedOpt = None,
    raw: Annotated[bool, typer.Option("--raw", help="No chat template: the prompt as is.")] = False,
    no_draft: NoDraftOpt = False,
    no_lookup: NoLookupOpt = False,
    num_draft: NumDraftOpt = None,
    draft_schedule: ScheduleOpt = None,
    ignore_eos: IgnoreEosOpt = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object (text, token ids, stats) on stdout.")
    ] = False,
    drafter: DrafterOpt = None,
    dtype: DTypeOpt = None,
    recalibrate: RecalibrateOpt = False,
    max_context: MaxContextOpt = None,
    stop: Annotated[
        list[str] | None,
        typer.Option("--stop", metavar="<str>", help="Stop at this string (repeatable)."),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Answer one prompt: the text streams to stdout, the stats go to stderr in one line."""
    sampling = SamplingParams(temperature=temp, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed)
    request = make_request(max_tokens, sampling=sampling, stop=stop, ignore_eos=ignore_eos,
                           draft=draft_policy(no_draft, num_draft, draft_schedule),
                           no_lookup=no_lookup)
    spec = model_spec(model, drafter, no_draft, dtype, max_context, recalibrate)
    if raw and system:
        fail("--system needs the chat template (drop --raw)", 2)
    text = read_prompt(prompt)
    engine = load_engine(spec)
    check_drafting(engine, request)
    if system and not engine.has_chat_template:
        fail("--system needs a chat template, and this model has none", 2)
    if not raw:
        base_model_note(engine)
    ids = engine.encode(text, system=system, raw=raw)
    if not ids:
        fail("empty prompt: it encodes to no tokens", 2)
    from .request import RequestError

    try:
        if json_out:
            result = engine.run(ids, request)
            out = {"text": result.text, "token_ids": result.token_ids, **result.stats.to_dict(),
                   "load_s": round(engine.load_seconds, 3),
                   "load_phases": {k: round(v, 3) for k, v in engine.load_times.items()}}
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            print_answer(engine, engine.stream(ids, request), engine.drafting and request.drafts)
    except RequestError as e:
        fail(str(e), 2)
    if verbose:
        say(load_phases(engine))


def print_answer(engine, stream, drafting: bool) -> None:
    """The answer to stdout as it comes, the stats line to stderr."""
    view = PlainView()
    stats = None
    try:
        for chunk in stream:
            view.add(chunk)
            stats = chunk.stats
    except KeyboardInterrupt:
        if view.text and not view.text.endswith("\n"):
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    view.finish(stats, drafting, load_s=engine.load_seconds)


# -- chat --------------------------------------------------------------------------------------
CHAT_EXAMPLES = (
    "Examples:\n\n"
    "  gemma-mtp chat                         [dim]# first run downloads + converts E4B[/]\n\n"
    '  gemma-mtp chat -m out/e4b-4bit --system "Answer briefly." --temp 0.7\n\n'
    '  printf "Hi\\n/stats\\n/quit\\n" | gemma-mtp chat -m out/e4b-4bit\n\n'
    "In the chat: /reset, /stats, /system TEXT, /quit (Ctrl-D); a line ending with \\ "
    'continues, """ opens a multi-line block; Ctrl-C stops an answer.'
)


@app.command(cls=Command, epilog=CHAT_EXAMPLES)
def chat(
    model: ModelOpt = DEFAULT_MODEL,
    system: SystemOpt = None,
    max_tokens: MaxTokensOpt = 1024,
    temp: TempOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    min_p: MinPOpt = 0.0,
    seed: SeedOpt = None,
    no_draft: NoDraftOpt = False,
    no_lookup: NoLookupOpt = False,
    num_draft: NumDraftOpt = None,
    draft_schedule: ScheduleOpt = None,
    ignore_eos: IgnoreEosOpt = False,
    drafter: DrafterOpt = None,
    dtype: DTypeOpt = None,
    recalibrate: RecalibrateOpt = False,
    max_context: MaxContextOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Talk with the model; its cache is kept, so a turn prefills only the new message."""
    from .chat import run_chat

    sampling = SamplingParams(temperature=temp, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed)
    request = make_request(max_tokens, sampling=sampling, ignore_eos=ignore_eos,
                           draft=draft_policy(no_draft, num_draft, draft_schedule),
                           no_lookup=no_lookup)
    engine = load_engine(model_spec(model, drafter, no_draft, dtype, max_context, recalibrate))
    check_drafting(engine, request)
    if not engine.has_chat_template:
        fail("this model has no chat template (use `gemma-mtp generate --raw`)")
    base_model_note(engine)
    run_chat(engine, request, system, on_first_turn=(lambda: say(load_phases(engine))) if verbose
             else None)


# -- bench -------------------------------------------------------------------------------------
def bench_progress(row: dict, of: int) -> None:
    """One stderr line per prompt and mode as it finishes (a CPU run takes minutes)."""
    say(f"bench: {row['prompt']}.{row['mode']} done ({row['tokens']} tokens, "
        f"{row['tokens_per_s']:.1f} tok/s) · {of} rows in all")


BENCH_EXAMPLES = (
    "Examples:\n\n"
    "  gemma-mtp bench                                   [dim]# built-in prompts, E4B 4-bit[/]\n\n"
    "  gemma-mtp bench -m out/e4b-4bit --runs 3 --num-draft 2 --num-draft 4\n\n"
    "  gemma-mtp bench -m out/e4b-4bit --prompts prompts.txt --max-tokens 512 --json"
)


@app.command(cls=Command, epilog=BENCH_EXAMPLES)
def bench(
    model: ModelOpt = DEFAULT_MODEL,
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="One prompt per line (or JSON lines with 'prompt')."),
    ] = None,
    max_tokens: MaxTokensOpt = 256,
    runs: Annotated[
        int, typer.Option("--runs", "-r", min=1, help="Runs per prompt (medians).")
    ] = 3,
    num_draft: Annotated[
        list[int] | None,
        typer.Option(
            "--num-draft",
            "-k",
            metavar="<int>",
            help="Also a row with this fixed draft length (repeatable).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Results as JSON on stdout.")] = False,
    drafter: DrafterOpt = None,
    no_draft: NoDraftOpt = False,
    no_lookup: NoLookupOpt = False,
    dtype: DTypeOpt = None,
    recalibrate: RecalibrateOpt = False,
) -> None:
    """Greedy decoding with and without the drafter: speed, acceptance, and identical outputs."""
    for k in num_draft or ():
        draft_policy(False, k, None)
    texts = load_prompts(prompts)
    engine = load_engine(model_spec(model, drafter, no_draft, dtype, recalibrate=recalibrate))
    rows, mismatches = run_bench(engine, texts, max_tokens, runs, num_draft or (),
                                 on_row=bench_progress, lookup=not no_lookup)
    from .calibration import describe

    if json_out:
        out = {
            "model": str(engine.path),
            "drafter": engine.drafter_name,
            "max_tokens": max_tokens,
            "runs": runs,
            "prompts": texts,
            "identical": not mismatches,
            "mismatches": mismatches,
            "rows": rows,
            "calibration": describe(engine.calibration) if engine.calibration else None,
        }
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        bench_table(rows, texts, str(engine.path), runs, engine.drafting)
    if mismatches:
        for m in mismatches:
            say(
                f"error: MISMATCH on prompt {m['prompt']}: {m['mode']} differs from plain "
                f"decoding at token {m['first_difference']}"
            )
        fail(f"{len(mismatches)} run(s) did not reproduce plain greedy decoding")


# -- serve -------------------------------------------------------------------------------------
SERVE_EXAMPLES = (
    "Examples:\n\n"
    "  gemma-mtp serve                                   [dim]# http://127.0.0.1:8080/v1[/]\n\n"
    "  gemma-mtp serve -m out/e4b-4bit --port 9000 --api-key s3cret\n\n"
    "  curl -N localhost:8080/v1/chat/completions -H 'Content-Type: application/json' "
    "-d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"stream\": true}'"
)


@app.command(cls=Command, epilog=SERVE_EXAMPLES)
def serve(
    model: ModelOpt = DEFAULT_MODEL,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port.")] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="GEMMA_MTP_API_KEY",
                     help="Require `Authorization: Bearer KEY` on /v1 requests."),
    ] = None,
    drafter: DrafterOpt = None,
    no_draft: NoDraftOpt = False,
    no_lookup: NoLookupOpt = False,
    num_draft: NumDraftOpt = None,
    draft_schedule: ScheduleOpt = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", "-n", min=1,
                          help="A request's token budget when it names none.")
    ] = 2048,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=0,
                          help="Requests waiting beyond the one being answered (then 429).")
    ] = 16,
    cache_gb: Annotated[
        float, typer.Option("--cache-gb", min=0.0,
                            help="Memory for recent conversations' caches (prefix reuse).")
    ] = 2.0,
    dtype: DTypeOpt = None,
    recalibrate: RecalibrateOpt = False,
    max_context: MaxContextOpt = None,
) -> None:
    """An OpenAI-compatible server (chat and text completions, streaming) with the drafter."""
    from .fallback import BUNDLED_NAME, is_bundled

    default = make_request(max_tokens, draft=draft_policy(no_draft, num_draft, draft_schedule),
                           no_lookup=no_lookup)
    cache_bytes = int(cache_gb * 1e9)  # counted in the memory check
    spec = replace(model_spec(model, drafter, no_draft, dtype, max_context, recalibrate),
                   reserved_bytes=cache_bytes)
    from .server import ServerConfig, listen
    from .server import serve as run_server

    try:
        sock = listen(host, port)
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
    engine = load_engine(spec)
    check_drafting(engine, default)
    base_model_note(engine)
    config = ServerConfig(
        model_id=BUNDLED_NAME if is_bundled(engine.path) else model, api_key=api_key,
        max_queue=max_queue, cache_bytes=cache_bytes, default=default,
    )
    run_server(engine, config, sock)


# -- convert -----------------------------------------------------------------------------------
CONVERT_EXAMPLES = (
    "Examples:\n\n"
    "  gemma-mtp convert --target google/gemma-4-E4B-it -o out/e4b-4bit --bits 4\n\n"
    "  gemma-mtp convert --target ~/hf/gemma-4-31B-it --drafter ~/hf/gemma-4-31B-it-assistant "
    "-o out/31b-8bit --bits 8 --drafter-bits none\n\n"
    "  gemma-mtp convert --target google/gemma-4-E2B-it -o out/e2b-bf16"
)


@app.command(cls=Command, epilog=CONVERT_EXAMPLES)
def convert(
    target: Annotated[
        str, typer.Option("--target", help="Target: a hub repo id or a local folder.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (target/ + drafter/).")],
    drafter: Annotated[
        str | None,
        typer.Option("--drafter", help="Drafter: hub repo id or folder (default: the target's)."),
    ] = None,
    bits: Annotated[
        Bits | None, typer.Option("--bits", help="Quantize the target (default: keep dtype).")
    ] = None,
    group_size: Annotated[
        GroupSize, typer.Option("--group-size", help="Quantization group size.")
    ] = GroupSize.g64,
    dtype: Annotated[
        DType, typer.Option("--dtype", help="Dtype of the unquantized weights.")
    ] = DType.bfloat16,
    drafter_bits: Annotated[
        DrafterBits,
        typer.Option("--drafter-bits", help="Quantize the drafter: same as --bits, 4, 8 or none."),
    ] = DrafterBits.same,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT.")] = False,
) -> None:
    """Convert a Gemma 4 target and its MTP drafter into one MLX folder (optionally quantized)."""
    try:
        from .convert import convert_pair
    except ImportError:
        fail("the converter (gemma_mtp_mlx.convert) is not installed in this build")
    from .loading import ModelLoadError

    dbits: int | str | None = {
        DrafterBits.same: "same",
        DrafterBits.none: None,
        DrafterBits.four: 4,
        DrafterBits.eight: 8,
    }[drafter_bits]
    try:
        path = convert_pair(
            target,
            drafter,
            out,
            bits=int(bits.value) if bits else None,
            group_size=int(group_size.value),
            dtype=dtype.value,
            drafter_bits=dbits,
            force=force,
            progress=is_terminal(sys.stderr),
        )
    except (ModelLoadError, ValueError, OSError) as e:  # ConvertError is a ValueError
        fail(first_line(e))
    sys.stdout.write(f"{path}\n")
    if is_terminal(sys.stdout):
        say(f"try it: gemma-mtp chat -m {path}")


DISTILL_EXAMPLES = (
    "Examples:\n\n"
    "  gemma-mtp distill -m out/g3-270m -o out/g3-270m/drafter --tokens 200000 --steps 2000\n\n"
    "  gemma-mtp distill -m out/my-finetune -o out/my-finetune/drafter "
    "--init out/e4b-4bit/drafter"
)


@app.command(cls=Command, epilog=DISTILL_EXAMPLES)
def distill(
    model: Annotated[str, typer.Option("--model", "-m", help="Target model folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Drafter folder to write.")],
    init: Annotated[
        Path | None, typer.Option("--init", help="Start from this drafter (fine-tune).")
    ] = None,
    tokens: Annotated[
        int, typer.Option("--tokens", min=1000, help="Data tokens (one target pass each).")
    ] = 200_000,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")] = 1000,
    draft_depth: Annotated[
        int, typer.Option("--draft-depth", min=1, max=8, help="Draft steps unrolled in training.")
    ] = 3,
    hidden: Annotated[
        int | None, typer.Option("--hidden", help="Drafter width (default: the target's).")
    ] = None,
    vocab_subset: Annotated[
        int, typer.Option("--vocab-subset", min=0, help="Head over the V most frequent tokens.")
    ] = 16384,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Sequences per step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="Extra prompts, one per line.")
    ] = None,
    greedy_rows: Annotated[
        int, typer.Option("--greedy-rows", min=0,
                          help="Also train on the target's greedy continuations of N prefixes "
                               "of its own text (what greedy decoding verifies).")
    ] = 0,
) -> None:
    """Train an MTP drafter for a target by self-distillation (resumable)."""
    from .distill import distill_command
    from .loading import ModelLoadError

    if not Path(model).is_dir():
        fail(f"{model}: no such model folder (make one with `gemma-mtp convert`)")
    try:
        summary = distill_command(
            model, str(out), init=str(init) if init else None, tokens=tokens, steps=steps,
            draft_depth=draft_depth, hidden=hidden, vocab_subset=vocab_subset, batch=batch,
            lr=lr, seed=seed, prompts=str(prompts) if prompts else None,
            greedy_rows=greedy_rows,
        )
    except (ModelLoadError, ValueError, OSError) as e:
        fail(first_line(e))
    sys.stdout.write(json.dumps(summary) + "\n")


def main() -> None:  # `python -m gemma_mtp_mlx`
    app(prog_name="gemma-mtp")
