"""ModelStatistics for KServe views, from the engine's cumulative telemetry.

Both flavours of one model (``<model>`` and ``<model>-stream``) run on one ModelEngine with one
batcher, so each reports the engine's cumulative numbers (every API, both flavours) under its
own name; the split by API and call kind lives in the Prometheus series. The numbers are
those of ``ModelTelemetry.statistics()`` (server/telemetry.py): built from the same samples
a /metrics scrape reads (totals over every process with ``serve --workers N``), with
compute_input/infer/output counts equal, as perf_analyzer requires.
"""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from .kserve_models import ModelView


def view_statistics(view: ModelView, engine) -> service_pb2.ModelStatistics:
    """The engine's statistics renamed to ``view.name`` and the engine's version."""
    stats = service_pb2.ModelStatistics()
    telemetry = getattr(engine, "telemetry", None)
    if telemetry is not None:
        stats.CopyFrom(telemetry.statistics())
    stats.name = view.name
    stats.version = str(engine.version)
    return stats
