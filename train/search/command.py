"""``rnnserve search``: the command line of an Optuna search per cell and its report.

Imported by the CLI at start-up, so it imports only the standard library, typer and
``settings``; the search itself (``study.run_search``: Optuna, torch, the measurements) is
imported when a search actually runs, like every heavy subcommand of ``rnnserve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rnnserve.train.search.settings import SearchConfig, SearchError, parse_cells


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
    from rnnserve.train.search.study import run_search  # the heavy part, only when it runs

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
