"""``rnnserve search``: a tiny resumable search, its report, and argument errors.

One module-scoped search runs twice on the tiny synthetic dataset (``--trials 1`` then
``--trials 2``, tiny space, 2 epochs), which exercises a fresh search, resumption and the
report in one go; the remaining tests are pure functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from rnnserve.train.search import search_command
from rnnserve.train.search.sizes import model_parameters
from typer.testing import CliRunner

CELLS = ("lstm", "gru")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(search_command)
    return app


def _search(data: Path, out: Path, *extra: str):
    args = ["--data", str(data), "--out", str(out), "--space", "tiny", "--latency-top", "1",
            "--measure-seconds", "0.1", "--threads", "1", "--quiet", *extra]
    return CliRunner().invoke(_app(), args)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_dataset) -> dict:
    """Search dir after ``--trials 1`` and then ``--trials 2``, with both runs' results."""
    out = tmp_path_factory.mktemp("search") / "run"
    first = _search(tiny_dataset, out, "--trials", "1", "--no-measure-memory")
    assert first.exit_code == 0, first.output
    first_results = json.loads((out / "results.json").read_text())
    second = _search(tiny_dataset, out, "--trials", "2", "--test-data", str(tiny_dataset))
    assert second.exit_code == 0, second.output
    return {"out": out, "first": first_results,
            "second": json.loads((out / "results.json").read_text()), "data": tiny_dataset}


def _finished(counts: dict) -> int:
    return counts["complete"] + counts["pruned"]


def test_resume_runs_only_the_remainder(searched):
    first, second = searched["first"], searched["second"]
    for cell in CELLS:
        assert _finished(first["cells"][cell]["counts"]) == 1
        assert _finished(second["cells"][cell]["counts"]) == 2
        assert second["run"]["ran"][cell] == 1
        assert [t["number"] for t in second["cells"][cell]["trials"]] == [0, 1]
    history = second["run"]["history"]
    assert [(entry["ran"], entry["outcome"]) for entry in history] == [
        ({"lstm": 1, "gru": 1}, "complete"), ({"lstm": 1, "gru": 1}, "complete")]


def test_cells_are_interleaved_trial_by_trial(searched):
    import optuna

    storage = f"sqlite:///{searched['out'] / 'study.db'}"
    starts = sorted((t.datetime_start, cell, t.number) for cell in CELLS
                    for t in optuna.load_study(study_name=cell, storage=storage).trials)
    assert [(cell, number) for _, cell, number in starts] == [
        ("lstm", 0), ("gru", 0), ("lstm", 1), ("gru", 1)]


def test_report_files_and_keys(searched):
    out, results = searched["out"], searched["second"]
    report = (out / "report.md").read_text()
    for png in ("accuracy_vs_parameters.png", "validation_curves.png", "latency_vs_accuracy.png"):
        assert (out / png).read_bytes().startswith(PNG_MAGIC)
        assert f"]({png})" in report
    assert {"settings", "run", "data", "cells", "claims", "conclusion", "equal_size",
            "significance", "plots"} <= set(results)
    assert set(results["claims"]) == {"quarter_fewer_parameters", "faster_per_epoch",
                                      "similar_or_lower_loss"}
    for cell in CELLS:
        best = results["cells"][cell]["best"]
        assert {"trial", "params", "val_accuracy", "val_macro_f1", "val_loss", "parameters",
                "seconds_per_epoch", "seconds_to_best", "peak_memory_bytes", "curve",
                "latency", "exported"} <= set(best)
        assert 0.0 <= best["val_accuracy"] <= 1.0
        assert best["latency"]["engine"].startswith("onnxruntime")
        assert best["latency"]["batch1_median_ms"] > 0 and best["latency"]["throughput_per_s"] > 0
        assert best["exported"]["export_error"] is None
        assert best["test"]["examples"] == 600 and 0.0 <= best["test"]["accuracy"] <= 1.0
        memory = best["training_memory"]
        assert 0 < memory["training_bytes"] < memory["peak_bytes"]
        # the exported model scores what the trainer measured on the same validation split
        assert best["exported"]["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-9)
        assert f"{100 * best['val_accuracy']:.2f} %" in report
    assert results["conclusion"] and all(line in report for line in results["conclusion"])
    assert "rnnserve search --data" in report and "--trials 2" in report
    assert "| test accuracy / macro-F1 |" in report


def test_best_checkpoints_are_exportable(searched, tmp_path):
    from rnnserve.export.exporter import export_checkpoint
    from rnnserve.train.checkpoint import CHECKPOINT_FILES, load_checkpoint, read_metrics

    out, results = searched["out"], searched["second"]
    recorded = json.loads((out / "best.json").read_text())
    for cell in CELLS:
        checkpoint = out / f"best-{cell}"
        assert all((checkpoint / name).is_file() for name in CHECKPOINT_FILES)
        _, spec, _ = load_checkpoint(checkpoint)
        best = results["cells"][cell]["best"]
        assert spec.cell == cell and spec.hidden == best["params"]["hidden"]
        assert recorded[cell] == best["trial"]
        assert read_metrics(checkpoint)["best_val_accuracy"] == pytest.approx(best["val_accuracy"])
        version = export_checkpoint(checkpoint, repository=tmp_path, name=f"best-{cell}")
        assert (Path(version) / "model.onnx").is_file()


def test_trials_train_with_the_spaces_fixed_recipe(searched):
    from rnnserve.train.checkpoint import read_metrics
    from rnnserve.train.search.settings import TINY

    for cell in CELLS:
        metrics = read_metrics(searched["out"] / f"best-{cell}")
        assert metrics["config"]["adversarial_eps"] == TINY.adversarial_eps
        assert len(metrics["lm_pretraining"]) == TINY.lm_pretrain_epochs > 0
    report = (searched["out"] / "report.md").read_text()
    assert "every trial: 1 epoch(s) of language-model pretraining, no adversarial training" in report
    assert "its 1 LM pretraining epoch(s) included" in report  # in CPU time per epoch
    assert "(CPU: the trial's, LM pretraining included, per epoch run)" in report


def test_trial_pairs_are_timed_by_wall_clock_when_cpu_includes_pretraining(searched):
    """A pruned trial's CPU time per epoch carries more of its LM pretraining than a
    completed one's, so search-trial pairs compare wall time per epoch instead."""
    from rnnserve.train.search.verdicts import judge_claims

    rows = judge_claims(searched["second"])["faster_per_epoch"]["rows"]
    assert {row["basis"] for row in rows if row["controlled"]} == {"cpu"}
    assert {row["basis"] for row in rows if not row["controlled"]} == {"wall"}  # pairs exist:
    # a cell's k-th start-up trial draws the same configuration for both cells


def test_default_space_trains_with_the_trainers_recipe():
    """The SST-2 space searches model sizes under the trainer's defaults, not other ones."""
    from rnnserve.train.config import TrainConfig
    from rnnserve.train.search.settings import DEFAULT

    config = TrainConfig(out="x")
    assert (DEFAULT.vocab_size, DEFAULT.adversarial_eps, DEFAULT.lm_pretrain_epochs) == (
        config.vocab_size, config.adversarial_eps, config.effective_lm_pretrain_epochs)


def test_changed_settings_are_refused(searched):
    result = _search(searched["data"], searched["out"], "--trials", "2", "--epochs", "1")
    assert result.exit_code == 2
    assert "other settings" in result.output and "epochs" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cells", "lstm,rnn"], "unknown cell"),
        (["--cells", "gru,gru"], "twice"),
        (["--trials", "0"], "--trials"),
        (["--epochs", "0"], "--epochs"),
        (["--space", "huge"], "unknown search space"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, tiny_dataset, args, message):
    result = CliRunner().invoke(
        _app(), ["--data", str(tiny_dataset), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o" / "study.db").exists()


def test_missing_data_is_one_line_error(tmp_path):
    result = _search(tmp_path / "nope.tsv", tmp_path / "o", "--trials", "1")
    assert result.exit_code == 2
    assert "nope.tsv" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o" / "search.json").exists()  # fixing --data and re-running works


def test_interrupted_trial_is_failed_and_not_counted(tmp_path):
    from optuna.trial import TrialState
    from rnnserve.train.search.settings import SearchConfig
    from rnnserve.train.search.study import _finished, _open_study

    config = SearchConfig(data="unused", out=tmp_path, space="tiny", trials=1)
    study = _open_study(tmp_path, "gru", config)
    study.ask()  # a trial a killed run left RUNNING
    study = _open_study(tmp_path, "gru", config)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert _finished(study) == 0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("embed", "hidden", "layers", "bidirectional"),
                         [(8, 16, 1, False), (16, 8, 3, False), (5, 7, 2, True)])
def test_parameter_formula_matches_torch(cell, embed, hidden, layers, bidirectional):
    from rnnserve.train.model import SentimentRNN, count_parameters

    model = SentimentRNN(cell, 50, embed, hidden, layers, 0.1, bidirectional, 3)
    breakdown = model_parameters(cell, vocab_size=50, embed_dim=embed, hidden=hidden,
                                 layers=layers, bidirectional=bidirectional, num_labels=3)
    assert breakdown.total == count_parameters(model)
    assert breakdown.recurrent == sum(p.numel() for p in model.rnn.parameters())
    lstm = model_parameters("lstm", vocab_size=50, embed_dim=embed, hidden=hidden, layers=layers,
                            bidirectional=bidirectional, num_labels=3)
    gru = model_parameters("gru", vocab_size=50, embed_dim=embed, hidden=hidden, layers=layers,
                           bidirectional=bidirectional, num_labels=3)
    assert gru.recurrent * 4 == lstm.recurrent * 3


def test_mcnemar_exact():
    from rnnserve.train.search.measure import mcnemar_exact

    truth = [1] * 12
    assert mcnemar_exact(truth, truth, truth)["p_value"] == 1.0
    first, second = [1] * 12, [1, 1] + [0] * 10  # first alone right on 10 examples
    result = mcnemar_exact(truth, first, second)
    assert (result["first_only_correct"], result["second_only_correct"]) == (10, 0)
    assert result["p_value"] == pytest.approx(2 / 2**10)


def _fake_results(lstm_acc: float, gru_acc: float) -> dict:
    def best(cell, acc, params, loss, seconds):
        return {"trial": 3, "params": {"embed_dim": 8, "hidden": 16 if cell == "lstm" else 20,
                                       "layers": 1}, "val_accuracy": acc, "val_macro_f1": acc,
                "val_loss": loss, "parameters": params, "seconds_per_epoch": seconds,
                "seconds_to_best": 2 * seconds, "test": None,
                "latency": {"engine": "onnxruntime (x)", "batch1_median_ms": 1.0 if cell == "gru"
                            else 2.0, "throughput_per_s": 100.0, "batch_size": 32}}

    sizes = {"embed_dim": 8, "hidden": 16, "layers": 1, "batch_size": 32}
    parts = {c: model_parameters(c, vocab_size=100, embed_dim=8, hidden=16, layers=1).as_dict()
             for c in CELLS}
    speed = {"lstm": {"seconds_per_epoch": 10.0, "cpu_seconds_per_epoch": 9.0,
                      "final_loss": 0.50, "steps_measured": 60},
             "gru": {"seconds_per_epoch": 11.0, "cpu_seconds_per_epoch": 7.0,
                     "final_loss": 0.49, "steps_measured": 60}}
    counts = {"complete": 10, "pruned": 2, "failed": 0}
    return {
        "settings": {"epochs": 3},
        "cells": {"lstm": {"counts": counts, "best": best("lstm", lstm_acc, 4000, 0.40, 10.0)},
                  "gru": {"counts": counts, "best": best("gru", gru_acc, 3000, 0.41, 8.0)}},
        "equal_size": [{"from": "best LSTM (trial 3)", "sizes": sizes, "parameters": parts,
                        "speed": speed}],
        "matched_pairs": [{"identical_hyperparameters": True, "lstm_trial": 0, "gru_trial": 0,
                           "sizes": sizes, "lstm_seconds_per_epoch": 10.0,
                           "gru_seconds_per_epoch": 9.0, "lstm_state": "COMPLETE",
                           "gru_state": "COMPLETE", "lstm_val_accuracy": 0.80,
                           "gru_val_accuracy": 0.83, "lstm_val_loss": 0.45,
                           "gru_val_loss": 0.60}],
        "significance": {"examples": 872, "p_value": 0.2},
    }


def test_conclusion_and_claims_are_computed_from_numbers():
    from rnnserve.train.search.verdicts import conclude, judge_claims

    results = _fake_results(0.85, 0.80)
    lines = dict(line.split(": ", 1) for line in conclude(results))
    assert lines["Budget"].startswith("LSTM 12 trials (10 completed, 2 pruned)")
    assert "LSTM wins on validation accuracy, 85.0 % vs 80.0 % (+5.0 points" in lines["Accuracy"]
    assert "p = 0.2, not significant" in lines["Accuracy"]
    assert "GRU was more accurate in 1, less accurate in 0; mean difference +3.0" in lines["Paired"]
    assert "the best GRU is smaller" in lines["Size"] and "25.0 % fewer" in lines["Size"]
    assert "different sizes" in lines["Size"]
    assert "GRU answers a single text faster" in lines["Speed"] and "(2.00x)" in lines["Speed"]
    assert lines["Training"].startswith("an epoch of the best GRU costs 8.0 s of wall time vs "
                                        "10.0 s for the best LSTM (1.25x)")
    claims = judge_claims(results)
    speed = claims["faster_per_epoch"]
    assert speed["verdict"] == "holds"  # CPU 7 s vs 9 s decides (wall 11 vs 10 is load noise)
    assert speed["rows"][0]["basis"] == "cpu" and speed["rows"][1]["basis"] == "wall"
    # 0.49 vs 0.50 (same sizes) is similar, but 0.60 vs 0.45 at identical settings is not
    assert claims["similar_or_lower_loss"]["verdict"] == "mixed"
    parameters = claims["quarter_fewer_parameters"]
    assert parameters["rows"][0]["recurrent_fewer"] == pytest.approx(0.25)
    assert parameters["verdict"] == "holds only for the recurrent layers"  # embedding dominates

    flipped = _fake_results(0.70, 0.90)
    flipped["matched_pairs"] = []
    assert "GRU wins on validation accuracy, 90.0 % vs 70.0 % (+20.0 points" in conclude(flipped)[1]
    loss = judge_claims(flipped)["similar_or_lower_loss"]
    assert loss["verdict"] == "holds"  # only the similar equal-size row is controlled
    assert "GRU 0.4100 vs LSTM 0.4000 nats (2.5 % higher)" in loss["summary"]  # context


def test_report_can_be_regenerated_from_results_json(searched, tmp_path):
    from rnnserve.train.report import rewrite_report

    report = rewrite_report(searched["out"] / "results.json", tmp_path, label="Example run.")
    text = report.read_text()
    assert text.splitlines()[2] == "> Example run."
    assert all(line in text for line in searched["second"]["conclusion"])
    assert (tmp_path / "validation_curves.png").read_bytes().startswith(PNG_MAGIC)


def test_sigterm_fails_the_running_trial_and_records_history(tmp_path, tiny_dataset, monkeypatch):
    import os
    import signal

    import optuna
    from optuna.trial import TrialState
    from rnnserve.train import trainer

    def terminated(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or a container stop sends
        raise AssertionError("SIGTERM should have interrupted training")

    monkeypatch.setattr(trainer, "train", terminated)
    previous = signal.getsignal(signal.SIGTERM)
    result = _search(tiny_dataset, tmp_path, "--trials", "1")
    assert signal.getsignal(signal.SIGTERM) is previous
    assert result.exit_code == 130 and "resume" in result.output
    study = optuna.load_study(study_name="lstm", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[0]["outcome"] == "interrupted (KeyboardInterrupt)"
    assert not (tmp_path / "trials" / "lstm-000").exists()


def _package_imports() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """(module -> search modules it imports at module level, (module, target) imported inside
    a function) for the modules of rnnserve.train.search and rnnserve.train.report."""
    import ast

    import rnnserve.train.report
    import rnnserve.train.search

    package = Path(rnnserve.train.search.__file__).parent
    files = {path.stem: path for path in package.glob("*.py")}
    files["report"] = Path(rnnserve.train.report.__file__)
    prefix = "rnnserve.train.search"

    def targets(node) -> set[str]:
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names])
        found = {name.removeprefix(prefix + ".").split(".")[0]
                 for name in names if name.startswith(prefix + ".")}
        if any(name == "rnnserve.train.report" for name in names):
            found.add("report")
        return found & set(files)

    top, nested = {}, set()
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        top[module] = set().union(*(targets(node) for node in tree.body
                                    if isinstance(node, ast.Import | ast.ImportFrom)))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        nested |= {(module, target) for target in targets(inner)}
    return top, nested


def test_search_modules_import_in_one_direction():
    from graphlib import TopologicalSorter

    top, nested = _package_imports()
    # the one deferred import: the CLI loads the search machinery only when a search runs
    assert nested == {("command", "study")}
    for module, target in nested:
        top[module].add(target)
    order = list(TopologicalSorter(top).static_order())  # CycleError on an import cycle
    assert order.index("settings") < order.index("study") < order.index("command")


def test_the_cli_part_loads_no_heavy_dependency():
    import subprocess
    import sys

    code = ("import sys, rnnserve.train.search; print(sorted(m for m in ('numpy', 'torch', "
            "'optuna', 'matplotlib', 'rnnserve.train.search.study') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
