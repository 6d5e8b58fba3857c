"""Per-model telemetry: Prometheus families and cumulative KServe statistics.

PLACEHOLDER with the agreed hook signatures (docs/architecture.md §3); the metrics work
replaces the bodies. Every hook is cheap and never raises.
"""

from __future__ import annotations


class ModelTelemetry:
    def __init__(self, model: str, version: str, **_: object) -> None:
        self.model = model
        self.version = version

    def request_finished(self, *, api: str, kind: str, code, seconds: float, texts: int) -> None:
        pass

    def rows_executed(self, *, queue_seconds, tokenize_seconds, input_seconds, infer_seconds,
                      output_seconds, batch_size, real_tokens, padded_tokens) -> None:
        pass

    def sequence_event(self, event: str) -> None:
        pass

    def set_open_sequences(self, n: int, state_bytes: int) -> None:
        pass

    def set_pending(self, n: int) -> None:
        pass
