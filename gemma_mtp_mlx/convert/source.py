"""Where a checkpoint comes from: a local folder, or a Hugging Face Hub repo id.

Hub repos are fetched with `huggingface_hub.snapshot_download` (only the files a
text model needs) into the usual Hugging Face cache, so a second run, or a run
with HF_HUB_OFFLINE=1, reuses the snapshot without the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from .errors import ConvertError, HubUnreachable

ALLOW_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "chat_template*",
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
]
# Copied next to the converted weights (everything but config and weights).
AUX_PATTERNS = [p for p in ALLOW_PATTERNS if p not in ("config.json",) and "safetensors" not in p]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Source:
    spec: str  # as the user gave it
    path: Path  # local folder holding the files
    repo_id: str | None = None  # set when it came from the Hub
    revision: str | None = None  # the snapshot's commit hash (Hub only)

    def describe(self) -> dict:
        if self.repo_id:
            return {"repo_id": self.repo_id, "revision": self.revision}
        return {"path": str(self.path), "revision": str(self.path)}


def is_hub_id(spec: str) -> bool:
    """`org/name` that is not an existing local path."""
    if Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")):
        return False
    return bool(_REPO_ID.match(spec)) and ".." not in spec


def offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in ("1", "ON", "YES", "TRUE")


def _hf_cache_dir() -> str | None:
    return os.environ.get("HF_HUB_CACHE") or None  # else huggingface_hub's default


_OFFLINE_MISS = ("{repo_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                 "(download it once online, or give a local folder)")
_UNREACHABLE = "{repo_id}: cannot reach the Hugging Face Hub and it is not in the local cache"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                   "all_proxy")


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the hub's endpoint (HF_ENDPOINT) opens within `timeout`:
    checked before huggingface_hub is imported (0.8 s) and tried (its timeouts are 10 s where
    packets are dropped). Behind a proxy the question is left to huggingface_hub."""
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def in_hf_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds anything of `repo_id` (a snapshot to reuse)."""
    root = os.environ.get("HF_HUB_CACHE")
    if not root:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
        root = os.path.join(home, "hub")
    return (Path(root).expanduser() / ("models--" + repo_id.replace("/", "--"))).is_dir()


def fetch(repo_id: str, patterns: list[str] | None = None, progress: bool = True) -> Source:
    """Download (or find in the cache) the files of `repo_id` that a text model needs."""
    if not in_hf_cache(repo_id):  # say so without importing huggingface_hub (0.5 s)
        if offline():
            raise HubUnreachable(_OFFLINE_MISS.format(repo_id=repo_id))
        if not hub_reachable():
            raise HubUnreachable(_UNREACHABLE.format(repo_id=repo_id))
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:  # pragma: no cover - a dependency
        raise ConvertError("huggingface_hub is not installed") from None
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not progress:
        disable_progress_bars()
    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=patterns or ALLOW_PATTERNS,
            cache_dir=_hf_cache_dir(),
            local_files_only=offline(),
        )
    except GatedRepoError:
        raise ConvertError(
            f"{repo_id}: gated on the Hugging Face Hub; accept its license on the model page "
            "and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise ConvertError(
            f"{repo_id}: no such local folder, nor a repository on the Hugging Face Hub "
            "(or it is private)"
        ) from None
    except LocalEntryNotFoundError:
        message = _OFFLINE_MISS if offline() else _UNREACHABLE
        raise HubUnreachable(message.format(repo_id=repo_id)) from None
    except Exception as e:  # network/HTTP errors of many kinds
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, OSError) or "Connect" in type(e).__name__:
            raise HubUnreachable(f"{repo_id}: cannot reach the Hugging Face Hub: {msg}") from None
        raise ConvertError(f"{repo_id}: download failed: {msg}") from None
    finally:
        if not progress:
            enable_progress_bars()
    path = Path(folder)
    return Source(repo_id, path, repo_id=repo_id, revision=path.name)


def resolve(spec: str, progress: bool = True) -> Source:
    """A local folder as is, or a Hub repo id fetched into the cache."""
    if is_hub_id(spec):
        return fetch(spec, progress=progress)
    path = Path(spec).expanduser()
    if not path.is_dir():
        what = "not a folder" if path.exists() else "no such folder"
        raise ConvertError(f"{spec}: {what} (give a model folder or a Hugging Face repo id)")
    return Source(spec, path.resolve())


def read_config(folder: Path) -> dict:
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        raise ConvertError(f"{folder}: no config.json, not a model folder")
    try:
        config = json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConvertError(f"{cfg}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConvertError(f"{cfg}: not a model config")
    from mlx_lm.utils import load_config

    try:  # as mlx-lm reads it (eos_token_id from generation_config.json)
        return load_config(Path(folder))
    except (ValueError, OSError):
        return config


def copy_aux(src: Path, dst: Path) -> list[str]:
    """Tokenizer, chat template and generation config files, as they are."""
    copied = []
    for pattern in AUX_PATTERNS:
        for f in sorted(Path(src).glob(pattern)):
            if f.is_file() and f.name not in copied:
                shutil.copyfile(f, dst / f.name)  # follows HF cache symlinks
                copied.append(f.name)
    return copied


def has_tokenizer(folder: Path) -> bool:
    return any((Path(folder) / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))
