"""``rnnserve_pending_requests`` is true at scrape time, also after a cancellation storm.

The HPA (deploy/k8s/hpa.yaml) scales on this gauge. It used to be set only when a batch
finished, so rows that clients cancelled while queued were released (dropped before costing
compute) without the gauge noticing: an idle server kept reporting thousands of pending rows
until the next batch ran. Here a real server is flooded by 8 connections that each keep 100
Classify calls in flight, the client then cancels everything, and /metrics is scraped once
the server has really released every row.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter

import grpc
from prometheus_client.parser import text_string_to_metric_families
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server

LSTM = "tiny-lstm"
CONNECTIONS, IN_FLIGHT = 8, 100
REQUEST = pb.ClassifyRequest(texts=["a great film with fine actors"] * 4, model=LSTM)


class Flood:
    """Closed-loop Classify calls on several connections until ``cancel()``."""

    def __init__(self, channels: list[grpc.Channel]) -> None:
        self.stubs = [sentiment_pb2_grpc.SentimentStub(channel) for channel in channels]
        self.codes: Counter = Counter()
        self._in_flight: set = set()
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        for stub in self.stubs:
            for _ in range(IN_FLIGHT):
                self._issue(stub)

    def cancel(self) -> int:
        """Stop issuing and cancel every call still in flight; how many were."""
        with self._lock:
            self._stopping = True
            in_flight = list(self._in_flight)
        for future in in_flight:
            future.cancel()
        return len(in_flight)

    def _issue(self, stub) -> None:
        future = stub.Classify.future(REQUEST, timeout=120)
        with self._lock:
            if self._stopping:
                future.cancel()
                return
            self._in_flight.add(future)
        future.add_done_callback(lambda done: self._done(stub, done))

    def _done(self, stub, future) -> None:
        with self._lock:
            self._in_flight.discard(future)
            stopping = self._stopping
        self.codes[future.code()] += 1
        if not stopping:
            self._issue(stub)


def pending(url: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values = [sample.value for family in text_string_to_metric_families(text)
              for sample in family.samples
              if sample.name == "rnnserve_pending_requests" and sample.labels["model"] == LSTM]
    assert len(values) == 1, values
    return values[0]


def wait_until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_pending_gauge_is_zero_after_a_cancelled_flood(tiny_repository):
    # Small batches keep a deep queue behind the worker, as under a real overload.
    with start_server(tiny_repository, metrics_host="127.0.0.1", metrics_port=0,
                      max_batch_size=4, max_queue_delay_us=0) as server:
        url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
        scheduler = server.registry.get(LSTM).scheduler
        channels = [server.channel([("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(CONNECTIONS)]
        flood = Flood(channels)
        try:
            flood.start()
            wait_until(lambda: scheduler.admitted >= 400, "a queue to build up")
            assert pending(url) > 0                      # the queue is visible while it exists
            cancelled = flood.cancel()
        finally:
            for channel in channels:
                channel.close()
        assert cancelled > 0
        assert set(flood.codes) <= {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED,
                                    grpc.StatusCode.RESOURCE_EXHAUSTED}, flood.codes

        def released() -> bool:
            return all(scheduler.admitted == 0 and not time.sleep(0.05) for _ in range(3))

        wait_until(released, "the server to release every admitted row")
        assert pending(url) == 0

        # Admission really is free again, and the gauge follows it back down.
        with server.channel() as channel:
            stub = sentiment_pb2_grpc.SentimentStub(channel)
            burst = [stub.Classify.future(REQUEST, timeout=60) for _ in range(200)]
            assert all(len(call.result().predictions) == 4 for call in burst)
        wait_until(lambda: scheduler.admitted == 0, "the burst to finish")
        assert pending(url) == 0
