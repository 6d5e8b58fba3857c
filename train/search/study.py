"""Runs a search: one persistent Optuna study per cell, trials interleaved, then the report.

``run_search`` is the top of the package: it prepares the data and runs trials
(``trial``), gathers the results (``collect``) and renders them (``rnnserve.train.report``).
The files it keeps in ``<out>`` are listed in ``settings``.

Invariants
----------
* Budget: a cell is done when its study holds ``trials`` COMPLETE + PRUNED trials. Trials
  left RUNNING by an interrupted run are marked FAIL on the next start and not counted, so a
  re-run of the same command runs exactly the remainder.
* Balance: cells take turns one trial at a time, so an interruption leaves their finished
  counts differing by at most one.
* Reproducibility: the configuration of a cell's ``k``-th finished trial is drawn by a fresh
  TPE sampler seeded with ``seed + k``, so a resumed search draws what an uninterrupted one
  would have (an interrupted trial's configuration is drawn again), never replays earlier
  random start-up draws, and the ``k``-th trial of every cell gets the same configuration
  while TPE is still in its random start-up phase (matched sizes: a direct LSTM/GRU
  comparison inside the search).
* One process per ``<out>``: an exclusive lock file guards the directory.
* Ctrl-C or SIGTERM during the trials marks the running trial FAIL (it is drawn again on
  resume), keeps ``best-<cell>/`` consistent and records the invocation in ``history.json``.
* Pruning: ``MedianPruner`` on validation accuracy, reported once per epoch (step = epoch,
  1-based); never after the last epoch, so a trial that trained all epochs is COMPLETE.
* Each trial records its curve (per-epoch metrics) and size in its user attributes while it
  runs, so pruned trials appear in the report too.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rnnserve.train.report import write_report
from rnnserve.train.search.collect import collect
from rnnserve.train.search.settings import (
    BEST_FILE,
    HISTORY_FILE,
    LOCK_FILE,
    PRUNER_STARTUP_TRIALS,
    SETTINGS_FILE,
    STUDY_FILE,
    TPE_STARTUP_TRIALS,
    SearchConfig,
    SearchError,
    best_dir,
    trial_dir,
)
from rnnserve.train.search.trial import prepare, run_trial


@dataclass
class SearchOutcome:
    """What a run did and where the report is."""

    out: Path
    report: Path
    results: dict[str, Any]
    ran: dict[str, int]  # cell -> trials started by this run
    finished: dict[str, int]  # cell -> COMPLETE + PRUNED in the study after this run
    timed_out: bool


def run_search(config: SearchConfig) -> SearchOutcome:
    """Run or resume the studies, then measure the best models and write the report."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_average_start = os.getloadavg()[0]
    with _exclusive(out):
        _check_settings(out, config)
        prepared = prepare(config)  # bad data fails here, before anything is written
        _store_settings(out, config)
        studies = {cell: _open_study(out, cell, config) for cell in config.cells}
        ran = dict.fromkeys(config.cells, 0)
        deadline = None if config.timeout is None else started + config.timeout
        timed_out, outcome = False, "interrupted"
        try:
            with _terminate_as_interrupt():
                for cell in _turns(studies, config.trials):
                    if deadline is not None and time.time() >= deadline:
                        timed_out = True
                        break
                    study = _reseed(studies[cell], cell, out, config)
                    studies[cell] = study
                    run_trial(study, cell, config, prepared, out)
                    ran[cell] += 1
                    _sync_best(out, cell, study)
            outcome = "timed out" if timed_out else "complete"
        except BaseException as error:
            outcome = f"interrupted ({type(error).__name__})"
            raise
        finally:
            _record_history(out, started, load_average_start, ran, outcome)
        for cell, study in studies.items():
            _sync_best(out, cell, study)
        finished = {cell: _finished(study) for cell, study in studies.items()}
        results = collect(config, studies, prepared, out, ran=ran, started=started,
                          timed_out=timed_out, history=read_history(out),
                          load_average_start=load_average_start)
        report = write_report(results, out)
    return SearchOutcome(out, report, results, ran, finished, timed_out)


def read_history(out: Path) -> list[dict[str, Any]]:
    """One entry per invocation on ``out`` that got past its trial phase (or was interrupted)."""
    path = out / HISTORY_FILE
    return json.loads(path.read_text()) if path.exists() else []


def _record_history(out: Path, started: float, load_average_start: float, ran: dict[str, int],
                    outcome: str) -> None:
    entry = {
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "trial_phase_seconds": time.time() - started, "ran": dict(ran), "outcome": outcome,
        "load_average_start": load_average_start, "load_average_end": os.getloadavg()[0],
    }
    temporary = out / f"{HISTORY_FILE}.tmp"
    temporary.write_text(json.dumps([*read_history(out), entry], indent=2) + "\n")
    os.replace(temporary, out / HISTORY_FILE)


# --------------------------------------------------------------------------- studies


def _storage_url(out: Path) -> str:
    return f"sqlite:///{(out / STUDY_FILE).resolve()}"


def _sampler(seed: int):
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS)


def _pruner():
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0)


def _open_study(out: Path, cell: str, config: SearchConfig):
    """Load or create the cell's study and fail trials an interrupted run left RUNNING."""
    study = optuna.create_study(
        storage=_storage_url(out), study_name=cell, direction="maximize",
        sampler=_sampler(config.seed), pruner=_pruner(), load_if_exists=True,
    )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study.tell(trial.number, state=TrialState.FAIL)
    return _reseed(study, cell, out, config)


def _reseed(study, cell: str, out: Path, config: SearchConfig):
    """The same study with a sampler seeded ``seed + finished trials`` (see invariants)."""
    return optuna.load_study(
        study_name=cell, storage=_storage_url(out),
        sampler=_sampler(config.seed + _finished(study)), pruner=_pruner(),
    )


def _finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _turns(studies: dict[str, Any], trials: int) -> Iterator[str]:
    """Cells in round-robin order, the least-finished first, until each has ``trials``."""
    while True:
        counts = {cell: _finished(study) for cell, study in studies.items()}
        behind = [cell for cell in studies if counts[cell] < trials]
        if not behind:
            return
        fewest = min(counts[cell] for cell in behind)
        for cell in behind:
            if counts[cell] == fewest:
                yield cell


@contextmanager
def _terminate_as_interrupt():
    """Turn SIGTERM into KeyboardInterrupt while trials run, so a stopped search marks its
    running trial FAIL and records its history like Ctrl-C does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _exclusive(out: Path):
    with open(out / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchError(f"{out}: another search is running on this directory") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _store_settings(out: Path, config: SearchConfig) -> None:
    """Write ``search.json`` on the first run (after ``_check_settings`` passed)."""
    path = out / SETTINGS_FILE
    if not path.exists():
        path.write_text(json.dumps(config.study_settings(), indent=2) + "\n")


def _check_settings(out: Path, config: SearchConfig) -> None:
    """The settings stored in ``search.json`` by an earlier run must match ``config``."""
    path = out / SETTINGS_FILE
    wanted = json.loads(json.dumps(config.study_settings()))
    if not path.exists():
        if (out / STUDY_FILE).exists():
            raise SearchError(f"{out}: has {STUDY_FILE} but no {SETTINGS_FILE}; use a new --out")
        return
    stored = json.loads(path.read_text())
    changed = [key for key in wanted if stored.get(key) != wanted[key]]
    if changed:
        details = ", ".join(f"{key}: stored {stored.get(key)!r}, now {wanted[key]!r}"
                            for key in changed if key != "space")
        if "space" in changed:
            details = ", ".join(filter(None, [details, (f"space: stored {stored['space']['name']!r}"
                                                       f" (or its definition changed)")]))
        raise SearchError(
            f"{out} holds a search with other settings ({details}); re-run with the same "
            f"settings to resume, or use a new --out"
        )


# --------------------------------------------------------------------------- best checkpoints


def _sync_best(out: Path, cell: str, study) -> None:
    """Make ``best-<cell>/`` a copy of the best completed trial's checkpoint (idempotent)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    best = study.best_trial
    record_path = out / BEST_FILE
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    target = best_dir(out, cell)
    if record.get(cell) == best.number and target.is_dir():
        return
    source = trial_dir(out, cell, best.number)
    if not source.is_dir():
        raise SearchError(f"best {cell} trial {best.number}: checkpoint {source} is missing")
    staging = out / f".best-{cell}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    retired = out / f".best-{cell}.old"
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    record[cell] = best.number
    temporary = record_path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, record_path)
