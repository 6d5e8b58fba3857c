"""Per-model telemetry: one set of cumulative counters behind both Prometheus and KServe.

Design (why there is no ``Histogram.observe`` on the hot path):

- Each served model version owns one :class:`ModelTelemetry`. Its hooks (docs/architecture.md
  §3) update plain integers and bucket arrays under one uncontended lock: no label lookups,
  no string or dict building, no per-metric locks. That costs about as much as a single
  ``prometheus_client`` counter increment.
- Prometheus reads those numbers at scrape time through :class:`TelemetryCollector`, which a
  :class:`ServerTelemetry` registers on its own ``CollectorRegistry`` (never the global one, so
  several servers can live in one process). ``ModelTelemetry.statistics()`` builds the KServe
  v2 ``ModelStatistics`` from the very same numbers, so the two views agree by construction.
- With metrics disabled (``ServerTelemetry(enabled=False)``) no collector is registered and the
  hooks skip every bucket update; only the counters that ``ModelStatistics`` needs remain.

Invariants (checked by tests/metrics/):

- durations are accumulated as integer nanoseconds; Prometheus ``_sum`` = ns / 1e9;
- ``inference_stats.success.count`` = Σ ``rnnserve_requests_total{code="OK"}``, and ``.ns`` the
  matching ``rnnserve_request_duration_seconds_sum`` (``fail`` likewise for code != OK);
- ``inference_count`` = Σ ``rnnserve_texts_total`` (texts of successful requests);
- ``execution_count`` = ``rnnserve_executions_total`` = ``rnnserve_batch_size_count`` = Σ
  ``batch_stats[*].compute_infer.count``;
- ``inference_stats.queue`` = (``rnnserve_queue_wait_seconds_count``, ``_sum``): one entry per
  row (text or chunk) that went through a batch;
- ``inference_stats.compute_*`` charge every row of a batch the whole batch's duration, as
  Triton does: count = Σ size·executions, ns = Σ size·duration over ``batch_stats``;
- every hook is cheap and never raises.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from importlib import metadata

import grpc
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.utils import floatToGoString
from tritonclient.grpc import service_pb2

log = logging.getLogger(__name__)

#: End-to-end request latency: sub-millisecond through seconds.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1,
                   0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
#: Queue wait and ONNX Runtime phases: 100 µs through seconds.
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
                 0.1, 0.25, 0.5, 1.0, 2.5)
#: Tokenization of one batch's texts: 10 µs through 100 ms.
TOKENIZE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                    0.005, 0.01, 0.025, 0.05, 0.1)
#: Rows per ONNX Runtime call; exposed from exact per-size counts.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Padded tensor cells / real tokens; 1.0 means no padding at all.
PADDING_BUCKETS = (1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0, 8.0, 16.0)

APIS = ("text", "kserve")
KINDS = ("unary", "stream")
SEQUENCE_EVENTS = ("started", "ended", "expired", "evicted", "restarted", "exported",
                   "imported")
PHASES = ("input", "infer", "output")
_OTHER = "other"
_OK = grpc.StatusCode.OK
_NS = 1_000_000_000


def _code_name(code: object) -> str:
    """gRPC status name ("OK", "INVALID_ARGUMENT", ...) of a StatusCode, a name or an int."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
        return "UNKNOWN"
    name = str(code).upper()
    return name if name in grpc.StatusCode.__members__ else "UNKNOWN"


class _Hist:
    """Non-cumulative bucket counts plus count and total; callers hold the owner's lock.

    ``counts[i]`` counts values in (bounds[i-1], bounds[i]]; ``counts[-1]`` is (bounds[-1], +Inf).
    ``total`` is in the caller's unit (integer ns for durations).
    """

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0

    def copy(self) -> _Hist:
        other = _Hist(self.bounds)
        other.counts = self.counts.copy()
        other.count = self.count
        other.total = self.total
        return other


class _RequestSeries:
    """Requests of one (api, kind, code): latency histogram (ns total) and texts."""

    __slots__ = ("api", "code", "hist", "kind", "ok", "texts")

    def __init__(self, api: str, kind: str, code: str) -> None:
        self.api = api
        self.kind = kind
        self.code = code
        self.ok = code == "OK"
        self.hist = _Hist(REQUEST_BUCKETS)
        self.texts = 0

    def copy(self) -> _RequestSeries:
        other = _RequestSeries(self.api, self.kind, self.code)
        other.hist = self.hist.copy()
        other.texts = self.texts
        return other


class _BatchSeries:
    """Executions of one batch size: count and per-phase ns totals."""

    __slots__ = ("count", "infer_ns", "input_ns", "output_ns", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0
        self.input_ns = 0
        self.infer_ns = 0
        self.output_ns = 0

    def copy(self) -> _BatchSeries:
        other = _BatchSeries(self.size)
        other.count, other.input_ns = self.count, self.input_ns
        other.infer_ns, other.output_ns = self.infer_ns, self.output_ns
        return other


class TelemetrySnapshot:
    """A consistent copy of one model's numbers, taken under its lock (for scrapes and tests)."""

    __slots__ = (
        "batches",
        "last_inference_ms",
        "load_seconds",
        "model",
        "open_sequences",
        "padded_tokens",
        "padding",
        "pending",
        "phases",
        "providers",
        "queue",
        "real_tokens",
        "requests",
        "sequence_events",
        "state_bytes",
        "tokenize",
        "version",
    )

    model: str
    version: str
    requests: list[_RequestSeries]
    queue: _Hist
    tokenize: _Hist
    phases: dict[str, _Hist]
    padding: _Hist
    batches: list[_BatchSeries]
    real_tokens: int
    padded_tokens: int
    sequence_events: dict[str, int]
    open_sequences: int
    state_bytes: int
    pending: int
    last_inference_ms: int
    load_seconds: float | None
    providers: tuple[str, ...]


class ModelTelemetry:
    """Cumulative numbers of one served model version; see the module docstring.

    ``histograms=False`` (used when metrics are disabled) skips all bucket arrays; the
    counters behind :meth:`statistics` are always kept.
    """

    def __init__(self, model: str, version: str, *, histograms: bool = True,
                 **_: object) -> None:
        self.model = model
        self.version = str(version)
        self.histograms = histograms
        self._lock = threading.Lock()
        # api -> kind -> code object as passed by the caller -> series. Filled lazily for
        # unusual codes; read without the lock (dict reads are atomic, writes hold it).
        self._series: dict[str, dict[str, dict[object, _RequestSeries]]] = {}
        self._all_series: list[_RequestSeries] = []
        # api -> kind -> the OK series: the hot path's lookup (filled by _bind).
        self._ok: dict[str, dict[str, _RequestSeries]] = {}
        for api in APIS:
            for kind in KINDS:
                self._bind(api, kind, _OK)
        self._queue = _Hist(STAGE_BUCKETS)
        self._tokenize = _Hist(TOKENIZE_BUCKETS)
        self._input = _Hist(STAGE_BUCKETS)
        self._infer = _Hist(STAGE_BUCKETS)
        self._output = _Hist(STAGE_BUCKETS)
        self._padding = _Hist(PADDING_BUCKETS)
        self._batches: dict[int, _BatchSeries] = {}
        self._real_tokens = 0
        self._padded_tokens = 0
        self._events = dict.fromkeys(SEQUENCE_EVENTS, 0)
        self._last_inference_ms = 0
        # Gauges: single attribute stores, atomic under the GIL.
        self._open_sequences = 0
        self._state_bytes = 0
        self._pending = 0
        self._load_seconds: float | None = None
        self._providers: tuple[str, ...] = ()

    # ----------------------------------------------------------------- hooks (hot path)

    def request_finished(self, *, api: str, kind: str, code: object, seconds: float,
                         texts: int) -> None:
        """One gRPC request (unary call or one stream message) finished with ``code``.

        ``seconds`` is end to end inside the servicer; ``texts`` the texts it carried.
        """
        try:
            try:  # OK first: an identity test is cheaper than hashing an Enum
                series = self._ok[api][kind] if code is _OK else self._series[api][kind][code]
            except KeyError:
                series = self._bind(api, kind, code)
            ns = int(seconds * _NS)
            index = bisect_left(REQUEST_BUCKETS, seconds) if self.histograms else -1
            ok = series.ok
            now_ms = time.time_ns() // 1_000_000 if ok else 0
            with self._lock:
                hist = series.hist
                hist.count += 1
                hist.total += ns
                if index >= 0:
                    hist.counts[index] += 1
                if ok:
                    series.texts += texts
                    self._last_inference_ms = max(self._last_inference_ms, now_ms)
        except Exception:  # never let telemetry break a request
            log.exception("telemetry.request_finished failed")

    def rows_executed(self, *, queue_seconds: Sequence[float], tokenize_seconds: float,
                      input_seconds: float, infer_seconds: float, output_seconds: float,
                      batch_size: int, real_tokens: int, padded_tokens: int) -> None:
        """One successful ONNX Runtime call over ``batch_size`` rows.

        ``queue_seconds``: each row's wait from enqueue to dispatch (one entry per row).
        ``tokenize_seconds``: time spent tokenizing this batch's rows (0 if not applicable).
        ``input/infer/output_seconds``: building the input tensors, ``session.run``, and
        turning outputs into predictions/state. ``real_tokens``: Σ row lengths;
        ``padded_tokens``: cells of the padded ``input_ids`` tensor (batch × time), so the
        padding ratio ``padded_tokens / real_tokens`` is ≥ 1.
        """
        try:
            input_ns = int(input_seconds * _NS)
            infer_ns = int(infer_seconds * _NS)
            output_ns = int(output_seconds * _NS)
            rows = len(queue_seconds)
            queue_ns = int(sum(queue_seconds) * _NS)
            tokenize_ns = int(tokenize_seconds * _NS)
            histograms = self.histograms
            if histograms:  # bucket indices outside the lock: pure functions of the inputs
                stage = STAGE_BUCKETS
                waits = [bisect_left(stage, wait) for wait in queue_seconds]
                input_i = bisect_left(stage, input_seconds)
                infer_i = bisect_left(stage, infer_seconds)
                output_i = bisect_left(stage, output_seconds)
                tokenize_i = bisect_left(TOKENIZE_BUCKETS, tokenize_seconds)
                ratio = padded_tokens / real_tokens if real_tokens > 0 else 0.0
                padding_i = bisect_left(PADDING_BUCKETS, ratio)
            with self._lock:
                batch = self._batches.get(batch_size)
                if batch is None:
                    batch = self._batches[batch_size] = _BatchSeries(batch_size)
                batch.count += 1
                batch.input_ns += input_ns
                batch.infer_ns += infer_ns
                batch.output_ns += output_ns
                queue, tokenize = self._queue, self._tokenize
                queue.count += rows
                queue.total += queue_ns
                tokenize.count += 1
                tokenize.total += tokenize_ns
                self._real_tokens += real_tokens
                self._padded_tokens += padded_tokens
                if not histograms:
                    return
                counts = queue.counts
                for index in waits:
                    counts[index] += 1
                tokenize.counts[tokenize_i] += 1
                phase = self._input
                phase.count += 1
                phase.total += input_ns
                phase.counts[input_i] += 1
                phase = self._infer
                phase.count += 1
                phase.total += infer_ns
                phase.counts[infer_i] += 1
                phase = self._output
                phase.count += 1
                phase.total += output_ns
                phase.counts[output_i] += 1
                if real_tokens > 0:
                    padding = self._padding
                    padding.count += 1
                    padding.total += ratio
                    padding.counts[padding_i] += 1
        except Exception:
            log.exception("telemetry.rows_executed failed")

    def sequence_event(self, event: str) -> None:
        """Count a sequence lifecycle event: one of SEQUENCE_EVENTS."""
        try:
            with self._lock:
                if event in self._events:
                    self._events[event] += 1
                else:
                    self._events[_OTHER] = self._events.get(_OTHER, 0) + 1
        except Exception:
            log.exception("telemetry.sequence_event failed")

    def set_open_sequences(self, n: int, state_bytes: int) -> None:
        """Open sequences now and the bytes their carried state occupies."""
        self._open_sequences = n
        self._state_bytes = state_bytes

    def set_pending(self, n: int) -> None:
        """Requests (or rows) accepted but not finished yet, as the batcher counts them."""
        self._pending = n

    # ------------------------------------------------------------------ rarely called

    def set_load_seconds(self, seconds: float) -> None:
        """Wall time it took to load this model version (session creation + warm-up)."""
        self._load_seconds = float(seconds)

    def set_execution_providers(self, providers: Iterable[str] | str) -> None:
        """The ONNX Runtime execution providers in use, highest priority first."""
        self._providers = (providers,) if isinstance(providers, str) else tuple(providers)

    # ------------------------------------------------------------------------- views

    def snapshot(self) -> TelemetrySnapshot:
        """A consistent copy of every number (one lock acquisition)."""
        snap = TelemetrySnapshot()
        snap.model, snap.version = self.model, self.version
        with self._lock:
            snap.requests = [series.copy() for series in self._all_series]
            snap.queue = self._queue.copy()
            snap.tokenize = self._tokenize.copy()
            snap.phases = {"input": self._input.copy(), "infer": self._infer.copy(),
                           "output": self._output.copy()}
            snap.padding = self._padding.copy()
            snap.batches = [b.copy() for b in sorted(self._batches.values(),
                                                     key=lambda b: b.size)]
            snap.real_tokens, snap.padded_tokens = self._real_tokens, self._padded_tokens
            snap.sequence_events = dict(self._events)
            snap.last_inference_ms = self._last_inference_ms
        snap.open_sequences, snap.state_bytes = self._open_sequences, self._state_bytes
        snap.pending = self._pending
        snap.load_seconds, snap.providers = self._load_seconds, self._providers
        return snap

    def statistics(self) -> service_pb2.ModelStatistics:
        """KServe v2 / Triton ``ModelStatistics``, cumulative since this object was created."""
        return statistics_from_snapshot(self.snapshot())

    # ------------------------------------------------------------------------ internal

    def _bind(self, api: str, kind: str, code: object) -> _RequestSeries:
        """Create (or find) the series for a key; bounded label values, under the lock."""
        api_label = api if api in APIS else _OTHER
        kind_label = kind if kind in KINDS else _OTHER
        code_label = _code_name(code)
        with self._lock:
            by_code = self._series.setdefault(api, {}).setdefault(kind, {})
            if code in by_code:
                return by_code[code]
            for series in self._all_series:  # same labels reached through another key
                if (series.api, series.kind, series.code) == (api_label, kind_label, code_label):
                    break
            else:
                series = _RequestSeries(api_label, kind_label, code_label)
                self._all_series.append(series)
            by_code[code] = series
            if code is _OK:
                self._ok.setdefault(api, {})[kind] = series
            return series


def _duration(count: int, ns: int) -> service_pb2.StatisticDuration:
    return service_pb2.StatisticDuration(count=count, ns=ns)


def statistics_from_snapshot(snap: TelemetrySnapshot) -> service_pb2.ModelStatistics:
    """Build ``ModelStatistics`` from a snapshot (see the module invariants)."""
    ok = [s for s in snap.requests if s.ok]
    failed = [s for s in snap.requests if not s.ok]
    rows = sum(b.size * b.count for b in snap.batches)
    stats = service_pb2.InferStatistics(
        success=_duration(sum(s.hist.count for s in ok), sum(s.hist.total for s in ok)),
        fail=_duration(sum(s.hist.count for s in failed), sum(s.hist.total for s in failed)),
        queue=_duration(snap.queue.count, snap.queue.total),
        compute_input=_duration(rows, sum(b.size * b.input_ns for b in snap.batches)),
        compute_infer=_duration(rows, sum(b.size * b.infer_ns for b in snap.batches)),
        compute_output=_duration(rows, sum(b.size * b.output_ns for b in snap.batches)),
    )
    batch_stats = [
        service_pb2.InferBatchStatistics(
            batch_size=b.size,
            compute_input=_duration(b.count, b.input_ns),
            compute_infer=_duration(b.count, b.infer_ns),
            compute_output=_duration(b.count, b.output_ns),
        )
        for b in snap.batches
    ]
    return service_pb2.ModelStatistics(
        name=snap.model,
        version=snap.version,
        last_inference=snap.last_inference_ms,
        inference_count=sum(s.texts for s in ok),
        execution_count=sum(b.count for b in snap.batches),
        inference_stats=stats,
        batch_stats=batch_stats,
    )


# --------------------------------------------------------------------------- Prometheus

def _cumulative(hist: _Hist, scale: float = 1.0) -> tuple[list[tuple[str, float]], float]:
    """Prometheus bucket list (cumulative, ending in +Inf) and sum of a _Hist."""
    buckets, running = [], 0
    for bound, count in zip(hist.bounds, hist.counts, strict=False):
        running += count
        buckets.append((floatToGoString(bound), running))
    buckets.append(("+Inf", running + hist.counts[-1]))
    return buckets, hist.total * scale


def _batch_size_buckets(batches: list[_BatchSeries]) -> tuple[list[tuple[str, float]], float]:
    buckets = []
    for bound in BATCH_SIZE_BUCKETS:
        buckets.append((floatToGoString(bound), sum(b.count for b in batches if b.size <= bound)))
    buckets.append(("+Inf", sum(b.count for b in batches)))
    return buckets, float(sum(b.size * b.count for b in batches))


def build_info() -> dict[str, str]:
    """Labels of ``rnnserve_build_info``: versions of rnnserve and its runtime pieces."""

    def version_of(*names: str) -> str:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return "unknown"

    return {
        "version": version_of("rnnserve"),
        "python": ".".join(map(str, sys.version_info[:3])),
        "onnxruntime": version_of("onnxruntime-gpu", "onnxruntime"),
        "grpcio": version_of("grpcio"),
    }


class TelemetryCollector:
    """Turns every model's snapshot into Prometheus families at scrape time."""

    def __init__(self, server: ServerTelemetry) -> None:
        self._server = server
        self._build_info = build_info()

    def describe(self) -> list:
        return []  # families are dynamic; skip the registry's duplicate-name check

    def collect(self):
        mv = ["model", "version"]
        duration = HistogramMetricFamily(
            "rnnserve_request_duration_seconds",
            "End-to-end request latency inside the server (one stream message = one request).",
            labels=mv + ["api", "kind", "code"])
        requests = CounterMetricFamily(
            "rnnserve_requests", "Finished requests by API, call kind and gRPC status.",
            labels=mv + ["api", "kind", "code"])
        failures = CounterMetricFamily(
            "rnnserve_request_failures", "Requests that ended with a gRPC status other than OK.",
            labels=mv + ["api", "kind", "code"])
        texts = CounterMetricFamily(
            "rnnserve_texts", "Texts in successfully finished requests.",
            labels=mv + ["api", "kind"])
        queue = HistogramMetricFamily(
            "rnnserve_queue_wait_seconds", "Per-row wait in the batcher queue before execution.",
            labels=mv)
        compute = HistogramMetricFamily(
            "rnnserve_compute_seconds",
            "Per-batch ONNX Runtime phases: input tensors, session.run (infer), outputs.",
            labels=mv + ["phase"])
        tokenize = HistogramMetricFamily(
            "rnnserve_tokenize_seconds", "Tokenization time of one batch's rows.", labels=mv)
        batch_size = HistogramMetricFamily(
            "rnnserve_batch_size", "Rows per ONNX Runtime call.", labels=mv)
        padding = HistogramMetricFamily(
            "rnnserve_padding_ratio",
            "Padded input cells / real tokens per ONNX Runtime call (1 = no padding).",
            labels=mv)
        executions = CounterMetricFamily(
            "rnnserve_executions", "ONNX Runtime calls (batches) executed.", labels=mv)
        tokens = CounterMetricFamily(
            "rnnserve_tokens", "Real (unpadded) tokens run through the model.", labels=mv)
        padded = CounterMetricFamily(
            "rnnserve_padded_tokens", "Input tensor cells including padding.", labels=mv)
        pending = GaugeMetricFamily(
            "rnnserve_pending_requests", "Requests accepted and not finished yet.", labels=mv)
        open_seq = GaugeMetricFamily(
            "rnnserve_open_sequences", "Sequences holding state on the server.", labels=mv)
        state = GaugeMetricFamily(
            "rnnserve_sequence_state_bytes", "Memory held by open sequences' state.", labels=mv)
        events = CounterMetricFamily(
            "rnnserve_sequence_events",
            "Sequence lifecycle events (started, ended, expired, evicted, restarted, exported, "
            "imported).",
            labels=mv + ["event"])
        last = GaugeMetricFamily(
            "rnnserve_last_inference_timestamp_seconds",
            "Unix time of the last successful request (0 = none yet).", labels=mv)
        load = GaugeMetricFamily(
            "rnnserve_model_load_seconds", "Time it took to load the model version.", labels=mv)
        provider = InfoMetricFamily(
            "rnnserve_execution_provider", "ONNX Runtime execution provider in use.",
            labels=mv)
        for telemetry in self._server.models():
            snap = telemetry.snapshot()
            key = [snap.model, snap.version]
            for series in snap.requests:
                labels = key + [series.api, series.kind, series.code]
                buckets, total = _cumulative(series.hist, 1e-9)
                duration.add_metric(labels, buckets, total)
                requests.add_metric(labels, series.hist.count)
                if not series.ok:
                    failures.add_metric(labels, series.hist.count)
            for api in sorted({s.api for s in snap.requests}):
                for kind in sorted({s.kind for s in snap.requests if s.api == api}):
                    texts.add_metric(key + [api, kind], sum(
                        s.texts for s in snap.requests if s.ok and (s.api, s.kind) == (api, kind)))
            queue.add_metric(key, *_cumulative(snap.queue, 1e-9))
            for phase in PHASES:
                compute.add_metric(key + [phase], *_cumulative(snap.phases[phase], 1e-9))
            tokenize.add_metric(key, *_cumulative(snap.tokenize, 1e-9))
            batch_size.add_metric(key, *_batch_size_buckets(snap.batches))
            padding.add_metric(key, *_cumulative(snap.padding))
            executions.add_metric(key, sum(b.count for b in snap.batches))
            tokens.add_metric(key, snap.real_tokens)
            padded.add_metric(key, snap.padded_tokens)
            pending.add_metric(key, snap.pending)
            open_seq.add_metric(key, snap.open_sequences)
            state.add_metric(key, snap.state_bytes)
            for event, count in snap.sequence_events.items():
                events.add_metric(key + [event], count)
            last.add_metric(key, snap.last_inference_ms / 1000.0)
            if snap.load_seconds is not None:
                load.add_metric(key, snap.load_seconds)
            for name in snap.providers[:1]:
                provider.add_metric(key, {"provider": name})
        yield InfoMetricFamily("rnnserve_build", "rnnserve build and runtime versions.",
                               value=self._build_info)
        yield from (duration, requests, failures, texts, queue, compute, tokenize, batch_size,
                    padding, executions, tokens, padded, pending, open_seq, state, events, last,
                    load, provider)


class ServerTelemetry:
    """All telemetry of one server: its models and its own ``CollectorRegistry``.

    ``enabled=False``: models are created with ``histograms=False`` and nothing is registered,
    so a scrape (if anyone started an endpoint anyway) returns an empty body; statistics()
    keeps working because KServe statistics are part of the protocol.
    """

    def __init__(self, *, enabled: bool = True, process_metrics: bool = True,
                 multiprocess_dir=None) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=False)
        self._models: dict[tuple[str, str], ModelTelemetry] = {}
        self._lock = threading.Lock()
        if enabled:
            self.registry.register(TelemetryCollector(self))
            if process_metrics:
                ProcessCollector(registry=self.registry)
                GCCollector(registry=self.registry)

    def model(self, name: str, version: str | int) -> ModelTelemetry:
        """The telemetry of ``name``/``version``, created on first use (idempotent)."""
        key = (name, str(version))
        with self._lock:
            telemetry = self._models.get(key)
            if telemetry is None:
                telemetry = ModelTelemetry(name, key[1], histograms=self.enabled)
                self._models[key] = telemetry
            return telemetry

    def remove_model(self, name: str, version: str | int) -> None:
        """Forget a model version (unloaded); its series disappear from the next scrape."""
        with self._lock:
            self._models.pop((name, str(version)), None)

    def models(self) -> list[ModelTelemetry]:
        with self._lock:
            return list(self._models.values())

    def exposition(self) -> bytes:
        """The text exposition format of this server's registry (what /metrics serves)."""
        return generate_latest(self.registry)


def prepare_multiprocess_dir(path) -> None:
    """Placeholder until the multiprocess telemetry lands."""


def mark_process_dead(pid: int, path) -> None:
    """Placeholder until the multiprocess telemetry lands."""
