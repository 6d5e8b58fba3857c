"""``rnnserve serve``: the typer command (registered by rnnserve/cli.py).

Only typer is imported at module level; settings, gRPC and ONNX Runtime are imported inside
the command, so ``rnnserve --help`` stays fast and nothing here ever imports torch.
Every flag has an ``RNNSERVE_*`` environment variable (flags win); see docs/server.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve_command(
    repository: Annotated[Path | None, typer.Option(
        "--repository", "-r", help="Model repository (Triton layout). Env: RNNSERVE_REPOSITORY.",
        show_default=False)] = None,
    port: Annotated[int | None, typer.Option(
        help="gRPC port (0 = any free port). Default 8001.", show_default=False)] = None,
    metrics_port: Annotated[int | None, typer.Option(
        help="Prometheus port (0 = any, -1 = off). Default 8002.", show_default=False)] = None,
    metrics: Annotated[bool | None, typer.Option(
        "--metrics/--no-metrics", help="Publish Prometheus metrics. Default on.",
        show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        help="auto | cpu | cuda. Default auto (CUDA if usable, else CPU).",
        show_default=False)] = None,
    host: Annotated[str | None, typer.Option(
        help="Bind address. Default 0.0.0.0.", show_default=False)] = None,
    workers: Annotated[str | None, typer.Option(
        help="Front-end processes sharing the port: a number or auto (= CPUs available). "
             "Default 1 (one process).", show_default=False)] = None,
    model_control: Annotated[str | None, typer.Option(
        help="none | poll | explicit: how versions are loaded while serving. Default none.",
        show_default=False)] = None,
    poll_seconds: Annotated[float | None, typer.Option(
        help="Repository rescan period with --model-control poll. Default 5.",
        show_default=False)] = None,
    unload_wait_seconds: Annotated[float | None, typer.Option(
        help="Longest an unloaded version finishes its open sequences. Default 60.",
        show_default=False)] = None,
    default_model: Annotated[str | None, typer.Option(
        help="Model an empty model name selects.", show_default=False)] = None,
    instances: Annotated[int | None, typer.Option(
        help="ORT sessions per model version.", show_default=False)] = None,
    intra_op_threads: Annotated[int | None, typer.Option(
        help="ORT intra-op threads per session (0 = CPUs available - 1).", show_default=False)] = None,
    max_batch_size: Annotated[int | None, typer.Option(
        help="Rows per ORT call (default: config.pbtxt).", show_default=False)] = None,
    max_queue_delay_us: Annotated[int | None, typer.Option(
        help="Longest wait for a fuller batch (default: config.pbtxt).",
        show_default=False)] = None,
    grace_seconds: Annotated[float | None, typer.Option(
        help="Shutdown grace period. Default 30.", show_default=False)] = None,
    log_format: Annotated[str | None, typer.Option(
        help="json | kv. Default json.", show_default=False)] = None,
) -> None:
    """Load every model in the repository and serve it over gRPC until SIGTERM/SIGINT."""
    from pydantic import ValidationError
    from rnnserve.server.settings import ServerSettings

    given = {key: value for key, value in locals().items()
             if value is not None and key not in ("ValidationError", "ServerSettings")}
    if "metrics" in given:
        given["metrics_enabled"] = given.pop("metrics")
    try:
        settings = ServerSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in exc.errors())
        typer.echo(f"rnnserve serve: invalid settings: {problems}", err=True)
        raise typer.Exit(2) from None

    from rnnserve.server.app import serve

    raise typer.Exit(serve(settings))
