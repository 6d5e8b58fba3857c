"""Per-model telemetry on prometheus_client's own metric types: one source for Prometheus
and for KServe ``ModelStatistics``, in one process or summed over several.

Design:

- A :class:`ServerTelemetry` owns one set of prometheus_client ``Counter`` / ``Histogram`` /
  ``Gauge`` objects (never registered on the global registry) and one ``CollectorRegistry``
  whose only collector is a view over those metrics. Each served model version gets a
  :class:`ModelTelemetry` holding the label-bound children its hooks (docs/architecture.md §3)
  update, so the hot path does no label lookups.
- ``multiprocess_dir=None``: values live in this process (prometheus_client's ``MutexValue``),
  so several servers in one process stay separate.
- ``multiprocess_dir=DIR``: every value is also written to ``DIR/<type>_<pid>.db``
  (prometheus_client's multiprocess file format). The view, and so ``/metrics`` and
  ``statistics()`` of *any* process using DIR, merges the files of every process: counters and
  histograms are summed (and survive a process's death), live gauges are summed or maxed over
  the processes alive (``mark_process_dead`` drops a dead one's), and
  ``rnnserve_last_inference_timestamp_seconds`` is the max over all.
- The value class is chosen per ``ServerTelemetry``, not from ``PROMETHEUS_MULTIPROC_DIR``:
  children are created with prometheus_client's ``values.ValueClass`` swapped (under a module
  lock) for a file-backed class bound to DIR (server/multiprocess_values.py), or for
  ``MutexValue``. So no environment variable
  is needed, its value at import time does not matter, and single-process servers stay
  in-memory even in a process where it is set. Only rnnserve's own metrics get this treatment.
- ``ModelTelemetry.statistics()`` reads the same merged samples the scrape reads, so the two
  views agree (identities below); durations are exported in seconds and converted to integer
  nanoseconds (rounded) for ``ModelStatistics``.
- With metrics disabled (``enabled=False``) nothing is registered (an empty scrape) and the
  hooks record only what ``ModelStatistics`` needs (request and queue histograms shrink to one
  bucket).

Invariants (checked by tests/metrics/):

- ``inference_stats.success`` = (Σ ``rnnserve_request_duration_seconds_count{code="OK"}``,
  Σ ``_sum`` × 1e9); ``fail`` likewise for code != OK; ``_count`` = ``rnnserve_requests_total``;
- ``inference_count`` = Σ ``rnnserve_texts_total`` (texts of successful requests);
- ``execution_count`` = Σ ``rnnserve_batch_executions_total`` = ``rnnserve_executions_total``
  = ``rnnserve_batch_size_count``; ``batch_stats[size]`` = (``rnnserve_batch_executions_total
  {batch_size}``, ``rnnserve_batch_compute_seconds_total{batch_size,phase}`` × 1e9);
- ``inference_stats.queue`` = (``rnnserve_queue_wait_seconds_count``, ``_sum``): one per row;
- ``inference_stats.compute_*`` charge every row of a batch the whole batch's duration, as
  Triton does: count = Σ size·executions, ns = Σ size·ns over ``batch_stats``;
- gauges are written when the value changes (the batcher sets pending on every admit and
  release), so a scrape sees the current value;
- every hook is cheap and never raises.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample
from tritonclient.grpc import service_pb2

from .multiprocess_values import child as _child
from .multiprocess_values import mark_process_dead, prepare_multiprocess_dir, value_class

__all__ = ["ModelTelemetry", "ServerTelemetry", "mark_process_dead", "prepare_multiprocess_dir"]

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
#: Rows per ONNX Runtime call.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Padded tensor cells / real tokens; 1.0 means no padding at all.
PADDING_BUCKETS = (1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0, 8.0, 16.0)
#: With metrics disabled only count and sum matter: every finite value lands in the first
#: bucket (prometheus_client wants one besides +Inf), so observe() is two additions.
_ONE_BUCKET = (sys.float_info.max,)

APIS = ("text", "kserve")
KINDS = ("unary", "stream")
SEQUENCE_EVENTS = ("started", "ended", "expired", "evicted", "restarted", "exported",
                   "imported")
PHASES = ("input", "infer", "output")
_OTHER = "other"
_OK = grpc.StatusCode.OK
_NS = 1_000_000_000
_MV = ("model", "version")
_PROVIDER_INFO = "rnnserve_execution_provider_info"


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


# ------------------------------------------------------------------------- metric families

class _Families:
    """Every rnnserve metric of one ServerTelemetry (parents; children are bound per model)."""

    def __init__(self, enabled: bool) -> None:
        def hist(name, doc, labels, buckets):
            return Histogram(name, doc, _MV + labels, registry=None,
                             buckets=buckets if enabled else _ONE_BUCKET)

        def counter(name, doc, labels=()):
            return Counter(name, doc, _MV + labels, registry=None)

        def gauge(name, doc, mode, labels=()):
            return Gauge(name, doc, _MV + labels, registry=None, multiprocess_mode=mode)

        rq = ("api", "kind", "code")
        self.duration = hist(
            "rnnserve_request_duration_seconds",
            "End-to-end request latency inside the server (one stream message = one request).",
            rq, REQUEST_BUCKETS)
        self.requests = counter("rnnserve_requests",
                                "Finished requests by API, call kind and gRPC status.", rq)
        self.failures = counter("rnnserve_request_failures",
                                "Requests that ended with a gRPC status other than OK.", rq)
        self.texts = counter("rnnserve_texts", "Texts in successfully finished requests.",
                             ("api", "kind"))
        self.queue = hist("rnnserve_queue_wait_seconds",
                          "Per-row wait in the batcher queue before execution.", (),
                          STAGE_BUCKETS)
        self.compute = hist(
            "rnnserve_compute_seconds",
            "Per-batch ONNX Runtime phases: input tensors, session.run (infer), outputs.",
            ("phase",), STAGE_BUCKETS)
        self.tokenize = hist("rnnserve_tokenize_seconds",
                             "Tokenization time of one batch's rows.", (), TOKENIZE_BUCKETS)
        self.batch_size = hist("rnnserve_batch_size", "Rows per ONNX Runtime call.", (),
                               BATCH_SIZE_BUCKETS)
        self.padding = hist(
            "rnnserve_padding_ratio",
            "Padded input cells / real tokens per ONNX Runtime call (1 = no padding).", (),
            PADDING_BUCKETS)
        self.executions = counter("rnnserve_executions", "ONNX Runtime calls (batches) executed.")
        self.batch_executions = counter(
            "rnnserve_batch_executions",
            "ONNX Runtime calls by exact batch size (KServe batch_stats).", ("batch_size",))
        self.batch_compute = counter(
            "rnnserve_batch_compute_seconds",
            "Time in each ONNX Runtime phase by exact batch size (KServe batch_stats).",
            ("batch_size", "phase"))
        self.tokens = counter("rnnserve_tokens", "Real (unpadded) tokens run through the model.")
        self.padded = counter("rnnserve_padded_tokens", "Input tensor cells including padding.")
        self.events = counter(
            "rnnserve_sequence_events",
            "Sequence lifecycle events (started, ended, expired, evicted, restarted, exported, "
            "imported).", ("event",))
        # Gauges: 'livesum' totals over the processes alive, 'max' survives a process.
        self.pending = gauge("rnnserve_pending_requests",
                             "Rows (texts and chunks) admitted and not finished yet.", "livesum")
        self.open_sequences = gauge("rnnserve_open_sequences",
                                    "Sequences holding state on the server.", "livesum")
        self.state_bytes = gauge("rnnserve_sequence_state_bytes",
                                 "Memory held by open sequences' state.", "livesum")
        self.last_inference = gauge("rnnserve_last_inference_timestamp_seconds",
                                    "Unix time of the last successful request (0 = none yet).",
                                    "max")
        self.load_seconds = gauge("rnnserve_model_load_seconds",
                                  "Time it took to load the model version.", "livemax")
        # An info metric as a gauge of 1 (multiprocess files cannot hold Info); the text
        # exposition is the same as Info's. A provider that was replaced is set to 0 and
        # left out of the view.
        self.provider = gauge(_PROVIDER_INFO, "ONNX Runtime execution provider in use.",
                              "livemax", ("provider",))
        #: The per-model families (labelled model, version first).
        self.per_model = [value for value in vars(self).values() if hasattr(value, "collect")]
        # The one family without a model: requests no served version took.
        self.unrouted = Counter(
            "rnnserve_unrouted_requests",
            "Inference requests no served version took (unknown model or version, no "
            "default model, version not ready), by API, call kind and gRPC status.",
            ("api", "kind", "code"), registry=None)
        self.all = [*self.per_model, self.unrouted]
        #: Families statistics() reads (others are skipped when collecting in-process).
        self.for_statistics = [self.duration, self.texts, self.queue, self.batch_executions,
                               self.batch_compute, self.last_inference]


class _Series:
    """Children of one (api, kind, code) request series."""

    __slots__ = ("duration", "failures", "ok", "requests", "texts")


class _BatchSize:
    """Children of one exact batch size."""

    __slots__ = ("count", "infer", "input", "output")


class ModelTelemetry:
    """The hooks of one served model version; values live in its server's metrics.

    Create through :meth:`ServerTelemetry.model`. ``histograms`` is False when metrics are
    disabled: then only what ``statistics()`` needs is recorded.
    """

    def __init__(self, server: ServerTelemetry, model: str, version: str) -> None:
        self.model = model
        self.version = str(version)
        self.histograms = server.enabled
        self._server = server
        self._families = families = server._families
        self._lock = threading.Lock()           # guards lazy binding only
        key = (model, self.version)
        self._key = key
        # (api, kind, code as passed) -> series; read without the lock (atomic dict reads).
        self._series: dict[tuple, _Series] = {}
        self._ok: dict[str, dict[str, _Series]] = {}
        for api in APIS:
            for kind in KINDS:
                self._bind(api, kind, _OK)
        self._queue = self._child(families.queue)
        self._compute = [self._child(families.compute, phase) for phase in PHASES]
        self._tokenize = self._child(families.tokenize)
        self._batch_size = self._child(families.batch_size)
        self._padding = self._child(families.padding)
        self._executions = self._child(families.executions)
        self._tokens = self._child(families.tokens)
        self._padded = self._child(families.padded)
        self._sizes: dict[int, _BatchSize] = {}
        self._events = {event: self._child(families.events, event) for event in SEQUENCE_EVENTS}
        self._pending = self._child(families.pending)
        self._open = self._child(families.open_sequences)
        self._state = self._child(families.state_bytes)
        self._last = self._child(families.last_inference)
        self._last_ms = 0
        self._load = None
        self._provider: str | None = None

    # ----------------------------------------------------------------- hooks (hot path)

    def request_finished(self, *, api: str, kind: str, code: object, seconds: float,
                         texts: int) -> None:
        """One gRPC request (unary call or one stream message) finished with ``code``.

        ``seconds`` is end to end inside the servicer; ``texts`` the texts it carried.
        """
        try:
            try:  # OK first: an identity test is cheaper than hashing an Enum
                series = self._ok[api][kind] if code is _OK else self._series[api, kind, code]
            except KeyError:
                series = self._bind(api, kind, code)
            series.duration.observe(seconds)
            series.requests.inc()
            if series.ok:
                series.texts.inc(texts)
                now_ms = time.time_ns() // 1_000_000
                if now_ms != self._last_ms:       # one write per millisecond at most
                    self._last_ms = now_ms
                    self._last.set(now_ms / 1000)
            else:
                series.failures.inc()
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
            size = self._sizes.get(batch_size) or self._bind_size(batch_size)
            observe = self._queue.observe
            for wait in queue_seconds:
                observe(wait)
            size.count.inc()
            size.input.inc(input_seconds)
            size.infer.inc(infer_seconds)
            size.output.inc(output_seconds)
            if not self.histograms:
                return
            self._executions.inc()
            self._batch_size.observe(batch_size)
            compute = self._compute
            compute[0].observe(input_seconds)
            compute[1].observe(infer_seconds)
            compute[2].observe(output_seconds)
            self._tokenize.observe(tokenize_seconds)
            self._tokens.inc(real_tokens)
            self._padded.inc(padded_tokens)
            if real_tokens > 0:
                self._padding.observe(padded_tokens / real_tokens)
        except Exception:
            log.exception("telemetry.rows_executed failed")

    def sequence_event(self, event: str) -> None:
        """Count a sequence lifecycle event: one of SEQUENCE_EVENTS (anything else: other)."""
        try:
            counter = self._events.get(event)
            if counter is None:
                counter = self._bind_event(_OTHER)
            counter.inc()
        except Exception:
            log.exception("telemetry.sequence_event failed")

    def set_open_sequences(self, n: int, state_bytes: int) -> None:
        """Open sequences now and the bytes their carried state occupies."""
        try:
            self._open.set(n)
            self._state.set(state_bytes)
        except Exception:
            log.exception("telemetry.set_open_sequences failed")

    def set_pending(self, n: int) -> None:
        """Rows admitted and not finished yet; the batcher calls it on every change."""
        try:
            self._pending.set(n)
        except Exception:
            log.exception("telemetry.set_pending failed")

    # ------------------------------------------------------------------ rarely called

    def set_load_seconds(self, seconds: float) -> None:
        """Wall time it took to load this model version (session creation + warm-up)."""
        try:
            if self._load is None:
                self._load = self._child(self._families.load_seconds)
            self._load.set(float(seconds))
        except Exception:
            log.exception("telemetry.set_load_seconds failed")

    def set_execution_providers(self, providers: Iterable[str] | str) -> None:
        """The ONNX Runtime execution providers in use, highest priority first (the first
        is exported as ``rnnserve_execution_provider_info{provider}``)."""
        try:
            providers = (providers,) if isinstance(providers, str) else tuple(providers)
            first = str(providers[0]) if providers else None
            with self._lock:
                if first == self._provider:
                    return
                if self._provider is not None:
                    self._server._retire(self._families.provider,
                                         [*self._key, self._provider])
                if first is not None:
                    self._child(self._families.provider, first).set(1)
                self._provider = first
        except Exception:
            log.exception("telemetry.set_execution_providers failed")

    # ------------------------------------------------------------------------- views

    def snapshot(self) -> list[Sample]:
        """Every sample of this model version, as a scrape of this server would show it
        (totals over all processes in multiprocess mode)."""
        return [sample for family in self._server._collect()
                for sample in family.samples if self._mine(sample)]

    def statistics(self) -> service_pb2.ModelStatistics:
        """KServe v2 / Triton ``ModelStatistics`` from the same samples a scrape reads."""
        samples = [sample for family in self._server._collect(statistics=True)
                   for sample in family.samples if self._mine(sample)]
        return statistics_from_samples(self.model, self.version, samples)

    # ------------------------------------------------------------------------ internal

    def _mine(self, sample: Sample) -> bool:
        labels = sample.labels
        return labels.get("model") == self.model and labels.get("version") == self.version

    def _child(self, metric, *labels: str):
        return _child(metric, self._server._value_class, self._key + labels)

    def _bind(self, api: str, kind: str, code: object) -> _Series:
        """Create (or find) the series for a key; label values are bounded."""
        api_label = api if api in APIS else _OTHER
        kind_label = kind if kind in KINDS else _OTHER
        code_label = _code_name(code)
        labels = (api_label, kind_label, code_label)
        families = self._families
        with self._lock:
            series = _Series()
            series.ok = code_label == "OK"
            series.duration = self._child(families.duration, *labels)
            series.requests = self._child(families.requests, *labels)
            series.texts = self._child(families.texts, api_label, kind_label)
            series.failures = None if series.ok else self._child(families.failures, *labels)
            self._series[api, kind, code] = series
            if code is _OK:
                self._ok.setdefault(api, {})[kind] = series
            return series

    def _bind_size(self, batch_size: int) -> _BatchSize:
        size = int(batch_size)
        families = self._families
        with self._lock:
            bound = _BatchSize()
            bound.count = self._child(families.batch_executions, str(size))
            bound.input, bound.infer, bound.output = (
                self._child(families.batch_compute, str(size), phase) for phase in PHASES)
            self._sizes[batch_size] = bound
            return bound

    def _bind_event(self, event: str):
        with self._lock:
            counter = self._events.get(event)
            if counter is None:
                counter = self._events[event] = self._child(self._families.events, event)
            return counter

    def _zero_live_gauges(self) -> None:
        self.set_pending(0)
        self.set_open_sequences(0, 0)
        if self._load is not None:
            self._load.set(0)
        if self._provider is not None:
            self._child(self._families.provider, self._provider).set(0)


def _duration(count: float, seconds: float) -> service_pb2.StatisticDuration:
    return service_pb2.StatisticDuration(count=int(count), ns=round(seconds * _NS))


def statistics_from_samples(model: str, version: str,
                            samples: Iterable[Sample]) -> service_pb2.ModelStatistics:
    """Build ``ModelStatistics`` from one model's samples (see the module invariants)."""
    ok_count = ok_seconds = fail_count = fail_seconds = texts = 0.0
    queue_count = queue_seconds = last = 0.0
    sizes: dict[int, dict[str, float]] = {}
    for name, labels, value, *_ in samples:
        if name == "rnnserve_request_duration_seconds_count":
            if labels["code"] == "OK":
                ok_count += value
            else:
                fail_count += value
        elif name == "rnnserve_request_duration_seconds_sum":
            if labels["code"] == "OK":
                ok_seconds += value
            else:
                fail_seconds += value
        elif name == "rnnserve_texts_total":
            texts += value
        elif name == "rnnserve_queue_wait_seconds_count":
            queue_count += value
        elif name == "rnnserve_queue_wait_seconds_sum":
            queue_seconds += value
        elif name == "rnnserve_batch_executions_total":
            sizes.setdefault(int(labels["batch_size"]), {})["count"] = value
        elif name == "rnnserve_batch_compute_seconds_total":
            sizes.setdefault(int(labels["batch_size"]), {})[labels["phase"]] = value
        elif name == "rnnserve_last_inference_timestamp_seconds":
            last = max(last, value)
    batch_stats = []
    for size in sorted(sizes):
        numbers = sizes[size]
        count = int(numbers.get("count", 0))
        if count == 0:
            continue
        batch_stats.append(service_pb2.InferBatchStatistics(
            batch_size=size,
            **{f"compute_{phase}": _duration(count, numbers.get(phase, 0.0))
               for phase in PHASES}))
    rows = sum(b.batch_size * b.compute_infer.count for b in batch_stats)

    def charged(phase: str) -> service_pb2.StatisticDuration:
        return service_pb2.StatisticDuration(count=rows, ns=sum(
            b.batch_size * getattr(b, f"compute_{phase}").ns for b in batch_stats))

    stats = service_pb2.InferStatistics(
        success=_duration(ok_count, ok_seconds),
        fail=_duration(fail_count, fail_seconds),
        queue=_duration(queue_count, queue_seconds),
        compute_input=charged("input"),
        compute_infer=charged("infer"),
        compute_output=charged("output"),
    )
    return service_pb2.ModelStatistics(
        name=model,
        version=str(version),
        last_inference=round(last * 1000),
        inference_count=int(texts),
        execution_count=sum(b.compute_infer.count for b in batch_stats),
        inference_stats=stats,
        batch_stats=batch_stats,
    )


# --------------------------------------------------------------------------- Prometheus

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


def _clean(family: Metric) -> Metric:
    """Drop what rnnserve does not export: ``_created`` samples, retired provider infos."""
    if family.name == _PROVIDER_INFO:
        family.samples = [s for s in family.samples if s.value != 0]
    elif family.type in ("counter", "histogram"):
        created = family.name + "_created"
        family.samples = [s for s in family.samples if s.name != created]
    return family


class _View:
    """The registry's one collector: rnnserve's families (merged over processes) + build."""

    def __init__(self, server: ServerTelemetry) -> None:
        self._server = server
        self._build = build_info()

    def describe(self) -> list:
        return []  # families are dynamic; skip the registry's duplicate-name check

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("rnnserve_build", "rnnserve build and runtime versions.",
                               value=self._build)
        yield from self._server._collect()


class ServerTelemetry:
    """All telemetry of one server (or, with ``multiprocess_dir``, of one process of it).

    ``multiprocess_dir``: a directory prepared by :func:`prepare_multiprocess_dir`; this
    process records there and reads everyone's totals from there. No environment variable is
    needed (``PROMETHEUS_MULTIPROC_DIR`` is ignored by rnnserve's metrics; setting it is
    harmless). Process and GC collectors are only added without ``multiprocess_dir`` (they
    would describe just the scraped process).

    ``enabled=False``: nothing is registered, so a scrape returns an empty body, and the hooks
    record only what ``statistics()`` needs (KServe statistics are part of the protocol).
    """

    def __init__(self, *, enabled: bool = True, process_metrics: bool = True,
                 multiprocess_dir: Path | str | None = None) -> None:
        self.enabled = enabled
        self.multiprocess_dir = Path(multiprocess_dir) if multiprocess_dir is not None else None
        self._value_class = (values.MutexValue if multiprocess_dir is None
                             else value_class(self.multiprocess_dir))
        self._families = _Families(enabled)
        self.registry = CollectorRegistry(auto_describe=False)
        self._models: dict[tuple[str, str], ModelTelemetry] = {}
        self._unrouted: dict[tuple[str, str, str], object] = {}
        self._lock = threading.Lock()
        if enabled:
            self.registry.register(_View(self))
            if process_metrics and multiprocess_dir is None:
                ProcessCollector(registry=self.registry)
                GCCollector(registry=self.registry)

    def model(self, name: str, version: str | int) -> ModelTelemetry:
        """The telemetry of ``name``/``version``, created on first use (idempotent)."""
        key = (name, str(version))
        with self._lock:
            telemetry = self._models.get(key)
            if telemetry is None:
                telemetry = self._models[key] = ModelTelemetry(self, name, key[1])
            return telemetry

    def remove_model(self, name: str, version: str | int) -> None:
        """Forget a model version (unloaded). In one process its series disappear from the
        next scrape (a later ``model()`` starts from zero). With ``multiprocess_dir`` the
        value files cannot forget: this process's live gauges of it drop to 0 and its
        counters stay as they are (a reload continues them)."""
        with self._lock:
            telemetry = self._models.pop((name, str(version)), None)
        if self.multiprocess_dir is not None:
            if telemetry is not None:
                telemetry._zero_live_gauges()
            return
        labels = {"model": name, "version": str(version)}
        with warnings.catch_warnings():  # prometheus_client warns if the env var is set
            warnings.simplefilter("ignore")
            for metric in self._families.per_model:
                metric.remove_by_labels(labels)

    def models(self) -> list[ModelTelemetry]:
        with self._lock:
            return list(self._models.values())

    def request_unrouted(self, *, api: str, kind: str, code: object) -> None:
        """One inference request refused before any model version took it."""
        try:
            labels = (api, kind, _code_name(code))
            counter = self._unrouted.get(labels)
            if counter is None:
                with self._lock:
                    counter = self._unrouted.setdefault(labels, _child(
                        self._families.unrouted, self._value_class, labels))
            counter.inc()
        except Exception:  # never let telemetry break a request
            log.exception("telemetry.request_unrouted failed")

    def exposition(self) -> bytes:
        """The text exposition format of this server's registry (what /metrics serves)."""
        return generate_latest(self.registry)

    # ------------------------------------------------------------------------ internal

    def _collect(self, statistics: bool = False) -> Iterator[Metric]:
        """rnnserve's families with current values: this object's metrics, or the merge of
        every process's files in ``multiprocess_dir``."""
        if self.multiprocess_dir is None:
            metrics = self._families.for_statistics if statistics else self._families.all
            for metric in metrics:
                for family in metric.collect():
                    yield _clean(family)
        else:
            files = glob.glob(os.path.join(self.multiprocess_dir, "*.db"))
            for family in MultiProcessCollector.merge(files, accumulate=True):
                yield _clean(family)

    def _retire(self, metric, labels: Sequence[str]) -> None:
        """Take one series out of the exposition: set to 0 (the view hides 0-valued info
        gauges, which is all a file can do) and, in one process, remove it."""
        _child(metric, self._value_class, labels).set(0)
        if self.multiprocess_dir is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                metric.remove(*labels)
