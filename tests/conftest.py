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


@pytest.fixture(params=PAIRS)
def pair_name(request):
    return request.param


@cache
def engine(name: str, dtype: str = "float32", use_drafter: bool = True):
    """An Engine over a fixture pair (shared across tests: loading is the slow part)."""
    from gemma_mtp_mlx.engine import Engine

    return Engine(pair(name, dtype, use_drafter))
