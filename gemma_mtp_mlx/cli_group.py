"""How `gemma-mtp` meets click: every failure one line on stderr with its exit code, a closed
pipe ending quietly, and --help without typer's `<bool>` after on/off flags."""

from __future__ import annotations

import os
import signal
import sys

from typer.core import TyperCommand, TyperGroup

from .errors import UserError, first_line, say


def _plain_flags(params):
    """On/off options shown as plain flags in --help (typer writes `--raw <bool>`)."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class Command(TyperCommand):
    """A subcommand: its flags shown as plain flags in --help."""

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))


class CommandGroup(TyperGroup):
    """Every failure as one line on stderr, whatever raised it (click, typer or us)."""

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if hasattr(signal, "SIGPIPE") and sys.stdout is sys.__stdout__:
            # Like `cat`: a closed pipe (`| head`) ends us quietly, with no traceback.
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
            if code == 130:  # typer turns KeyboardInterrupt into Exit(130)
                say("interrupted")
        except UserError as e:
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
