"""Option types shared by the `gemma-mtp` commands (kept apart to keep cli.py short)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .request import MAX_DRAFT

DEFAULT_MODEL = "google/gemma-4-E4B-it"


class DType(str, Enum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A folder made by `gemma-mtp convert` (target/ + drafter/), any Gemma 4 model "
        "folder, or a Hugging Face repo id (downloaded and converted to 4-bit once).",
        show_default=True,
    ),
]
DrafterOpt = Annotated[
    Path | None,
    typer.Option("--drafter", help="Drafter folder, when the model folder has none."),
]
NoDraftOpt = Annotated[
    bool, typer.Option("--no-draft", help="Run the target alone (plain decoding).")
]
NoLookupOpt = Annotated[
    bool,
    typer.Option("--no-lookup", help="Drafts from the drafter only (by default, where the "
                 "text's last two tokens occurred before, what followed them is drafted)."),
]
NumDraftOpt = Annotated[
    int | None,
    typer.Option(
        "--num-draft",
        "-k",
        help=f"Fixed draft length 1..{MAX_DRAFT} (default: the auto schedule).",
    ),
]


class Schedule(str, Enum):
    heuristic = "heuristic"
    auto = "auto"


ScheduleOpt = Annotated[
    Schedule | None,
    typer.Option(
        "--draft-schedule",
        help="auto (each round the K, 0 = drafter off, expected to give the most tokens/s; "
        "the default) or heuristic (+2 after a full accept, -1 after a rejection).",
    ),
]
DTypeOpt = Annotated[
    DType | None,
    typer.Option("--dtype", help="Compute dtype (default: the checkpoint's)."),
]
MaxContextOpt = Annotated[
    int | None,
    typer.Option(
        "--max-context",
        help="Longest context in tokens, prompt and answer together (default: the model's, "
        "or what fits in memory).",
    ),
]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Tokens to generate.")]
TempOpt = Annotated[float, typer.Option("--temp", "-t", help="Temperature; 0 is greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass, in (0, 1].")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Keep the k most likely tokens; 0: all.")]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Drop tokens below min-p x the best.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed for sampling.")]
SystemOpt = Annotated[
    str | None,
    typer.Option("--system", "-s", help="System prompt (Gemma folds it into the first turn)."),
]
RecalibrateOpt = Annotated[
    bool,
    typer.Option("--recalibrate", help="Measure this machine's kernels for the model anew "
                 "(decode width, guard margins; kept under the cache folder once measured)."),
]
VerboseOpt = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Also say where the time before the first token went."),
]


class Bits(str, Enum):
    four = "4"
    eight = "8"


class GroupSize(str, Enum):
    g32 = "32"
    g64 = "64"
    g128 = "128"


class DrafterBits(str, Enum):
    same = "same"
    four = "4"
    eight = "8"
    none = "none"


IgnoreEosOpt = Annotated[
    bool,
    typer.Option("--ignore-eos", help="Do not stop at end-of-sequence tokens (run to -n)."),
]
