"""Bad input gives one clear ExportError (one line from the CLI) and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
from rnnserve.export import exporter, writer
from rnnserve.export.commands import export_command
from rnnserve.export.errors import ExportError
from rnnserve.export.exporter import export_checkpoint
from typer.testing import CliRunner

from rnnserve.repository import CONFIG_FILE, METADATA_FILE


def _snapshot(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def lstm_checkpoint(make_checkpoint) -> Path:
    return make_checkpoint("lstm")


@pytest.fixture
def broken_checkpoint(lstm_checkpoint, tmp_path):
    """``broken(file, content)`` -> a copy of a valid checkpoint with one file replaced/removed."""

    def build(file: str, content: bytes | None) -> Path:
        copy = tmp_path / f"broken-{file}"
        shutil.copytree(lstm_checkpoint, copy)
        if content is None:
            (copy / file).unlink()
        else:
            (copy / file).write_bytes(content)
        return copy

    return build


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("model.safetensors", None, "model.safetensors: missing"),
        ("model.safetensors", b"\x00garbage" * 10, "cannot read weights"),
        ("config.json", b"{not json", "invalid model config"),
        ("config.json", b'{"cell": "rnn"}', "invalid model config"),
        ("tokenizer.json", b"[]", "not a valid tokenizers file"),
    ],
)
def test_corrupt_checkpoint(broken_checkpoint, tmp_path, file, content, message):
    checkpoint = broken_checkpoint(file, content)
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match=message) as info:
        export_checkpoint(checkpoint, repository=repo, name="m")
    assert "\n" not in str(info.value)
    assert _snapshot(repo) == {}


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_checkpoint(tmp_path / "nope", repository=tmp_path / "repo", name="m")


def test_weights_that_do_not_match_the_config(make_checkpoint, tmp_path):
    mismatched = tmp_path / "mismatch"
    shutil.copytree(make_checkpoint("lstm", hidden=12), mismatched)
    shutil.copy(make_checkpoint("lstm", hidden=8) / "model.safetensors", mismatched)
    with pytest.raises(ExportError, match="shape"):
        export_checkpoint(mismatched, repository=tmp_path / "repo", name="m")


@pytest.mark.parametrize("precision", ["fp8", "FP32", "", "int4"])
def test_unknown_precision(lstm_checkpoint, tmp_path, precision):
    with pytest.raises(ExportError, match="unknown precision .* fp32, fp16, int8"):
        export_checkpoint(lstm_checkpoint, repository=tmp_path, name="m", precision=precision)
    assert _snapshot(tmp_path) == {}


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".", "..", ".hidden", "x" * 200, "a b"])
def test_unsafe_model_name(lstm_checkpoint, tmp_path, name):
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match="invalid model name"):
        export_checkpoint(lstm_checkpoint, repository=repo, name=name)
    assert not repo.exists() and sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("version", [0, -1, "abc", "1.5"])
def test_invalid_version(lstm_checkpoint, tmp_path, version):
    with pytest.raises(ExportError, match="invalid model version"):
        export_checkpoint(lstm_checkpoint, repository=tmp_path, name="m", version=version)
    assert _snapshot(tmp_path) == {}


def test_existing_version_needs_force(lstm_checkpoint, tmp_path):
    first = export_checkpoint(lstm_checkpoint, repository=tmp_path, name="m", version=3)
    before = _snapshot(tmp_path)
    with pytest.raises(ExportError, match="already exists: pass --force"):
        export_checkpoint(lstm_checkpoint, repository=tmp_path, name="m", version=3)
    assert _snapshot(tmp_path) == before
    replaced = export_checkpoint(
        lstm_checkpoint, repository=tmp_path, name="m", version=3, force=True
    )
    assert replaced == first
    assert (replaced / METADATA_FILE).read_bytes() != before[f"m/3/{METADATA_FILE}"]  # new time
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["3", CONFIG_FILE]


def test_incompatible_new_version_is_refused(make_checkpoint, tmp_path):
    export_checkpoint(make_checkpoint("lstm"), repository=tmp_path, name="m")
    before = _snapshot(tmp_path)
    with pytest.raises(ExportError, match="different inputs/outputs"):
        export_checkpoint(make_checkpoint("gru"), repository=tmp_path, name="m")
    assert _snapshot(tmp_path) == before
    # Replacing the only version with --force may change the signature.
    export_checkpoint(make_checkpoint("gru"), repository=tmp_path, name="m", version=1, force=True)


def test_repository_that_is_a_file(lstm_checkpoint, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_checkpoint(lstm_checkpoint, repository=path, name="m")


def test_parity_failure_is_an_error_and_writes_nothing(lstm_checkpoint, tmp_path, monkeypatch):
    original = exporter.build_onnx

    def wrong(spec, weights):
        weights = dict(weights)
        weights["head.bias"] = weights["head.bias"] + 1e-3
        return original(spec, weights)

    monkeypatch.setattr(exporter, "build_onnx", wrong)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_checkpoint(lstm_checkpoint, repository=tmp_path, name="m")
    assert _snapshot(tmp_path) == {}


def test_config_write_failure_rolls_back_the_version(lstm_checkpoint, tmp_path, monkeypatch):
    export_checkpoint(lstm_checkpoint, repository=tmp_path, name="m")
    before = _snapshot(tmp_path)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exporter, "write_config_atomic", fail)
    with pytest.raises(ExportError, match="No space left"):
        export_checkpoint(lstm_checkpoint, repository=tmp_path, name="m", version=1, force=True)
    assert _snapshot(tmp_path) == before
    assert not any(p.name.startswith(writer.STAGING_PREFIX) for p in (tmp_path / "m").iterdir())


def test_missing_data_file(lstm_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="--data .*nope.tsv"):
        export_checkpoint(
            lstm_checkpoint, repository=tmp_path / "r", name="m", data=str(tmp_path / "nope.tsv")
        )


def test_int8_without_recorded_training_data(lstm_checkpoint, tmp_path):
    """The random checkpoint's metrics.json has no training config: the user must pass --data."""
    with pytest.raises(ExportError, match="pass --data"):
        export_checkpoint(lstm_checkpoint, repository=tmp_path / "r", name="m", precision="int8")
    assert not (tmp_path / "r").exists() or _snapshot(tmp_path / "r") == {}


# ---------------------------------------------------------------- CLI


def _cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("export")(export_command)
    app.command("noop")(lambda: None)  # keep "export" a subcommand
    return app


def test_cli_success(lstm_checkpoint, tmp_path):
    result = CliRunner().invoke(
        _cli(), ["export", str(lstm_checkpoint), "--repository", str(tmp_path), "--name", "m"]
    )
    assert result.exit_code == 0, result.output
    assert "exported lstm (fp32)" in result.output
    assert (tmp_path / "m" / "1" / METADATA_FILE).is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--precision", "fp8"], "unknown precision"),
        (["--name", "../x"], "invalid model name"),
    ],
)
def test_cli_errors_are_one_line(lstm_checkpoint, tmp_path, extra, message):
    args = ["export", str(lstm_checkpoint), "--repository", str(tmp_path), "--name", "m", *extra]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.output


def test_cli_missing_checkpoint(tmp_path):
    result = CliRunner().invoke(
        _cli(), ["export", str(tmp_path / "none"), "--repository", str(tmp_path), "--name", "m"]
    )
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1


def test_written_files_are_readable_by_others(lstm_checkpoint, tmp_path):
    """Staging uses mkdtemp/mkstemp (0700/0600); published files get ordinary permissions."""
    import os

    umask = os.umask(0o022)
    try:
        version = export_checkpoint(lstm_checkpoint, repository=tmp_path, name="m")
    finally:
        os.umask(umask)
    assert version.stat().st_mode & 0o777 == 0o755
    assert (version.parent / CONFIG_FILE).stat().st_mode & 0o777 == 0o644
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in version.iterdir())
