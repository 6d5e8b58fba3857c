"""``rnnserve serve``: the typer command (registered by rnnserve/cli.py).

Only typer is imported at module level; settings, gRPC and ONNX Runtime are imported inside
the command, so ``rnnserve --help`` stays fast and nothing here ever imports torch.
Every flag has an ``RNNSERVE_*`` environment variable (flags win); see docs/server.md.

Invariant: every flag's value is ``None`` unless given, so ``ServerSettings`` alone decides
what an absent flag means (its environment variable, then its default). The ``[default: X]``
that ``--help`` shows for a flag is ``ServerSettings``' default; tests/test_cli_help.py
checks the two agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def setting_option(
    *decls: str, help: str, default: object = None, metavar: str | None = None
) -> Any:
    """A flag that overrides a ``ServerSettings`` field (its value is ``None`` unless given);
    ``default`` is that field's default, shown in ``--help`` in the same ``[default: X]`` form
    as every other command's (typer's ``show_default="X"`` would print ``(X)``)."""
    shown = help if default is None else f"{help}  [default: {default}]"
    return typer.Option(*decls, help=shown, show_default=False, metavar=metavar)


def serve_command(
    repository: Annotated[Path | None, setting_option(
        "--repository", "-r", help="Model repository (Triton layout).",
        default="model_repository")] = None,
    port: Annotated[int | None, setting_option(
        help="gRPC port (0 = any free port).", default=8001)] = None,
    metrics_port: Annotated[int | None, setting_option(
        help="Prometheus port (0 = any free port, -1 = no metrics endpoint).",
        default=8002)] = None,
    metrics: Annotated[bool | None, setting_option(
        "--metrics/--no-metrics", help="Publish Prometheus metrics.", default="metrics")] = None,
    device: Annotated[str | None, setting_option(
        help="auto (CUDA if usable, else CPU), cpu or cuda.", default="auto",
        metavar="<auto|cpu|cuda>")] = None,
    host: Annotated[str | None, setting_option(
        help="Address the gRPC server binds.", default="0.0.0.0")] = None,
    workers: Annotated[str | None, setting_option(
        help="Front-end processes sharing the port, and ORT sessions per model: a number, or "
             "auto (= the CPUs available).", default=1, metavar="<int|auto>")] = None,
    frontend: Annotated[str | None, setting_option(
        help="What carries gRPC on the port: python (grpc.aio), native (a C++ front-end, "
             "compiled on first use) or auto (python with one worker, native with more "
             "where it builds).", default="auto", metavar="<auto|python|native>")] = None,
    model_control: Annotated[str | None, setting_option(
        help="How versions are loaded while serving: none (those found at start-up until "
             "exit), poll (rescan the repository) or explicit (KServe load/unload RPCs).",
        default="none", metavar="<none|poll|explicit>")] = None,
    poll_seconds: Annotated[float | None, setting_option(
        help="Repository rescan period (--model-control poll).", default=5.0)] = None,
    unload_wait_seconds: Annotated[float | None, setting_option(
        help="Longest an unloaded version keeps serving its open sequences.",
        default=60.0)] = None,
    default_model: Annotated[str | None, setting_option(
        help="Model an empty model name selects (default: the only model, if there is "
             "exactly one).")] = None,
    instances: Annotated[int | None, setting_option(
        help="ORT sessions per model version (default: config.pbtxt instance_group, "
             "else 1).")] = None,
    intra_op_threads: Annotated[int | None, setting_option(
        help="ORT intra-op threads per session (0 = the CPUs available - 1).",
        default=0)] = None,
    max_batch_size: Annotated[int | None, setting_option(
        help="Rows per ORT call (default: config.pbtxt max_batch_size).")] = None,
    max_queue_delay_us: Annotated[int | None, setting_option(
        help="Longest wait for a fuller batch, in microseconds (default: config.pbtxt, "
             "else 500).")] = None,
    grace_seconds: Annotated[float | None, setting_option(
        help="Shutdown grace period.", default=30.0)] = None,
    log_format: Annotated[str | None, setting_option(
        help="Log lines as json or kv (key=value).", default="json",
        metavar="<json|kv>")] = None,
) -> None:
    """Load every model in the repository and serve it over gRPC until SIGTERM/SIGINT.

    Each option can also be set by an RNNSERVE_* environment variable named after it
    (--metrics-port: RNNSERVE_METRICS_PORT, --metrics: RNNSERVE_METRICS_ENABLED); a flag
    wins. docs/server.md lists every setting, including those without a flag.
    """
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


def main() -> None:
    """``python -m rnnserve.server``: ``serve_command`` alone, with ``rnnserve serve``'s help
    layout (rnnserve/cli_help.py)."""
    from rnnserve.cli_help import HELP_LAYOUT, Command

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, **HELP_LAYOUT)
    app.command(cls=Command)(serve_command)
    app()
