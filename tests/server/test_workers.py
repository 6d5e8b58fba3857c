"""``--workers 2``: two front-end processes and one engine look like one server.

A real ``python -m rnnserve.server --workers 2`` on the tiny repository, with each front-end
(``workers_server`` runs its tests for both: Python front-end processes beside an engine
process, and the default where it builds, two C++ front-ends beside the server process);
every client opens its own connections, so requests land on both front-ends (checked
through /proc: which process holds which connection), and every answer is compared with
the offline reference. The Python shape's own life cycle (restarts, drain, health, orphans)
is tested below; the C++ one's in test_native_frontend.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from figures import report
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offline import GRU, LSTM, random_text
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from sequence_support import step
from serving import OWN_CONNECTION, connections_held, start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = ROOT / ".cache" / "tools" / "perf_analyzer" / "bin" / "perf_analyzer"
QUOTA = 4
#: gRPC clients of one process share connections unless told otherwise: every channel and
#: client here opens its own, so the kernel spreads them over the front-ends.


@pytest.fixture(scope="module", params=["python", "native"])
def workers_server(request, tiny_repository):
    if request.param == "native":
        request.getfixturevalue("native_frontend_binary")     # skips where it cannot build
    with start_server(tiny_repository, subprocess=True, workers=2, frontend=request.param,
                      metrics_port=0, max_sequences_per_client=QUOTA) as server:
        server.frontend = request.param
        yield server


def _worker_pids(server) -> list[int]:
    """The front-end processes' pids (the Python engine's ready event lists its own)."""
    if getattr(server, "frontend", "python") == "native":
        out = subprocess.run(["pgrep", "-P", str(server.process.pid), "-f",
                              "rnnserve-frontend"], capture_output=True, text=True,
                             check=False).stdout
        return [int(pid) for pid in out.split()]
    return server.find_event("ready")["worker_pids"]


def _client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address, channel_args=OWN_CONNECTION)


def _stub(channel):
    return sentiment_pb2_grpc.SentimentStub(channel)


def test_every_worker_serves_and_answers_equal_offline(workers_server, offline):
    rng = np.random.default_rng(1)
    channels = [workers_server.channel(OWN_CONNECTION) for _ in range(16)]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=10)
        held = {pid: connections_held(pid, workers_server.port)
                for pid in _worker_pids(workers_server)}
        assert len(held) == 2 and all(held.values()), f"connections per worker: {held}"
        for index, channel in enumerate(channels):
            model = LSTM if index % 2 else GRU
            texts = [random_text(rng, 1, 30) for _ in range(3)]
            reply = _stub(channel).Classify(pb.ClassifyRequest(texts=texts, model=model))
            assert reply.model == model
            for text, prediction in zip(texts, reply.predictions, strict=True):
                np.testing.assert_allclose(prediction.logits, offline[model].logits(text),
                                           atol=1e-5, rtol=0)
    finally:
        for channel in channels:
            channel.close()


def test_kserve_sequence_continues_over_other_connections(workers_server, offline):
    chunks = ["the plot was boring", "but the actors were great", "and the ending was fun",
              "really loved it"]
    expected = offline[LSTM].stream(chunks)
    for sequence_id in (4242, "across-workers"):
        for index, chunk in enumerate(chunks):
            client = _client(workers_server)
            try:
                logits = step(client, LSTM, chunk, sequence_id, start=index == 0,
                              end=index == len(chunks) - 1)
            finally:
                client.close()
            np.testing.assert_allclose(logits, expected[index], atol=1e-5, rtol=0)


def test_streams_and_sequence_state_move_between_connections(workers_server, offline):
    chunks = ["a really fun movie", "but the plot was bad", "the music was great"]
    expected = offline[GRU].stream(chunks)
    with workers_server.channel(OWN_CONNECTION) as channel:
        requests = [pb.StreamClassifyRequest(text=chunks[0], model=GRU, export_state=True)]
        first = list(_stub(channel).StreamClassify(iter(requests)))
    snapshot = first[0].state
    assert snapshot
    with workers_server.channel(OWN_CONNECTION) as channel:
        requests = [pb.StreamClassifyRequest(text=chunks[1], resume_state=snapshot),
                    pb.StreamClassifyRequest(text=chunks[2], end=True)]
        rest = list(_stub(channel).StreamClassify(iter(requests)))
    logits = [first[0].prediction.logits] + [r.prediction.logits for r in rest]
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
    # A KServe sequence exported through one connection and imported through another.
    client = _client(workers_server)
    try:
        step(client, GRU, chunks[0], 777, start=True)
    finally:
        client.close()
    with workers_server.channel(OWN_CONNECTION) as channel:
        exported = _stub(channel).ExportSequence(pb.ExportSequenceRequest(
            model=GRU, sequence=pb.SequenceRef(sequence_id=777), release=True))
    with workers_server.channel(OWN_CONNECTION) as channel:
        _stub(channel).ImportSequence(pb.ImportSequenceRequest(
            sequence=pb.SequenceRef(sequence_id=778), state=exported.state))
    client = _client(workers_server)
    try:
        logits = step(client, GRU, chunks[1], 778, end=True)
    finally:
        client.close()
    np.testing.assert_allclose(logits, expected[1], atol=1e-5, rtol=0)


def test_per_client_quota_is_global(workers_server):
    clients = [_client(workers_server) for _ in range(QUOTA + 1)]
    try:
        for index in range(QUOTA):
            step(clients[index], LSTM, "fine", 9000 + index, start=True)
        with pytest.raises(triton.InferenceServerException) as refused:
            step(clients[QUOTA], LSTM, "fine", 9000 + QUOTA, start=True)
        assert "RESOURCE_EXHAUSTED" in str(refused.value.status()) or \
            "per-client limit" in str(refused.value)
        for index in range(QUOTA):
            step(clients[index], LSTM, "end", 9000 + index, end=True)
        step(clients[QUOTA], LSTM, "fine", 9000 + QUOTA, start=True, end=True)
    finally:
        for client in clients:
            client.close()


def test_statistics_and_metrics_are_totals_over_workers(workers_server):
    def successes() -> int:
        with workers_server.channel(OWN_CONNECTION) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=GRU))
        return reply.model_stats[0].inference_stats.success.count

    before = successes()
    sent = 24
    for _ in range(sent):
        with workers_server.channel(OWN_CONNECTION) as channel:
            _stub(channel).Classify(pb.ClassifyRequest(texts=["good fun"], model=GRU))
    assert successes() - before == sent
    port = workers_server.find_event("ready")["metrics_port"]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    total = sum(float(line.rsplit(b" ", 1)[1]) for line in body.splitlines()
                if line.startswith(b"rnnserve_requests_total{") and b'model="tiny-gru"' in line
                and b'code="OK"' in line)
    assert total >= before + sent
    for _ in range(3):              # refused by the front-ends, never sent to the engine
        with workers_server.channel(OWN_CONNECTION) as channel, pytest.raises(grpc.RpcError):
            _stub(channel).Classify(pb.ClassifyRequest(texts=["good"], model="nope"))
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert sum(float(line.rsplit(b" ", 1)[1]) for line in body.splitlines()
               if line.startswith(b"rnnserve_unrouted_requests_total{")) == 3


@pytest.mark.skipif(not PERF_ANALYZER.is_file(), reason="perf_analyzer not installed")
def test_perf_analyzer_runs_against_workers(workers_server):
    command = ["bash", str(ROOT / "bench" / "perf_analyzer.sh"), "--url",
               workers_server.address, "--model", LSTM, "--mode", "stateless",
               "--concurrency", "4:4:1", "--stability", "1000", "--",
               "--measurement-mode", "count_windows", "--measurement-request-count", "50",
               "--max-trials", "10"]
    env = {**os.environ, "RNNSERVE_SST2_DEV": "/nonexistent"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Successful request count:" in output, output


def _health(address: str) -> int | None:
    try:
        with grpc.insecure_channel(address) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1).status
    except grpc.RpcError:
        return None


def test_killed_worker_is_restarted_and_others_keep_serving(tiny_repository):
    with start_server(tiny_repository, subprocess=True, workers=2, frontend="python") as server:
        victim, survivor = _worker_pids(server)
        outcomes: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                with server.channel(OWN_CONNECTION) as channel:
                    try:
                        _stub(channel).Classify(pb.ClassifyRequest(texts=["good"], model=GRU),
                                                timeout=10)
                        outcomes.append("OK")
                    except grpc.RpcError as exc:
                        outcomes.append(exc.code().name)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        restarted = None
        while time.monotonic() < deadline and restarted is None:
            restarted = server.find_event("worker_restarted")
            time.sleep(0.05)
        assert restarted is not None, server.logs()
        new_pid = restarted["pid"]
        while time.monotonic() < deadline:
            ready = [e for e in server.events() if e.get("event") == "worker_ready"
                     and e.get("worker") == restarted["worker"] and e["ts"] > _ts(killed_at)]
            if ready:
                break
            time.sleep(0.05)
        assert ready, server.logs()
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        failed = [o for o in outcomes if o != "OK"]
        recovery = _epoch(ready[0]["ts"]) - killed_at
        report(f"worker SIGKILL under load: {len(outcomes)} requests, {len(failed)} failed "
               f"({', '.join(sorted(set(failed))) or 'none'}), new worker pid {new_pid} "
               f"serving {recovery:.2f} s after the kill")
        assert survivor != new_pid and _alive(survivor)
        assert len(failed) <= 16, f"more failures than requests in flight: {failed}"
        assert set(failed) <= {"UNAVAILABLE", "CANCELLED"}, failed
        assert recovery < 10, server.logs()
        assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
        pids = [survivor, new_pid]
        assert server.stop() == 0
    assert not any(_alive(pid) for pid in pids)


def test_sigterm_drains_every_worker_with_stream_trailers(tiny_repository, offline):
    chunks = ["the first half drags", "but the ending is wonderful", "great music"]
    expected = offline[LSTM].stream(chunks)
    with start_server(tiny_repository, subprocess=True, workers=2, frontend="python",
                      drain_delay_seconds=0.5) as server, \
            start_server(tiny_repository) as other:
        pids = _worker_pids(server)
        channel = server.channel(OWN_CONNECTION)
        requests = _Requests([pb.StreamClassifyRequest(text=chunks[0], model=LSTM)])
        responses = _stub(channel).StreamClassify(requests)
        first = next(responses)
        server.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as ended:
            next(responses)
        requests.close()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        trailer = dict(ended.value.trailing_metadata() or ())["rnnserve-sequence-state-bin"]
        assert server.wait(60) == 0
        channel.close()
        assert server.find_event("stopped") is not None
        assert not any(_alive(pid) for pid in pids)
        with other.channel() as resumed_channel:
            rest = list(_stub(resumed_channel).StreamClassify(iter([
                pb.StreamClassifyRequest(text=chunks[1], model=LSTM, resume_state=trailer),
                pb.StreamClassifyRequest(text=chunks[2], end=True)])))
    logits = [first.prediction.logits] + [r.prediction.logits for r in rest]
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


class _Requests:
    """A request iterator that stays open until closed (the stream stays half-open)."""

    def __init__(self, initial) -> None:
        self._items = list(initial)
        self._closed = threading.Event()

    def __iter__(self):
        return self

    def __next__(self):
        if self._items:
            return self._items.pop(0)
        self._closed.wait(60)
        raise StopIteration

    def close(self) -> None:
        self._closed.set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _ts(epoch: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{seconds}.{int((epoch % 1) * 1000):03d}Z"


def _epoch(ts: str) -> float:
    import calendar

    whole, millis = ts.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000


def test_health_is_not_serving_before_the_engine_is_warm(tiny_repository):
    from rnnserve.bench.procs import free_port

    port = free_port()
    env = {**os.environ, "RNNSERVE_REPOSITORY": str(tiny_repository), "RNNSERVE_PORT": str(port),
           "RNNSERVE_HOST": "127.0.0.1", "RNNSERVE_METRICS_PORT": "-1",
           "RNNSERVE_WORKERS": "2", "RNNSERVE_FRONTEND": "python",
           "RNNSERVE_LOG_FORMAT": "json"}
    process = subprocess.Popen([sys.executable, "-m", "rnnserve.server"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    seen: list[tuple[float, int | None]] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = _health(f"127.0.0.1:{port}")
            seen.append((time.time(), status))
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
        assert seen[-1][1] == health_pb2.HealthCheckResponse.SERVING, seen[-5:]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        reader.join(10)
    events = [json.loads(line) for line in lines if line.startswith("{")]
    loaded = [_epoch(e["ts"]) for e in events if e.get("event") == "model_loaded"]
    assert len(loaded) == 2
    first_serving = next(t for t, status in seen if status == health_pb2.HealthCheckResponse.SERVING)
    # log timestamps have millisecond resolution
    assert first_serving >= max(loaded) - 0.002, (first_serving, loaded)
    assert all(status != health_pb2.HealthCheckResponse.SERVING
               for t, status in seen if t < max(loaded) - 0.002)


def test_front_ends_exit_when_the_engine_process_is_killed(tiny_repository):
    server = start_server(tiny_repository, subprocess=True, workers=2, frontend="python")
    pids = _worker_pids(server)
    server.process.kill()
    server.wait(30)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "front-ends outlived their engine process"
