"""No network, nothing cached: the default model falls back to the bundled Gemma 3 270M."""

import os
import subprocess
import sys


def test_offline_fresh_machine_uses_the_bundled_model(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"),
               GEMMA_MTP_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "gemma_mtp_mlx", "generate", "--raw",
           "--prompt", "The capital of France is", "-n", "6"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "bundled Gemma 3 270M" in done.stderr
    assert done.stdout.strip()  # real text from real weights
    assert (tmp_path / "cache" / "gemma-3-270m-bundled" / "target" / "config.json").is_file()


def test_a_pair_converted_earlier_gets_the_packaged_drafter(tmp_path, monkeypatch):
    import gemma_mtp_mlx.fallback as fallback

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "config.json").write_text("{}")
    (shipped / "model.safetensors").write_bytes(b"v1")
    monkeypatch.setattr(fallback, "BUNDLED_DRAFTER", shipped)
    dest = tmp_path / "pair" / "drafter"
    dest.parent.mkdir()
    fallback.refresh_drafter(dest)  # converted before a drafter shipped: copied in
    assert (dest / "model.safetensors").read_bytes() == b"v1"
    (shipped / "model.safetensors").write_bytes(b"v2")  # a newer package: replaced
    fallback.refresh_drafter(dest)
    assert (dest / "model.safetensors").read_bytes() == b"v2"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["drafter"]
