"""The ``rnnserve`` console command.

Each subcommand lives with the code it drives (``train/commands.py``, ``export/commands.py``,
``server/commands.py``, ...). Those modules import their heavy dependencies inside the
command functions, so ``rnnserve serve`` never imports torch and ``rnnserve --help`` is fast.
"""

from __future__ import annotations

import typer

from rnnserve import __version__
from rnnserve.bench.commands import bench_command
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
)

app.command("train", help="Train an LSTM and/or GRU sentiment classifier.")(train_command)
app.command("evaluate", help="Accuracy, macro-F1 and confusion matrix of a checkpoint.")(
    evaluate_command
)
app.command("search", help="Optuna search comparing LSTM and GRU at their best sizes.")(
    search_command
)
app.command("export", help="Checkpoint -> validated ONNX in a Triton-layout model repository.")(
    export_command
)
app.command("serve", help="Serve a model repository over gRPC (text API + KServe v2).")(
    serve_command
)
app.command("bench", help="Benchmark against the raw ONNX Runtime limit and peers.")(
    bench_command
)
app.command("demo", help="Train small LSTM+GRU on an offline review corpus, export, serve.")(
    demo_command
)


@app.command("version", help="Print the rnnserve version.")
def version_command() -> None:
    typer.echo(__version__)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
