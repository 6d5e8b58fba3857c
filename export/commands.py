"""``rnnserve export``: the CLI face of ``export_checkpoint``.

Heavy imports (torch, onnx, onnxruntime) happen inside the command so importing this module
(e.g. for ``rnnserve --help``) stays cheap. User errors print one line and exit 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint directory written by `rnnserve train`.")
    ],
    repository: Annotated[
        Path, typer.Option("--repository", "-r", help="Model repository to write into.")
    ],
    name: Annotated[
        str, typer.Option("--name", "-n", help="Model name (one safe path component).")
    ],
    version: Annotated[
        int | None,
        typer.Option("--version", help="Model version to write (default: the next free number)."),
    ] = None,
    precision: Annotated[
        str, typer.Option("--precision", "-p", metavar="<fp32|fp16|int8>",
                          help="fp32, fp16 (for CUDA) or int8 (dynamic quantisation).")
    ] = "fp32",
    force: Annotated[bool, typer.Option("--force", help="Replace the version if it exists.")] = False,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Labelled validation data (file or dataset name) for the accuracy check; "
            "without it fp16/int8 use the checkpoint's own validation split and fp32 "
            "measures no accuracy.",
        ),
    ] = None,
) -> None:
    """Turn a trained checkpoint into a validated, servable model version."""
    from .errors import ExportError
    from .exporter import describe, export_checkpoint

    try:
        version_dir = export_checkpoint(
            checkpoint,
            repository=repository,
            name=name,
            version=version,
            precision=precision,
            force=force,
            data=data,
        )
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    info = describe(version_dir)
    figures = info.get("validation", {})
    summary = [
        f"exported {info['cell']} ({info['precision']}) to {version_dir}",
        f"max |dlogits| vs torch {figures.get('max_abs_logit_diff', float('nan')):.2e}",
    ]
    if "val_accuracy" in info.get("metrics", {}):
        summary.append(f"accuracy {info['metrics']['val_accuracy']:.4f}")
    typer.echo("; ".join(summary))
