"""Search-space presets: what Optuna may choose for each trial.

Invariants
----------
* One space is used for every cell of a search, with the same parameter names and
  distributions, so the cells get the same budget over the same choices; the cell itself is
  never a searched parameter (each cell has its own study).
* ``suggest`` asks the trial for exactly the keys of ``SEARCHED`` in that order, so a study is
  reproducible from its sampler seed and the trials already in it.
* A preset also fixes what is *not* searched (vocabulary size, default epochs), so a study
  directory's settings can be checked for consistency when a search is resumed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

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


#: Sized for SST-2 (67k short phrases, ~0.75M tokens) on a 2-core CPU. An epoch costs about
#: 3 * 2 * gates * hidden * (input + hidden) FLOPs per token and layer plus ~6 ms per step:
#: ~30 s on average over this space with one thread, ~80 s for the largest choice (LSTM,
#: embed 128, hidden 192, 2 layers), so 2 cells x 12 trials x 3 epochs with median pruning
#: is ~30 CPU-minutes. (Hidden 256 doubled the largest trial and was measured at ~95 CPU-s
#: per epoch, so it is not offered.) Batches below 64 make an epoch step-bound on CPU. The
#: vocabulary is the trainer's default (16k, about SST-2's word count).
DEFAULT = SearchSpace(
    name="default",
    embed_dim=(64, 128),
    hidden=(64, 128, 192),
    layers=(1, 2),
    dropout=(0.0, 0.5),
    lr=(5e-4, 5e-3),
    weight_decay=(1e-6, 1e-2),
    batch_size=(64, 128, 256),
    vocab_size=16000,
    epochs=3,
    description="SST-2 sized: embed 64-128, hidden 64-192, 1-2 layers, batch 64-256, 3 epochs",
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
    description="tests/smoke runs: embed 8-16, hidden 8-16, 1-2 layers, 2 epochs",
)

SPACES: dict[str, SearchSpace] = {space.name: space for space in (DEFAULT, TINY)}


def get_space(name: str) -> SearchSpace:
    """The preset called ``name``; ValueError listing the presets otherwise."""
    try:
        return SPACES[name]
    except KeyError:
        raise ValueError(f"unknown search space {name!r} (expected one of {sorted(SPACES)})") from None
