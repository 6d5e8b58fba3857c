"""Helpers of the fault-injection tests: documented statuses, status counting, slow-test skip,
polling, KServe request builders and server-loop introspection."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Callable

import grpc
import pytest
from figures import report
from kserve_wire import raw_bytes, set_parameter

#: Slow tests (soak, large fuzz, sustained load) run only with RNNSERVE_SLOW=1.
slow = pytest.mark.slow
skip_unless_slow = pytest.mark.skipif(os.environ.get("RNNSERVE_SLOW") != "1",
                                      reason="slow test; set RNNSERVE_SLOW=1 to run it")
SLOW = os.environ.get("RNNSERVE_SLOW") == "1"

S = grpc.StatusCode

#: Statuses a client mistake (or fuzz) may legitimately get back (docs/errors.md).
DOCUMENTED = frozenset({S.OK, S.INVALID_ARGUMENT, S.NOT_FOUND, S.FAILED_PRECONDITION,
                        S.ALREADY_EXISTS, S.RESOURCE_EXHAUSTED, S.ABORTED, S.UNIMPLEMENTED})

TEXT_SERVICE = "/rnnserve.v1.Sentiment/"
KSERVE_SERVICE = "/inference.GRPCInferenceService/"

WORDS = ["good", "great", "fine", "awful", "bad", "boring", "fun", "movie", "film", "plot",
         "actors", "the", "a", "and", "but", "not", "very", "really", "loved", "hated",
         "story", "ending", "music"]


#: How far a case got, by the status it ended with: the model lookup (NOT_FOUND), request
#: validation (INVALID_ARGUMENT), the engine (admission, sequences, state: anything else), or
#: a full answer (OK).
DEPTH = {"INVALID_ARGUMENT": "validation", "OK": "answered"}


def depth_of(code: S, details: str) -> str:
    """How far a case got: the model lookup (an unknown model or version), validation, the
    engine (queues, sequences, ORT) or a full answer."""
    if code == S.NOT_FOUND and "Request for unknown model" in details:
        return "lookup"
    return DEPTH.get(code.name, "engine")


class StatusTally:
    """Thread-safe count of answers per (api, status) with the offending examples kept."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.counts: Counter = Counter()
        self.depths: Counter = Counter()
        self.cases: Counter = Counter()
        self.bad: list[tuple[str, S, str, object]] = []
        self._lock = threading.Lock()

    def case(self, api: str) -> None:
        with self._lock:
            self.cases[api] += 1

    def record(self, api: str, code: S, details: str = "", example: object = None) -> S:
        with self._lock:
            self.counts[(api, code.name)] += 1
            self.depths[(api, depth_of(code, details or ""))] += 1
            if code not in DOCUMENTED and len(self.bad) < 20:
                self.bad.append((api, code, details, _short(example)))
        return code

    def summary(self) -> str:
        lines = [(f"== {self.title}: {sum(self.cases.values())} cases, "
                  f"{sum(self.counts.values())} answers")]
        for api in sorted(self.cases):
            statuses = ", ".join(f"{code}={n}" for (a, code), n in sorted(self.counts.items())
                                 if a == api)
            lines.append(f"   {api}: {self.cases[api]} cases; {statuses}")
            lines.append(f"   {api} depth: " + ", ".join(
                f"{stage}={self.depths[(api, stage)]}" for stage in (
                    "lookup", "validation", "engine", "answered") if self.depths[(api, stage)]))
        for api, code, details, example in self.bad:
            lines.append(f"   UNDOCUMENTED {api} {code.name}: {details!r} for {example}")
        return "\n".join(lines)

    def assert_documented(self) -> None:
        report(self.summary())
        assert not self.bad, self.summary()


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def code_of(call: Callable[[], object]) -> tuple[S, str, object]:
    """Run a blocking RPC; (status, details, response or None)."""
    try:
        response = call()
    except grpc.RpcError as error:
        return error.code(), error.details() or "", None
    return S.OK, "", response


def poll(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02):
    """Wait until ``predicate()`` is truthy; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def identity(data: bytes) -> bytes:
    return data


def infer_request(model: str, text: str, *, request_id: str = "", **parameters):
    """A one-text ModelInferRequest (raw BYTES contents) with the given parameters."""
    from tritonclient.grpc import service_pb2

    message = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    tensor = message.inputs.add(name="TEXT", datatype="BYTES")
    tensor.shape.extend([1, 1])
    message.raw_input_contents.append(raw_bytes([text.encode()]))
    for key, value in parameters.items():
        set_parameter(message.parameters[key], value)
    return message


def logits_of(response) -> list[float]:
    """LOGITS of a one-row ModelInferResponse."""
    import numpy as np

    index = [o.name for o in response.outputs].index("LOGITS")
    return np.frombuffer(response.raw_output_contents[index], dtype="<f4").tolist()


def loop_task_count(server) -> int:
    """Tasks alive on the in-process server's event loop (this probe excluded)."""
    async def count() -> int:
        return len(asyncio.all_tasks()) - 1
    return server.call(count())


def open_sequences(server, name: str) -> int:
    return server.run_sync(lambda: len(server.registry.get(name).store))


def admitted(server, name: str) -> int:
    return server.run_sync(lambda: server.registry.get(name).scheduler.admitted)


def free_slots(server, name: str) -> int:
    return server.run_sync(lambda: len(server.registry.get(name).store._free))


def healthy_classify(server, model: str, text: str = "a great film", timeout: float = 10):
    """One normal Classify; returns (seconds, response)."""
    from rnnserve.protos import sentiment_pb2 as pb
    from rnnserve.protos import sentiment_pb2_grpc

    with server.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        started = time.perf_counter()
        response = stub.Classify(pb.ClassifyRequest(texts=[text], model=model), timeout=timeout)
        return time.perf_counter() - started, response


def run_workers(count: int, work: Callable[[int], None], failures: list[str]) -> None:
    """Run ``work(seed)`` in ``count`` threads and wait; an exception escaping ``work`` is
    appended to ``failures`` (the caller asserts it is empty)."""
    def guarded(seed: int) -> None:
        try:
            work(seed)
        except Exception as exc:            # noqa: BLE001 - reported through failures
            failures.append(f"worker {seed}: {exc!r}")

    threads = [threading.Thread(target=guarded, args=(seed,)) for seed in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)


def assert_sequences_released(server, names) -> None:
    """Every sequence ended or expired: no open sequence, every pool slot free, and every
    client's quota unit given back exactly once."""
    for name in names:
        assert poll(lambda n=name: open_sequences(server, n) == 0, timeout=10), name
        # a closed sequence's slot returns once its last chunk (maybe of a cancelled call)
        # has finished running, which may be a moment after its table entry went away
        assert poll(lambda n=name: free_slots(server, n) == capacity(server, n),
                    timeout=10), (name, free_slots(server, name))
    count = server.run_sync(lambda: dict(server.registry.quota.count))
    assert count == {}, count


def capacity(server, name: str) -> int:
    return server.registry.get(name).store.capacity
