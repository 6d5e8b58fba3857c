"""Prometheus family for model version loads and unloads (the live repository).

``rnnserve_model_lifecycle_total{model,version,action,result}``: ``action`` is ``load`` or
``unload``; ``result`` is ``ok`` or ``refused`` (a version that could not be read, did not
match its config or failed to load; ``version`` is empty when the model's config.pbtxt
itself was unreadable).

Invariant: the counter lives on the server telemetry's own ``CollectorRegistry``
(``ServerTelemetry.registry``), so /metrics shows it beside every other family; with
metrics disabled (or no telemetry) ``record`` does nothing.
"""

from __future__ import annotations

from prometheus_client import Counter

FAMILY = "rnnserve_model_lifecycle"


class LifecycleMetrics:
    """Counts loads and unloads of model versions by result."""

    def __init__(self, telemetry) -> None:
        self._counter = None
        if telemetry is not None and getattr(telemetry, "enabled", False):
            self._counter = Counter(
                FAMILY, "Model version loads and unloads while serving, by result.",
                ["model", "version", "action", "result"], registry=telemetry.registry)

    def record(self, model: str, version: str, action: str, result: str) -> None:
        if self._counter is not None:
            self._counter.labels(model=model, version=str(version), action=action,
                                 result=result).inc()
