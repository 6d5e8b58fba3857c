"""``rnnserve search``: an Optuna search per cell (LSTM, GRU) and a report comparing the winners.

This module is imported by the CLI at start-up, so it imports only the standard library and
typer; Optuna, torch and the report code are imported when a search actually runs.

Invariants
----------
* ``SearchConfig`` is validated on construction: known cells (no duplicates), ``trials >= 1``,
  ``epochs >= 1``, a known search-space preset. Invalid values raise ``ValueError`` with a
  one-line message; the command turns it into exit code 2.
* ``trials`` is the *total* number of finished (completed + pruned) trials wanted per cell in
  ``<out>/study.db``; re-running the same command after an interruption only runs the rest.
* Every cell gets the same space, epochs, sampler seed and trial count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

CELLS = ("lstm", "gru")


class SearchError(RuntimeError):
    """A search cannot run as asked (bad data, settings that contradict the stored study, a
    concurrent run on the same directory); the message is one line for the user."""


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
        from rnnserve.train.search_space import get_space

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

    def as_command(self) -> str:
        """The ``rnnserve search`` command line that reproduces (or resumes) this search."""
        import shlex

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

    @property
    def effective_epochs(self) -> int:
        from rnnserve.train.search_space import get_space

        return self.epochs if self.epochs is not None else get_space(self.space).epochs

    def study_settings(self) -> dict:
        """What a study in ``out`` was created with; a resumed run must match it."""
        from rnnserve.train.search_space import get_space

        return {
            "data": self.data,
            "val_data": self.val_data,
            "epochs": self.effective_epochs,
            "space": get_space(self.space).as_dict(),
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


def run_search(config: SearchConfig):
    """Run (or resume) the studies, measure the winners and write the report; returns the
    ``SearchOutcome`` (see ``search_study``)."""
    from rnnserve.train.search_study import run_search as run

    return run(config)


def _cells_option(value: str) -> str:
    try:
        parse_cells(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    return value


def search_command(
    data: Annotated[str, typer.Option("--data", help="Training data (TSV/CSV/JSONL/folder).")],
    out: Annotated[Path, typer.Option("--out", help="Search directory (study.db, report, best-<cell>/).")],
    cells: Annotated[
        str, typer.Option("--cells", callback=_cells_option, help="Comma-separated: lstm,gru.")
    ] = "lstm,gru",
    trials: Annotated[
        int, typer.Option("--trials", min=1, help="Finished trials wanted per cell (total, resumable).")
    ] = 12,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Epochs per trial (default: the preset's).")
    ] = None,
    val_data: Annotated[str | None, typer.Option("--val-data", help="Validation file.")] = None,
    test_data: Annotated[
        str | None, typer.Option("--test-data", help="Labelled test file, scored for the winners only.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=1, help="Seconds; no new trial starts after this (resumable)."),
    ] = None,
    space: Annotated[
        str, typer.Option("--space", help="Search-space preset: default (SST-2 sized) or tiny.")
    ] = "default",
    seed: Annotated[int, typer.Option("--seed", help="Sampler and training seed.")] = 0,
    latency_top: Annotated[
        int, typer.Option("--latency-top", min=1, help="Completed trials per cell to time.")
    ] = 3,
    measure_seconds: Annotated[
        float, typer.Option("--measure-seconds", min=0.0, help="Seconds timing batch 32 per model.")
    ] = 2.0,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Torch threads for training.")
    ] = None,
    measure_memory: Annotated[
        bool, typer.Option("--measure-memory/--no-measure-memory",
                           help="Measure the best models' training memory in a fresh process.")
    ] = True,
    progress: Annotated[bool, typer.Option("--progress/--quiet", help="One line per trial.")] = True,
) -> None:
    """Optuna search per cell with the same budget, then a report comparing the best models."""
    try:
        config = SearchConfig(
            data=data, out=out, cells=parse_cells(cells), trials=trials, epochs=epochs,
            val_data=val_data, test_data=test_data, timeout=timeout, space=space, seed=seed,
            latency_top=latency_top, measure_seconds=measure_seconds, threads=threads,
            measure_memory=measure_memory, progress=progress,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    try:
        outcome = run_search(config)
    except SearchError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted; run the same command again to resume the search in {out}",
                   err=True)
        raise typer.Exit(130) from None
    typer.echo(f"report: {outcome.report}")
