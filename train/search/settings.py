"""What a search is asked to do and where it keeps its files.

``SearchConfig`` (the options of ``rnnserve search``), the search-space presets
(``SearchSpace``), the Optuna sampler/pruner settings and the layout of the search directory.
Standard library only: the CLI imports it at start-up.

Invariants
----------
* ``SearchConfig`` is validated on construction: known cells (no duplicates), ``trials >= 1``,
  ``epochs >= 1``, a known search-space preset. Invalid values raise ``ValueError`` with a
  one-line message; the command turns it into exit code 2.
* ``trials`` is the *total* number of finished (completed + pruned) trials wanted per cell in
  ``<out>/study.db``; re-running the same command after an interruption only runs the rest.
* Every cell gets the same space, epochs, sampler seed and trial count. One space is used for
  every cell, with the same parameter names and distributions; the cell itself is never a
  searched parameter (each cell has its own study).
* ``SearchSpace.suggest`` asks the trial for exactly the keys of ``SEARCHED`` in that order, so
  a study is reproducible from its sampler seed and the trials already in it.
* A preset also fixes what is *not* searched (vocabulary size, default epochs, adversarial
  training and LM pretraining), so a search directory's settings can be checked for
  consistency when a search is resumed.

Layout of ``<out>``::

    study.db            SQLite storage: one study per cell, named after the cell
    search.json         the settings the studies were created with (checked on resume)
    trials/<cell>-NNN/  checkpoint of each completed trial (pruned ones are deleted)
    best-<cell>/        copy of the best completed trial's checkpoint (``rnnserve export`` input)
    best.json           cell -> trial number that best-<cell>/ holds
    history.json        one entry per invocation: trial-phase wall time, trials run, outcome
    onnx/               fp32 exports of the measured checkpoints
    report.md, results.json, *.png   written by ``rnnserve.train.report``
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

CELLS = ("lstm", "gru")

STUDY_FILE = "study.db"
SETTINGS_FILE = "search.json"
BEST_FILE = "best.json"
HISTORY_FILE = "history.json"
LOCK_FILE = ".search.lock"
ONNX_DIR = "onnx"

#: TPE draws this many random configurations per cell before it models the results.
TPE_STARTUP_TRIALS = 4
#: MedianPruner prunes nothing until this many trials of the cell finished.
PRUNER_STARTUP_TRIALS = 3


class SearchError(RuntimeError):
    """A search cannot run as asked (bad data, settings that contradict the stored study, a
    concurrent run on the same directory); the message is one line for the user."""


def trial_dir(out: Path, cell: str, number: int) -> Path:
    return Path(out) / "trials" / f"{cell}-{number:03d}"


def best_dir(out: Path, cell: str) -> Path:
    return Path(out) / f"best-{cell}"


#: The searched hyperparameters, in the order they are suggested.
SEARCHED = ("embed_dim", "hidden", "layers", "dropout", "lr", "weight_decay", "batch_size")


class TrialLike(Protocol):  # the part of optuna.Trial used here (keeps optuna out of imports)
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


@dataclass(frozen=True)
class SearchSpace:
    """Choices per hyperparameter; ``(low, high)`` ranges are continuous, tuples of ints are sets."""

    name: str
    embed_dim: tuple[int, ...]
    hidden: tuple[int, ...]
    layers: tuple[int, ...]
    dropout: tuple[float, float]
    lr: tuple[float, float]  # log-uniform
    weight_decay: tuple[float, float]  # log-uniform
    batch_size: tuple[int, ...]
    vocab_size: int
    epochs: int
    adversarial_eps: float  # every trial's adversarial training (0: off)
    lm_pretrain_epochs: int  # every trial's language-model pretraining (0: off)
    description: str = ""

    def suggest(self, trial: TrialLike) -> dict[str, Any]:
        """Draw one configuration; keys are ``SEARCHED``."""
        return {
            "embed_dim": int(trial.suggest_categorical("embed_dim", list(self.embed_dim))),
            "hidden": int(trial.suggest_categorical("hidden", list(self.hidden))),
            "layers": int(trial.suggest_categorical("layers", list(self.layers))),
            "dropout": float(trial.suggest_float("dropout", *self.dropout)),
            "lr": float(trial.suggest_float("lr", *self.lr, log=True)),
            "weight_decay": float(trial.suggest_float("weight_decay", *self.weight_decay, log=True)),
            "batch_size": int(trial.suggest_categorical("batch_size", list(self.batch_size))),
        }

    def as_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}


#: Sized for SST-2 (67k short phrases, ~0.75M tokens) on a 2-core CPU. A plain epoch costs
#: about 3 * 2 * gates * hidden * (input + hidden) FLOPs per token and layer plus ~6 ms per
#: step: ~30 s on average over this space with one thread, ~80 s for the largest choice
#: (LSTM, embed 128, hidden 192, 2 layers). (Hidden 256 doubled the largest trial and was
#: measured at ~95 CPU-s per epoch, so it is not offered.) Batches below 64 make an epoch
#: step-bound on CPU. Vocabulary, adversarial ε and LM pretraining are the trainer's
#: defaults (the SST-2 recipe; tests/train/test_search.py checks they agree). They roughly
#: double an epoch's cost and add two LM epochs per trial: trials took 2-5 CPU-minutes, and
#: 2 cells x 12 trials x up to 3 epochs with median pruning 76 CPU-minutes
#: (docs/search/report.md).
DEFAULT = SearchSpace(
    name="default",
    embed_dim=(64, 128),
    hidden=(64, 128, 192),
    layers=(1, 2),
    dropout=(0.0, 0.5),
    lr=(5e-4, 5e-3),
    weight_decay=(1e-6, 1e-2),
    batch_size=(64, 128, 256),
    vocab_size=8000,
    epochs=3,
    adversarial_eps=5.0,
    lm_pretrain_epochs=2,
    description="SST-2 sized: embed 64-128, hidden 64-192, 1-2 layers, batch 64-256, 3 epochs, "
    "the trainer's recipe (8,000 words, 2 LM epochs, adversarial ε 5)",
)

#: For tests and smoke runs: seconds per trial on generated data.
TINY = SearchSpace(
    name="tiny",
    embed_dim=(8, 16),
    hidden=(8, 16),
    layers=(1, 2),
    dropout=(0.0, 0.3),
    lr=(3e-3, 3e-2),
    weight_decay=(1e-6, 1e-3),
    batch_size=(32, 64),
    vocab_size=300,
    epochs=2,
    adversarial_eps=0.0,
    lm_pretrain_epochs=1,
    description="tests/smoke runs: embed 8-16, hidden 8-16, 1-2 layers, 2 epochs, 1 LM epoch, "
    "no adversarial training",
)

SPACES: dict[str, SearchSpace] = {space.name: space for space in (DEFAULT, TINY)}


def get_space(name: str) -> SearchSpace:
    """The preset called ``name``; ValueError listing the presets otherwise."""
    try:
        return SPACES[name]
    except KeyError:
        raise ValueError(f"unknown search space {name!r} (expected one of {sorted(SPACES)})") from None


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search run needs; the stored subset (``study_settings``) must not change
    between runs on the same ``out`` directory."""

    data: str
    out: Path
    cells: tuple[str, ...] = CELLS
    trials: int = 12
    epochs: int | None = None  # None: the space preset's default
    val_data: str | None = None
    test_data: str | None = None
    timeout: float | None = None  # seconds; no new trial starts after it
    space: str = "default"
    seed: int = 0
    latency_top: int = 3  # completed trials per cell whose latency is measured
    measure_threads: int = 1  # intra-op threads for latency measurements (both engines)
    measure_seconds: float = 2.0  # minimum time spent timing batch-32 throughput per model
    threads: int | None = None  # torch intra-op threads for training (None: torch's default)
    measure_memory: bool = True  # fresh-process training memory of the best models
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.cells:
            raise ValueError("--cells is empty (expected a comma-separated subset of lstm,gru)")
        unknown = [cell for cell in self.cells if cell not in CELLS]
        if unknown:
            raise ValueError(f"unknown cell(s) {unknown} (expected a subset of {list(CELLS)})")
        if len(set(self.cells)) != len(self.cells):
            raise ValueError(f"--cells lists a cell twice: {list(self.cells)}")
        if self.trials < 1:
            raise ValueError(f"--trials must be at least 1, got {self.trials}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"--timeout must be positive seconds, got {self.timeout}")
        get_space(self.space)  # raises ValueError for an unknown preset

    @property
    def search_space(self) -> SearchSpace:
        return get_space(self.space)

    @property
    def effective_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.search_space.epochs

    def as_command(self) -> str:
        """The ``rnnserve search`` command line that reproduces (or resumes) this search."""
        args = ["rnnserve", "search", "--data", self.data, "--cells", ",".join(self.cells),
                "--trials", str(self.trials), "--out", str(self.out)]
        optional = {"--val-data": self.val_data, "--test-data": self.test_data,
                    "--epochs": self.epochs, "--timeout": self.timeout, "--threads": self.threads}
        args += [item for flag, value in optional.items() if value is not None
                 for item in (flag, str(value))]
        if self.space != "default":
            args += ["--space", self.space]
        if self.seed != 0:
            args += ["--seed", str(self.seed)]
        return " ".join(shlex.quote(arg) for arg in args)

    def study_settings(self) -> dict:
        """What a study in ``out`` was created with; a resumed run must match it."""
        return {
            "data": self.data,
            "val_data": self.val_data,
            "epochs": self.effective_epochs,
            "space": self.search_space.as_dict(),
            "seed": self.seed,
        }


def parse_cells(value: str) -> tuple[str, ...]:
    """``"lstm,gru"`` -> ``("lstm", "gru")``; ValueError naming unknown or repeated cells."""
    cells = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    if not cells:
        raise ValueError("--cells is empty (expected e.g. lstm,gru)")
    unknown = [cell for cell in cells if cell not in CELLS]
    if unknown:
        raise ValueError(f"unknown cell(s) {', '.join(unknown)} (expected lstm and/or gru)")
    if len(set(cells)) != len(cells):
        raise ValueError(f"a cell is listed twice in {value!r}")
    return cells
