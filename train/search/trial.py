"""One Optuna trial = one ``rnnserve.train.trainer.train`` call with sampled hyperparameters.

Invariants
----------
* Data, split and tokenizer are prepared once per search run (``prepare``) and shared by every
  trial of every cell, so trials differ only in the sampled hyperparameters and the cell.
* A trial reports validation accuracy to Optuna after every epoch (step = epoch) and records
  its per-epoch metrics in the user attribute ``curve`` as it goes, so a pruned trial keeps
  its curve. ``TrialPruned`` is raised from the trainer's ``on_epoch`` hook, never after the
  last epoch.
* A completed trial's checkpoint is ``trials/<cell>-NNN/``; a pruned or failed trial leaves
  no directory behind.
* Peak memory is per trial: the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``)
  before training, so the trainer's ``ru_maxrss`` reading covers this trial only. Where that
  reset is impossible the value is cumulative and the trial says so (``memory_scope``).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rnnserve.train import trainer
from rnnserve.train.config import TrainConfig
from rnnserve.train.data import DataError
from rnnserve.train.search.measure import reset_peak_rss, rss_bytes
from rnnserve.train.search.settings import SearchConfig, SearchError, trial_dir
from rnnserve.train.search.sizes import size_of


@dataclass
class Prepared:
    """The shared data of a search run (``PreparedData`` from the trainer) and its source."""

    data: trainer.PreparedData
    base: TrainConfig  # the data options every trial shares

    @property
    def num_labels(self) -> int:
        return len(self.data.splits.label_names)

    @property
    def vocab_size(self) -> int:
        """The embedding size of every trial's model (the trained tokenizer's size)."""
        return self.data.tokenizer.get_vocab_size(with_added_tokens=True)


def prepare(config: SearchConfig) -> Prepared:
    """Load the data, split or pair it with ``val_data``, train the tokenizer, encode."""
    space = config.search_space
    base = TrainConfig(
        data=config.data, val_data=config.val_data, out=Path(config.out) / "trials",
        vocab_size=space.vocab_size, epochs=config.effective_epochs, seed=config.seed,
        adversarial_eps=space.adversarial_eps, lm_pretrain_epochs=space.lm_pretrain_epochs,
        num_threads=config.threads, progress=False,
    )
    try:
        return Prepared(trainer.prepare_data(base), base)
    except DataError as error:
        raise SearchError(str(error)) from None


def train_config(prepared: Prepared, cell: str, params: dict[str, Any], out: Path) -> TrainConfig:
    """The trainer config of one trial: shared data options + sampled hyperparameters."""
    return prepared.base.model_copy(update={"cell": cell, "out": out, **params})


def run_trial(study, cell: str, config: SearchConfig, prepared: Prepared, out: Path) -> None:
    """Ask ``study`` for a trial, train it, tell the result (COMPLETE, PRUNED or FAIL)."""
    trial = study.ask()
    params = config.search_space.suggest(trial)
    directory = trial_dir(out, cell, trial.number)
    sizes = size_of(cell, params, prepared.vocab_size, prepared.num_labels)
    trial.set_user_attr("parameters", sizes["total"])
    trial.set_user_attr("parameter_breakdown", sizes)
    epochs = config.effective_epochs
    curve: list[dict[str, float]] = []

    def on_epoch(epoch: int, metrics) -> None:
        curve.append(metrics.model_dump())
        trial.set_user_attr("curve", curve)
        trial.report(metrics.val_accuracy, step=epoch)
        if epoch < epochs and trial.should_prune():
            raise optuna.TrialPruned(f"validation accuracy {metrics.val_accuracy:.4f} at epoch {epoch}")

    memory_scope = "trial" if reset_peak_rss() else "process (cumulative)"
    trial.set_user_attr("memory_scope", memory_scope)
    trial.set_user_attr("rss_before_bytes", rss_bytes())
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        result = trainer.train(train_config(prepared, cell, params, directory),
                       dataset=prepared.data, on_epoch=on_epoch)
    except optuna.TrialPruned:
        shutil.rmtree(directory, ignore_errors=True)
        trial.set_user_attr("wall_seconds", time.perf_counter() - started)
        trial.set_user_attr("cpu_seconds", time.process_time() - cpu_started)
        study.tell(trial, state=TrialState.PRUNED)
        _say(config, cell, trial.number, "pruned", curve, sizes["total"], started)
        return
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        study.tell(trial, state=TrialState.FAIL)
        raise
    if result.parameters != sizes["total"]:  # the exact formula must agree with torch
        study.tell(trial, state=TrialState.FAIL)
        raise SearchError(f"parameter formula gives {sizes['total']}, the model has {result.parameters}")
    trial.set_user_attr("wall_seconds", time.perf_counter() - started)
    trial.set_user_attr("cpu_seconds", time.process_time() - cpu_started)
    trial.set_user_attr("checkpoint_dir", str(result.checkpoint_dir))
    trial.set_user_attr("best_epoch", result.best_epoch)
    trial.set_user_attr("best_val_macro_f1", result.best_val_macro_f1)
    trial.set_user_attr("seconds_per_epoch", result.seconds_per_epoch)
    trial.set_user_attr("peak_memory_bytes", result.peak_memory_bytes)
    trial.set_user_attr("peak_memory_source", f"{result.peak_memory_source}, {memory_scope}")
    study.tell(trial, result.best_val_accuracy)
    _say(config, cell, trial.number, "complete", curve, sizes["total"], started)


def _say(config: SearchConfig, cell: str, number: int, state: str, curve: list, parameters: int,
         started: float) -> None:
    if not config.progress:
        return
    best = max((point["val_accuracy"] for point in curve), default=math.nan)
    print(f"[{cell} trial {number}] {state} after {len(curve)} epoch(s): best val acc {best:.4f}, "
          f"{parameters:,} parameters, {time.perf_counter() - started:.0f} s", flush=True)
