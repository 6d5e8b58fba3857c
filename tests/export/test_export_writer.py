"""The atomic repository writer on its own: nothing half-written, whatever fails."""

from __future__ import annotations

import pytest
from rnnserve.export.errors import ExportError
from rnnserve.export.writer import choose_version, write_version


def test_failing_fill_leaves_nothing(tmp_path):
    model = tmp_path / "m"

    def fill(staging):
        (staging / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_version(model, "1", fill)
    assert not model.exists()  # the model dir it created is gone again


def test_concurrently_created_version_is_not_replaced(tmp_path):
    model = tmp_path / "m"
    model.mkdir()

    def fill(staging):
        (staging / "model.onnx").write_bytes(b"mine")
        (model / "1").mkdir()  # another exporter wins the race
        (model / "1" / "model.onnx").write_bytes(b"theirs")

    with pytest.raises(ExportError, match="appeared while exporting"):
        write_version(model, "1", fill)
    assert (model / "1" / "model.onnx").read_bytes() == b"theirs"
    assert [p.name for p in model.iterdir()] == ["1"]


def test_replace_restores_the_old_version_when_commit_fails(tmp_path):
    model = tmp_path / "m"
    write_version(model, "2", lambda d: (d / "f").write_text("old"))

    def commit():
        raise OSError("no space")

    with pytest.raises(OSError):
        write_version(model, "2", lambda d: (d / "f").write_text("new"), commit, replace=True)
    assert (model / "2" / "f").read_text() == "old"
    assert [p.name for p in model.iterdir()] == ["2"]


def test_choose_version(tmp_path):
    model = tmp_path / "m"
    assert choose_version(model, None, force=False) == "1"
    for version in ("1", "2", "10"):
        (model / version).mkdir(parents=True)
    (model / "notes").mkdir()
    assert choose_version(model, None, force=False) == "11"
    assert choose_version(model, "007", force=False) == "7"
    assert choose_version(model, 2, force=True) == "2"
    with pytest.raises(ExportError, match="already exists"):
        choose_version(model, 10, force=False)
