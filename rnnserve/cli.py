"""The ``rnnserve`` console command.

Each subcommand lives with the code it drives (``train/commands.py``, ``export/commands.py``,
``server/commands.py``, ...). Those modules import their heavy dependencies inside the
command functions, so ``rnnserve serve`` never imports torch and ``rnnserve --help`` is fast.
Help screens use the plain layout of ``rnnserve/cli_help.py``; tests/test_cli_help.py reads
every one of them through this app.
"""

from __future__ import annotations

from typing import Annotated

import typer

from rnnserve import __version__
from rnnserve.bench.commands import bench_command
from rnnserve.cli_help import HELP_LAYOUT, Command
from rnnserve.demo import demo_command
from rnnserve.export.commands import export_command
from rnnserve.server.commands import serve_command
from rnnserve.train.commands import evaluate_command, train_command
from rnnserve.train.search import search_command

app = typer.Typer(
    name="rnnserve",
    help="Train, export and serve LSTM/GRU sentiment models with batched, stateful inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    **HELP_LAYOUT,
)

#: name -> (command function, its line in ``rnnserve --help``); ``rnnserve NAME --help`` shows
#: the function's docstring.
COMMANDS = {
    "train": (train_command, "Train an LSTM and/or GRU sentiment classifier."),
    "evaluate": (evaluate_command, "Accuracy, macro-F1 and confusion matrix of a checkpoint."),
    "search": (search_command, "Optuna search comparing LSTM and GRU at their best sizes."),
    "export": (export_command, "Checkpoint -> validated ONNX version in a model repository."),
    "serve": (serve_command, "Serve a model repository over gRPC (text API + KServe v2)."),
    "bench": (bench_command, "Benchmark against the raw ONNX Runtime limit and peers."),
    "demo": (demo_command, "Train small LSTM+GRU on an offline review corpus, export, serve."),
}
for _name, (_function, _help) in COMMANDS.items():
    app.command(_name, short_help=_help, cls=Command)(_function)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print the rnnserve version and exit.")] = False,
) -> None:
    """Options that come before the command name."""


@app.command("version", cls=Command)
def version_command() -> None:
    """Print the rnnserve version (the same as rnnserve --version)."""
    _print_version(True)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
