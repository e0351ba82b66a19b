"""Which model a command runs (resolve.py), with the hub unreachable the common way:
HF_HUB_OFFLINE unset and the endpoint refusing connections (a closed local port)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from conftest import closed_port
from typer.testing import CliRunner

from gemma_mtp_mlx.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
E2B = FIXTURES / "e2b_tiny"
UNREACHABLE = "no such folder (and not a cached hub model: the Hugging Face Hub is unreachable)"


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from gemma_mtp_mlx.convert.source import PROXY_VARIABLES

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("GEMMA_MTP_CACHE", str(tmp_path / "cache"))
    return tmp_path


def error_line(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_hub_reachable_sees_a_refused_endpoint(no_network, monkeypatch):
    from gemma_mtp_mlx.convert.source import hub_reachable

    assert not hub_reachable()
    with socket.socket() as server:  # and a listening one
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable()
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")  # behind a proxy: not our call
    assert hub_reachable()


@pytest.mark.parametrize("name", ["out/e4b-4bit", "google/gemma-4-E2B-it"])
def test_a_missing_folder_or_unreachable_hub_id_is_named_once(no_network, name):
    line = error_line("generate", "-m", name, "--prompt", "hi")
    assert line == f"error: {name}: {UNREACHABLE}"  # never swapped for the bundled model


@pytest.mark.parametrize("name", ["./out/e4b", "/no/such/model", "just-a-name"])
def test_a_missing_path_is_not_looked_up_on_the_hub(no_network, name):
    line = error_line("generate", "-m", name, "--prompt", "hi")
    assert line.startswith(f"error: {name}: no such folder (make one with `gemma-mtp convert")
    assert line.count(name) == 1


def test_a_damaged_cached_conversion_names_the_folder_to_delete(no_network):
    """The default model converted earlier into the cache, its weights since truncated."""
    folder = no_network / "cache" / "google--gemma-4-E4B-it-4bit"
    shutil.copytree(E2B, folder, ignore=shutil.ignore_patterns("reference.npz"))
    (folder / "manifest.json").write_text(json.dumps({"tool": "gemma-mtp"}))
    shard = sorted((folder / "target").glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    line = error_line("generate", "--prompt", "hi", "--dtype", "float32")
    assert "cannot load the target weights" in line and f"delete {folder} and run again" in line


def test_a_damaged_folder_outside_the_cache_gets_no_such_hint(tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(E2B, folder, ignore=shutil.ignore_patterns("reference.npz"))
    (folder / "target" / "config.json").write_text("{not json")
    line = error_line("generate", "-m", folder, "--prompt", "hi")
    assert "not valid JSON" in line and "delete" not in line
