"""`gemma-mtp convert`: Gemma 4 checkpoints (and their MTP drafters) to MLX.

    from gemma_mtp_mlx.convert import convert_pair, resolve_model, ConvertError

    convert_pair("google/gemma-4-E2B-it", None, "gemma-4-E2B-mlx", bits=4)
    # -> gemma-4-E2B-mlx/{target,drafter,manifest.json}

Conversion streams shard by shard (see `writer`), is atomic (see `pair`) and
refuses bad input before writing anything (see `plan`, `source`).
"""

from .errors import ConvertError, HubUnreachable
from .pair import cache_name, convert_pair, default_cache_dir, resolve_model
from .plan import BITS, DTYPES, GROUP_SIZES
from .source import is_hub_id

__all__ = [
    "BITS",
    "DTYPES",
    "GROUP_SIZES",
    "ConvertError",
    "HubUnreachable",
    "cache_name",
    "convert_pair",
    "default_cache_dir",
    "is_hub_id",
    "resolve_model",
]
