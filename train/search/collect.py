"""Gather a finished search into the ``results`` dict that ``rnnserve.train.report`` renders.

Invariants
----------
* Only stored facts and fresh measurements go in: trial results come from ``study.db``;
  latency, re-scored accuracy, test accuracy and the equal-size training benchmark are
  measured here, on the best checkpoints in ``best-<cell>/`` and the top trials' checkpoints.
* Every best model is exported with ``rnnserve.export.exporter.export_checkpoint`` (fp32)
  into ``<out>/onnx/`` and measured with ONNX Runtime; if the export fails, the torch module
  is measured instead and the engine label and ``export_error`` say so.
* Both cells are measured with the same texts, threads and procedure.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from optuna.trial import TrialState
from rnnserve.train.data import DataError, load_labelled_texts
from rnnserve.train.search.measure import (
    mcnemar_exact,
    measure_latencies,
    measure_training_memory,
    onnx_runner,
    quality,
    torch_runner,
    training_speed_at_equal_size,
)
from rnnserve.train.search.settings import (
    ONNX_DIR,
    PRUNER_STARTUP_TRIALS,
    TPE_STARTUP_TRIALS,
    SearchConfig,
    SearchError,
    best_dir,
    trial_dir,
)
from rnnserve.train.search.sizes import size_of

SIZE_KEYS = ("embed_dim", "hidden", "layers", "batch_size")


def collect(config: SearchConfig, studies: dict[str, Any], prepared, out: Path, *,
            ran: dict[str, int], started: float, timed_out: bool,
            history: list[dict[str, Any]], load_average_start: float | None = None,
            ) -> dict[str, Any]:
    """Build the results dict (see ``rnnserve.train.report``) for ``studies``; ``history`` is
    history.json's entries (one per invocation on ``out``)."""
    splits = prepared.data.splits
    cells = {cell: _cell_results(cell, study, prepared, out) for cell, study in studies.items()}
    val_texts, val_labels = splits.validation.texts, splits.validation.labels
    test = _load_test(config, splits.label_names)
    runners, measured = {}, {}
    for cell, data in cells.items():
        for entry in _measured_trials(data, config.latency_top):
            is_best = data["best"] is not None and entry["number"] == data["best"]["trial"]
            checkpoint = best_dir(out, cell) if is_best else trial_dir(out, cell, entry["number"])
            key = f"{cell}-trial-{entry['number']}"
            runners[key] = _runner(checkpoint, out, key, config.measure_threads)
            measured[key] = (cell, entry, is_best)
    latencies = measure_latencies({key: runner for key, (runner, _) in runners.items()},
                                  val_texts, min_seconds=config.measure_seconds)
    predictions = {}
    for key, (cell, entry, is_best) in measured.items():
        entry["latency"] = latencies[key].as_dict()
        if not is_best:
            continue
        runner, export_error = runners[key]
        scored = quality(runner, val_texts, val_labels, prepared.num_labels)
        predictions[cell] = scored.predictions
        best = cells[cell]["best"]
        best["latency"] = entry["latency"]
        best["exported"] = {"engine": runner.label, "val_accuracy": scored.accuracy,
                            "val_macro_f1": scored.macro_f1, "export_error": export_error}
        if test is not None:
            tq = quality(runner, test.texts, test.labels, prepared.num_labels)
            best["test"] = {"accuracy": tq.accuracy, "macro_f1": tq.macro_f1,
                            "examples": tq.examples, "engine": runner.label}

    if config.measure_memory:
        _measure_memory(cells, prepared, config)
    significance = None
    if len(predictions) == 2:
        (first, a), (second, b) = predictions.items()
        significance = {"first": first, "second": second, "examples": len(val_labels),
                        **mcnemar_exact(val_labels, a, b)}

    space = config.search_space
    return {
        "format_version": 1,
        "label": "",
        "command": config.as_command(),
        "settings": {
            "data": config.data, "val_data": config.val_data, "test_data": config.test_data,
            "cells": list(config.cells), "trials": config.trials, "epochs": config.effective_epochs,
            "seed": config.seed, "space": space.as_dict(),
            "sampler": f"TPESampler(seed={config.seed} + finished trials of the cell, "
                       f"n_startup_trials={TPE_STARTUP_TRIALS})",
            "pruner": f"MedianPruner(n_startup_trials={PRUNER_STARTUP_TRIALS}, n_warmup_steps=0) "
                      f"on validation accuracy after each epoch except the last",
            "latency_top": config.latency_top, "measure_threads": config.measure_threads,
        },
        "data": {
            "train_examples": len(splits.train), "val_examples": len(splits.validation),
            "val_source": (f"`{config.val_data}`" if config.val_data
                           else f"a {prepared.base.val_fraction:.0%} split of the training data"),
            "test_source": config.test_data, "test_examples": len(test) if test else 0,
            "labels": list(splits.label_names), "vocab_size": prepared.vocab_size,
        },
        "run": {
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "wall_seconds": time.time() - started, "timed_out": timed_out, "ran": ran,
            "process_cpu_seconds": time.process_time(),
            "history": history,
            "trial_seconds_total": sum(t.get("wall_seconds") or 0.0
                                       for c in cells.values() for t in c["trials"]),
            "trial_cpu_seconds_total": sum(t.get("cpu_seconds") or 0.0
                                           for c in cells.values() for t in c["trials"]),
            "cpu_count": os.cpu_count(), "training_threads": config.threads or torch.get_num_threads(),
            "load_average_start": load_average_start if load_average_start is not None
            else os.getloadavg()[0],
            "load_average_end": os.getloadavg()[0],
        },
        "code": _code_version(),
        "cells": cells,
        "significance": significance,
        "equal_size": _equal_size(cells, prepared, config),
        "matched_pairs": _matched_pairs(cells),
    }


def _code_version() -> dict[str, str | None]:
    """The git commit (``+dirty`` with local changes) and a digest of the training code."""
    root = Path(__file__).resolve().parents[1]  # train/
    digest = hashlib.sha256()
    for name in ("trainer.py", "config.py", "model.py", "batching.py", "tokenizer.py",
                 "schedule.py", "pretrain.py"):
        path = root / name
        if path.exists():
            digest.update(path.read_bytes())
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"git": commit, "training_code_sha256": digest.hexdigest()[:16]}


def _cell_results(cell: str, study, prepared, out: Path) -> dict[str, Any]:
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
              "failed": TrialState.FAIL}
    counts = {key: len(study.get_trials(deepcopy=False, states=(state,)))
              for key, state in states.items()}
    trials = [_trial_entry(cell, t, prepared)
              for t in study.get_trials(deepcopy=False,
                                        states=(TrialState.COMPLETE, TrialState.PRUNED))]
    best = None
    if counts["complete"]:
        frozen = study.best_trial
        entry = next(t for t in trials if t["number"] == frozen.number)
        curve = frozen.user_attrs.get("curve", [])
        best_epoch = int(frozen.user_attrs["best_epoch"])
        at_best = next((p for p in curve if p["epoch"] == best_epoch), {})
        best = {
            "trial": frozen.number, "params": entry["params"], "val_accuracy": frozen.value,
            "val_macro_f1": frozen.user_attrs.get("best_val_macro_f1"),
            "val_loss": at_best.get("val_loss"), "best_epoch": best_epoch,
            "epochs_run": len(curve), "parameters": entry["parameters"],
            "parameter_breakdown": size_of(cell, entry["params"], prepared.vocab_size,
                                           prepared.num_labels),
            "seconds_per_epoch": frozen.user_attrs.get("seconds_per_epoch"),
            "cpu_seconds_per_epoch": entry["cpu_seconds_per_epoch"],
            "seconds_to_best": sum(p["seconds"] for p in curve if p["epoch"] <= best_epoch),
            "peak_memory_bytes": frozen.user_attrs.get("peak_memory_bytes"),
            "peak_memory_source": frozen.user_attrs.get("peak_memory_source"),
            "rss_before_bytes": frozen.user_attrs.get("rss_before_bytes"),
            "checkpoint": str(best_dir(out, cell)), "curve": curve,
            "exported": None, "test": None, "latency": None, "training_memory": None,
        }
    return {"counts": counts, "best": best, "trials": trials}


def _trial_entry(cell: str, trial, prepared) -> dict[str, Any]:
    curve = trial.user_attrs.get("curve", [])
    seconds = [p["seconds"] for p in curve]
    accuracy = trial.value if trial.value is not None else max(
        (p["val_accuracy"] for p in curve), default=None)
    best_point = max(curve, key=lambda p: p["val_accuracy"], default={})
    return {
        "number": trial.number, "state": trial.state.name, "params": dict(trial.params),
        "val_loss": best_point.get("val_loss"),
        "parameters": trial.user_attrs.get("parameters") or size_of(
            cell, trial.params, prepared.vocab_size, prepared.num_labels)["total"],
        "val_accuracy": accuracy, "epochs_run": len(curve),
        "seconds_per_epoch": statistics.fmean(seconds) if seconds else None,
        "wall_seconds": trial.user_attrs.get("wall_seconds"),
        "cpu_seconds": trial.user_attrs.get("cpu_seconds"),
        "cpu_seconds_per_epoch": (trial.user_attrs["cpu_seconds"] / len(curve)
                                  if curve and trial.user_attrs.get("cpu_seconds") else None),
        "latency": None,
    }


def _measured_trials(data: dict, top: int) -> list[dict]:
    """The best trial plus the next best completed ones, ``top`` in all."""
    complete = [t for t in data["trials"] if t["state"] == "COMPLETE"]
    return sorted(complete, key=lambda t: -t["val_accuracy"])[:top]


def _runner(checkpoint: Path, out: Path, name: str, threads: int):
    """(runner, export error or None): ORT on a fresh fp32 export, else torch eager."""
    try:  # export needs the ONNX tooling; without it the torch module is measured
        from rnnserve.export.exporter import export_checkpoint

        version = export_checkpoint(checkpoint, repository=out / ONNX_DIR, name=name,
                                    version=1, force=True)
        return onnx_runner(Path(version), checkpoint, threads=threads), None
    except (ImportError, ValueError, RuntimeError, OSError) as error:  # measure torch, say why
        return torch_runner(checkpoint, threads=threads), f"{type(error).__name__}: {error}"


def _load_test(config: SearchConfig, label_names: list[str]):
    if not config.test_data:
        return None
    try:
        return load_labelled_texts(config.test_data, labels=label_names)
    except DataError as error:
        raise SearchError(str(error)) from None


def _equal_size(cells: dict, prepared, config: SearchConfig) -> list[dict]:
    """Both cells trained side by side at each best model's sizes."""
    if len(cells) < 2:
        return []
    entries = []
    for cell, data in cells.items():
        best = data["best"]
        if best is None:
            continue
        sizes = best["params"]
        twin = next((e for e in entries if e["sizes"] == sizes), None)
        if twin is not None:  # both winners have the same hyperparameters: measure once
            twin["from"] += f" = best {cell.upper()} (trial {best['trial']})"
            continue
        speed = training_speed_at_equal_size(
            sizes, prepared.data.train_ids, prepared.data.splits.train.labels,
            cells=tuple(cells), vocab_size=prepared.vocab_size,
            num_labels=prepared.num_labels, seed=config.seed, threads=config.threads,
        )
        entries.append({
            "from": f"best {cell.upper()} (trial {best['trial']})", "sizes": dict(sizes),
            "parameters": {c: size_of(c, sizes, prepared.vocab_size, prepared.num_labels)
                           for c in cells},
            "speed": {c: s.as_dict() for c, s in speed.items()},
        })
    return entries


def _measure_memory(cells: dict, prepared, config: SearchConfig) -> None:
    """Fresh-process training memory of each best model (see ``measure``)."""
    for cell, data in cells.items():
        if data["best"] is not None:
            data["best"]["training_memory"] = measure_training_memory(
                cell, data["best"]["params"], prepared.data.train_ids,
                prepared.data.splits.train.labels, vocab_size=prepared.vocab_size,
                num_labels=prepared.num_labels, threads=config.threads or 1,
            )


def _matched_pairs(cells: dict) -> list[dict]:
    """Search trials of the two cells with identical embed/hidden/layers/batch sizes."""
    if set(cells) != {"lstm", "gru"}:
        return []
    pairs, used = [], set()
    for lstm in cells["lstm"]["trials"]:
        key = tuple(lstm["params"][k] for k in SIZE_KEYS)
        for gru in cells["gru"]["trials"]:
            if gru["number"] in used or tuple(gru["params"][k] for k in SIZE_KEYS) != key:
                continue
            if lstm["seconds_per_epoch"] and gru["seconds_per_epoch"]:
                used.add(gru["number"])
                pairs.append({"sizes": dict(zip(SIZE_KEYS, key, strict=True)),
                              "identical_hyperparameters": lstm["params"] == gru["params"],
                              "lstm_trial": lstm["number"], "gru_trial": gru["number"],
                              "lstm_seconds_per_epoch": lstm["seconds_per_epoch"],
                              "gru_seconds_per_epoch": gru["seconds_per_epoch"],
                              "lstm_cpu_seconds_per_epoch": lstm["cpu_seconds_per_epoch"],
                              "gru_cpu_seconds_per_epoch": gru["cpu_seconds_per_epoch"],
                              **{f"{cell}_{field}": trial[field]
                                 for cell, trial in (("lstm", lstm), ("gru", gru))
                                 for field in ("state", "val_accuracy", "val_loss")}})
                break
    return pairs
