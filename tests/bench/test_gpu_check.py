"""scripts/gpu-check.sh's checks stay runnable: its CPU-comparable sections, driven with CPU
in place of CUDA on the session's tiny models (the GPU run itself needs a GPU machine)."""

from __future__ import annotations

import pytest
from rnnserve.bench import gpu_check


@pytest.fixture
def check_repository(tmp_path, tiny_repository):
    """The tiny models under the names the check expects (1- and 2-layer alike)."""
    repo = tmp_path / "repository"
    repo.mkdir()
    for name, source in (("chk-lstm1", "tiny-lstm"), ("chk-lstm2", "tiny-lstm"),
                         ("chk-gru1", "tiny-gru"), ("chk-gru2", "tiny-gru")):
        (repo / name).symlink_to(tiny_repository / source, target_is_directory=True)
    return repo


def test_sections_pass_on_cpu(check_repository, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "FAILURES", [])
    gpu_check.active_provider(check_repository, "cpu")
    gpu_check.placement(check_repository, "cpu")
    gpu_check.parity(check_repository, "cpu")
    gpu_check.chunked_and_pool(check_repository, "cpu")
    out = capsys.readouterr().out
    assert gpu_check.FAILURES == [], out
    assert out.count("[ok]") == 4 + 4 + 8     # providers, parity (tf32 off), chunked + pool
    assert "lengths_int32" in out and "Memcpy nodes: none" in out


def test_a_failed_check_is_reported(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "FAILURES", [])
    gpu_check.check(False, "something")
    assert gpu_check.FAILURES == ["something"]
    assert "[FAIL] something" in capsys.readouterr().out
