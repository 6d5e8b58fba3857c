"""``rnnserve train`` / ``rnnserve evaluate`` command functions, driven through typer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from rnnserve.train.commands import evaluate_command, parse_cells, train_command
from typer.testing import CliRunner

TINY = ["--embed-dim", "8", "--hidden", "8", "--layers", "1", "--epochs", "1",
        "--vocab-size", "200", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    return app


def test_parse_cells():
    assert parse_cells("both") == ["lstm", "gru"]
    assert parse_cells("gru, lstm,gru") == ["gru", "lstm"]
    assert parse_cells("LSTM") == ["lstm"]
    with pytest.raises(typer.BadParameter):
        parse_cells("rnn")


def test_importing_the_commands_does_not_load_torch():
    code = "import sys, rnnserve.train.commands; print('torch' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "False"


def test_train_both_cells_then_evaluate(cli, tiny_dataset, tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        cli, ["train", "--cell", "lstm,gru", "--data", str(tiny_dataset), "--out", str(out), *TINY]
    )
    assert result.exit_code == 0, result.output
    assert "lstm: best val accuracy" in result.output and "gru: best val accuracy" in result.output
    for cell in ("lstm", "gru"):
        assert json.loads((out / cell / "config.json").read_text())["cell"] == cell
    # Both cells share one tokenizer (one data preparation).
    assert (out / "lstm" / "tokenizer.json").read_text() == (out / "gru" / "tokenizer.json").read_text()

    report = tmp_path / "eval.json"
    result = CliRunner().invoke(
        cli, ["evaluate", str(out / "gru"), "--data", str(tiny_dataset), "--output", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["examples"] == 600
    assert "confusion matrix" in result.output


def test_single_cell_writes_to_out_itself(cli, tiny_dataset, tmp_path):
    result = CliRunner().invoke(
        cli, ["train", "--cell", "gru", "--data", str(tiny_dataset), "--out", str(tmp_path / "c"), *TINY]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "model.safetensors").is_file()


def test_bad_data_is_a_one_line_error(cli, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\nfine\t0\n\t1\n")
    result = CliRunner().invoke(cli, ["train", "--data", str(bad), "--out", str(tmp_path / "o"), *TINY])
    assert result.exit_code == 2
    assert f"error: {bad}:3: empty text" in result.output
    assert "Traceback" not in result.output


def test_bad_option_and_bad_checkpoint(cli, tiny_dataset, tmp_path):
    result = CliRunner().invoke(
        cli, ["train", "--data", str(tiny_dataset), "--out", str(tmp_path), "--device", "tpu", *TINY]
    )
    assert result.exit_code == 2 and "--device" in result.output
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "none"), "--data", str(tiny_dataset)])
    assert result.exit_code == 2 and "checkpoint directory does not exist" in result.output
