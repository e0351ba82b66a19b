"""The `gemma-mtp` command: generate, chat, bench and convert.

Errors are one line on stderr (`error: ...`) and a non-zero exit code, never a
traceback: 1 for a model or conversion problem, 2 for a bad option or an empty
prompt, 130 for Ctrl-C. MLX and the models are imported inside the commands,
so `gemma-mtp --help` is instant.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from .benchmark import bench_table, load_prompts, run_bench
from .chat import CHAT_HELP_TEXT, Conversation, read_message
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
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    NoDraftOpt,
    NumDraftOpt,
    Schedule,
    ScheduleOpt,
    SeedOpt,
    SystemOpt,
    TempOpt,
    TopKOpt,
    TopPOpt,
)
from .errors import CliError, fail, first_line, say
from .live import PlainView, is_terminal, make_view, stats_line, status_panel
from .resolve import load_model, make_decoder


class _Group(TyperGroup):
    """Every failure as one line on stderr, whatever raised it (click, typer or us)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if hasattr(signal, "SIGPIPE") and sys.stdout is sys.__stdout__:
            # Like `cat`: a closed pipe (`| head`) ends us quietly, with no traceback.
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
            if code == 130:  # typer turns KeyboardInterrupt into Exit(130)
                say("interrupted")
        except CliError as e:
            say(f"error: {e}")
            code = e.code
        except KeyboardInterrupt:
            say("interrupted")
            code = 130
        except Exception as e:
            code = _click_failure(e)
        if standalone_mode:
            sys.exit(code)
        return code


def _click_failure(e: Exception) -> int:
    """click's (or typer's vendored click's) exceptions as one line; anything else is a bug."""
    kinds = {c.__name__ for c in type(e).__mro__}
    ctx = getattr(e, "ctx", None)
    if "NoArgsIsHelpError" in kinds and ctx is not None:
        sys.stdout.write(ctx.get_help() + "\n")
        return 0
    if "UsageError" in kinds:
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        say(f"error: {e.format_message()}{hint}")
        return getattr(e, "exit_code", 2)
    if "ClickException" in kinds:
        say(f"error: {e.format_message()}")
        return getattr(e, "exit_code", 1)
    if "Abort" in kinds:
        say("interrupted")
        return 130
    if os.environ.get("GEMMA_MTP_DEBUG"):
        raise e
    name, line = type(e).__name__, first_line(e)
    say(f"error: {name}: {line} (GEMMA_MTP_DEBUG=1 shows the traceback)")
    return 1


app = typer.Typer(
    cls=_Group,
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


# -- options shared by the commands ------------------------------------------------------------
def _sampling(temp: float, top_p: float, top_k: int, min_p: float, seed: int | None):
    from .sampling import SamplingParams

    params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
    try:
        params.validate()
    except ValueError as e:
        fail(f"bad sampling option: {e}", 2)
    return params


def _draft_spec(num_draft: int | None, schedule: Schedule | None):
    """What stream_generate takes as num_draft: a fixed K, a schedule name or None (auto)."""
    if num_draft is not None and schedule is not None:
        fail("--num-draft and --draft-schedule exclude each other", 2)
    return num_draft if num_draft is not None else (schedule.value if schedule else None)


def _check_draft_options(no_draft: bool, num_draft: int | None, drafter: Path | None) -> None:
    if no_draft and num_draft is not None:
        fail("--num-draft and --no-draft exclude each other", 2)
    if no_draft and drafter is not None:
        fail("--drafter and --no-draft exclude each other", 2)
    if num_draft is not None and not 1 <= num_draft <= MAX_DRAFT:
        fail(f"--num-draft must be in 1..{MAX_DRAFT} (use --no-draft for none)", 2)


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


@app.command(epilog=GENERATE_EXAMPLES)
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
    num_draft: NumDraftOpt = None,
    draft_schedule: ScheduleOpt = None,
    ignore_eos: IgnoreEosOpt = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object (text, token ids, stats) on stdout.")
    ] = False,
    drafter: DrafterOpt = None,
    dtype: DTypeOpt = None,
    stop: Annotated[
        list[str] | None, typer.Option("--stop", help="Stop at this string (repeatable).")
    ] = None,
) -> None:
    """Answer one prompt: the text streams to stdout, the stats go to stderr in one line."""
    sampling = _sampling(temp, top_p, top_k, min_p, seed)
    _check_draft_options(no_draft, num_draft, drafter)
    draft = _draft_spec(num_draft, draft_schedule)
    if raw and system:
        fail("--system needs the chat template (drop --raw)", 2)
    text = read_prompt(prompt)
    pair = load_model(model, drafter, no_draft, dtype)

    from .generate import encode_prompt, stream_generate

    ids = encode_prompt(pair.tokenizer, text, system=system, raw=raw)
    if not ids:
        fail("empty prompt: it encodes to no tokens", 2)
    use_drafter = not no_draft
    decoder = make_decoder(pair, sampling, use_drafter)
    stream = stream_generate(
        pair,
        ids,
        max_tokens=max_tokens,
        sampling=sampling,
        num_draft=draft,
        use_drafter=use_drafter,
        stop_strings=tuple(stop or ()),
        decoder=decoder,
        ignore_eos=ignore_eos,
    )
    if json_out:
        answer, token_ids, stats = "", [], None
        for chunk in stream:
            answer += chunk.text
            token_ids += chunk.tokens
            stats = chunk.stats
        out = {"text": answer, "token_ids": token_ids, **stats.to_dict()}
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
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
    view.finish(stats, use_drafter)


# -- chat --------------------------------------------------------------------------------------
CHAT_EXAMPLES = (
    "Examples:\n\n"
    "  gemma-mtp chat                         [dim]# first run downloads + converts E4B[/]\n\n"
    '  gemma-mtp chat -m out/e4b-4bit --system "Answer briefly." --temp 0.7\n\n'
    '  printf "Hi\\n/stats\\n/quit\\n" | gemma-mtp chat -m out/e4b-4bit\n\n'
    "In the chat: /reset, /stats, /system TEXT, /quit (Ctrl-D); a line ending with \\ "
    'continues, """ opens a multi-line block; Ctrl-C stops an answer.'
)


@app.command(epilog=CHAT_EXAMPLES)
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
    num_draft: NumDraftOpt = None,
    draft_schedule: ScheduleOpt = None,
    ignore_eos: IgnoreEosOpt = False,
    drafter: DrafterOpt = None,
    dtype: DTypeOpt = None,
) -> None:
    """Talk with the model; its cache is kept, so a turn prefills only the new message."""
    from rich.console import Console

    sampling = _sampling(temp, top_p, top_k, min_p, seed)
    _check_draft_options(no_draft, num_draft, drafter)
    draft = _draft_spec(num_draft, draft_schedule)
    pair = load_model(model, drafter, no_draft, dtype)
    if getattr(pair.tokenizer, "chat_template", None) is None:
        fail("this model has no chat template (use `gemma-mtp generate --raw`)")

    from .generate import stream_generate

    use_drafter = not no_draft
    interactive = is_terminal(sys.stdin)
    tty_out = is_terminal(sys.stdout)
    console = Console(highlight=False)
    # Replies to commands: with the answers on a terminal, else on stderr (stdout = answers).
    note = console if tty_out else Console(stderr=True, highlight=False, soft_wrap=True)
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    convo = Conversation(pair, system)
    decoder = None
    last = None  # (stats, cached) of the last turn
    mode = "off" if not use_drafter else f"K={draft}" if isinstance(draft, int) else draft
    mode = mode or "auto"
    if tty_out:
        console.print(
            f"[bold]gemma-mtp chat[/] · {pair.path} · drafter {mode} · "
            "/help for commands, Ctrl-D to exit",
            style="dim",
        )

    while True:
        try:
            message = read_message(interactive, console)
        except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line
            console.print()
            continue
        if message is None:
            if interactive:
                console.print()
            return
        if not message.strip():
            continue
        command, _, arg = message.strip().partition(" ")
        if command.startswith("/") and "\n" not in message.strip():
            if command in ("/quit", "/exit", "/q"):
                return
            if command == "/reset":
                convo.clear()
                last = None
                note.print("[dim]conversation reset[/]")
            elif command == "/system":
                convo.system = arg.strip() or None
                note.print(
                    f"[dim]system prompt {'set' if convo.system else 'cleared'} "
                    "(applies from the next turn)[/]"
                )
            elif command == "/stats":
                if last is None:
                    note.print("[dim]no turn yet[/]")
                else:
                    stats, cached = last
                    if tty_out:
                        note.print(status_panel(stats, use_drafter, title="last turn"))
                    else:
                        note.print(stats_line(stats, use_drafter, cached=cached), markup=False)
                note.print(
                    f"[dim]session: {convo.turns} turns, {len(convo.ids)} tokens in context[/]"
                )
            elif command in ("/help", "/?"):
                note.print(CHAT_HELP_TEXT, markup=False)
            else:
                note.print(f"unknown command {command} (try /help)", markup=False)
            continue

        fed = convo.plan(message)
        cached = convo.cached
        if decoder is None:
            decoder = make_decoder(pair, sampling, use_drafter)
        view = make_view(use_drafter, title=f"turn {convo.turns + 1}")
        answer: list[int] = []
        stats = None
        interrupted = False
        with view:
            try:
                for chunk in stream_generate(
                    pair,
                    fed,
                    max_tokens=max_tokens,
                    num_draft=draft,
                    use_drafter=use_drafter,
                    session=convo.session,
                    decoder=decoder,
                    ignore_eos=ignore_eos,
                ):
                    answer += chunk.tokens
                    stats = chunk.stats
                    view.add(chunk)
            except KeyboardInterrupt:
                interrupted = True
            view.finish(
                stats, use_drafter, interrupted=interrupted, turn=convo.turns + 1, cached=cached
            )
        if interrupted and stats is None:
            note.print("[dim](stopped before the first token)[/]")
        convo.record(message, fed, answer, interrupted)
        if stats is not None:
            last = (stats, cached)


# -- bench -------------------------------------------------------------------------------------
BENCH_EXAMPLES = (
    "Examples:\n\n"
    "  gemma-mtp bench                                   [dim]# built-in prompts, E4B 4-bit[/]\n\n"
    "  gemma-mtp bench -m out/e4b-4bit --runs 3 --num-draft 2 --num-draft 4\n\n"
    "  gemma-mtp bench -m out/e4b-4bit --prompts prompts.txt --max-tokens 512 --json"
)


@app.command(epilog=BENCH_EXAMPLES)
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
            help="Also a row with this fixed draft length (repeatable).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Results as JSON on stdout.")] = False,
    drafter: DrafterOpt = None,
    dtype: DTypeOpt = None,
) -> None:
    """Greedy decoding with and without the drafter: speed, acceptance, and identical outputs."""
    for k in num_draft or ():
        _check_draft_options(False, k, None)
    texts = load_prompts(prompts)
    pair = load_model(model, drafter, False, dtype)

    rows, mismatches = run_bench(pair, texts, max_tokens, runs, num_draft or (), make_decoder)

    if json_out:
        out = {
            "model": str(pair.path),
            "max_tokens": max_tokens,
            "runs": runs,
            "prompts": texts,
            "identical": not mismatches,
            "mismatches": mismatches,
            "rows": rows,
        }
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        bench_table(rows, texts, str(pair.path), runs)
    if mismatches:
        for m in mismatches:
            say(
                f"error: MISMATCH on prompt {m['prompt']}: {m['mode']} differs from plain "
                f"decoding at token {m['first_difference']}"
            )
        fail(f"{len(mismatches)} run(s) did not reproduce plain greedy decoding")


# -- convert -----------------------------------------------------------------------------------
CONVERT_EXAMPLES = (
    "Examples:\n\n"
    "  gemma-mtp convert --target google/gemma-4-E4B-it -o out/e4b-4bit --bits 4\n\n"
    "  gemma-mtp convert --target ~/hf/gemma-4-31B-it --drafter ~/hf/gemma-4-31B-it-assistant "
    "-o out/31b-8bit --bits 8 --drafter-bits none\n\n"
    "  gemma-mtp convert --target google/gemma-4-E2B-it -o out/e2b-bf16"
)


@app.command(epilog=CONVERT_EXAMPLES)
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


@app.command(epilog=DISTILL_EXAMPLES)
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
        )
    except (ModelLoadError, ValueError, OSError) as e:
        fail(first_line(e))
    sys.stdout.write(json.dumps(summary) + "\n")


def main() -> None:  # `python -m gemma_mtp_mlx`
    app(prog_name="gemma-mtp")
