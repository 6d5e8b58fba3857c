"""``--frontend native``: the C++ gRPC front-end in front of the same server.

Real servers on loopback, real clients; the binary is compiled from server/native_frontend.cc
by the code under test. The protocol suites also run whole through this front-end (the
Makefile's ``test-native`` pass); these tests cover what only it has: the two routes
agreeing with grpc.aio, forwarded caller addresses, restarts and process hygiene.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import figures
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offline import GRU, LSTM
from protobuf_wire import field
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from sequence_support import step
from serving import OWN_CONNECTION, connections_held, start_server

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def both(tiny_repository, native_frontend_binary):
    """A grpc.aio server and a native-front-end server on the same repository."""
    with (start_server(tiny_repository, frontend="python") as python,
          start_server(tiny_repository, frontend="native") as native):
        yield python, native


def _frontend_pids(server_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(server_pid), "-f", "rnnserve-frontend"],
                         capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:          # a zombie is gone for our purposes
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_answers_are_offline_logits_through_both_routes(both, offline):
    _, native = both
    channel = native.channel()
    stub = sentiment_pb2_grpc.SentimentStub(channel)
    texts = ["a great film", "the plot was boring and the ending awful", "fun"]
    for model in (LSTM, GRU):                      # unary: the calls socket
        response = stub.Classify(pb.ClassifyRequest(texts=texts, model=model), timeout=30)
        for prediction, text in zip(response.predictions, texts, strict=True):
            np.testing.assert_allclose(prediction.logits, offline[model].logits(text),
                                       atol=TOLERANCE, rtol=0)
    chunks = ["the film", "was great", "but the ending was awful"]   # a stream: the same
    answers = list(stub.StreamClassify(iter(
        [pb.StreamClassifyRequest(text=chunks[0], model=GRU)]
        + [pb.StreamClassifyRequest(text=c) for c in chunks[1:]]), timeout=30))
    np.testing.assert_allclose([a.prediction.logits for a in answers],
                               offline[GRU].stream(chunks), atol=TOLERANCE, rtol=0)


BAD_REQUESTS = [
    ("/rnnserve.v1.Sentiment/Classify", pb.ClassifyRequest(texts=["x"], model="nope")
     .SerializeToString()),
    ("/rnnserve.v1.Sentiment/Classify", pb.ClassifyRequest(model=LSTM).SerializeToString()),
    ("/rnnserve.v1.Sentiment/Classify", pb.ClassifyRequest(texts=["x"]).SerializeToString()),
    ("/rnnserve.v1.Sentiment/Classify", b"\x0a\x02\xff\xfe"),           # invalid UTF-8
    ("/rnnserve.v1.Sentiment/Classify", b"\xff\xff\xff"),               # not protobuf
    ("/rnnserve.v1.Sentiment/Classify", pb.ClassifyRequest(texts=["x" * 5_000_000])
     .SerializeToString()),                                            # over the limit
    ("/rnnserve.v1.Sentiment/NoSuchMethod", b""),
    ("/inference.GRPCInferenceService/ModelInfer", b"\x0a\x04nope"),
    ("/inference.GRPCInferenceService/ModelInfer", b"\x0a"),
    ("/inference.GRPCInferenceService/ModelMetadata", b"\x0a\x04nope"),
    ("/grpc.health.v1.Health/Check", b"\x0a\x07unknown"),
]


@pytest.mark.parametrize(("method", "body"), BAD_REQUESTS,
                         ids=[f"{m.rsplit('/', 1)[1]}-{i}" for i, (m, _) in
                              enumerate(BAD_REQUESTS)])
def test_bad_requests_get_the_same_status_and_message(both, method, body):
    answers = []
    for server in both:
        call = server.channel().unary_unary(method)
        with pytest.raises(grpc.RpcError) as caught:
            call(body, timeout=30)
        answers.append((caught.value.code(), caught.value.details()))
    (python_code, python_message), (native_code, native_message) = answers
    assert native_code == python_code
    # grpc's own size check words it by its version: Debian's 1.51 lacks the "SERVER: "
    assert native_message == python_message.removeprefix("SERVER: ")


def test_deadlines_and_cancellation_of_a_stream_reach_the_server(both):
    _, native = both
    stub = sentiment_pb2_grpc.SentimentStub(native.channel())
    store = native.registry.get(GRU).store
    hold = threading.Event()

    def chunks():
        yield pb.StreamClassifyRequest(text="a great", model=GRU)
        hold.wait(30)                               # the client stays silent, stream open

    for end in ("deadline", "cancel"):
        stream = stub.StreamClassify(chunks(), timeout=1.5 if end == "deadline" else 30)
        next(stream)
        assert native.run_sync(lambda: len(store)) == 1
        if end == "cancel":
            stream.cancel()
        with pytest.raises(grpc.RpcError) as caught:
            next(stream)
        assert caught.value.code() == (grpc.StatusCode.DEADLINE_EXCEEDED if end == "deadline"
                                       else grpc.StatusCode.CANCELLED)
        deadline = time.monotonic() + 10            # the server ends the sequence too
        while native.run_sync(lambda: len(store)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert native.run_sync(lambda: len(store)) == 0, f"{end}: the sequence leaked"
    hold.set()


@pytest.mark.parametrize("frontend", ["python", "native"])
def test_a_stream_whose_caller_stops_reading_is_held_back_then_answered_in_order(both,
                                                                                 frontend):
    """Flow control: a caller that sends and reads no answer is held back, not buffered
    without bound (through the native front-end: it reads a stream's next message only
    when the server wants it, and the server hands it at most a few unwritten answers);
    once it reads, every chunk is answered, in order. Each message carries 32 KB the server
    skips (an unknown field) and asks for the state (2.5 KB answers), so windows fill with
    few messages."""
    server = both[0] if frontend == "python" else both[1]
    total = 1000
    padding = field(1000, b"\0" * 32_768)      # a field number the schema lacks
    produced = [0]

    def chunks():
        for index in range(total):
            produced[0] = index + 1
            yield pb.StreamClassifyRequest(text="fun", model=GRU if index == 0 else "",
                                           export_state=True).SerializeToString() + padding

    channel = server.channel(options=[("grpc.http2.bdp_probe", 0)])   # fixed 64 KB windows
    stream = channel.stream_stream("/rnnserve.v1.Sentiment/StreamClassify",
                                   response_deserializer=pb.StreamClassifyResponse.FromString
                                   )(chunks(), timeout=120)
    previous, deadline = -1, time.monotonic() + 5
    while produced[0] != previous and time.monotonic() < deadline:    # until it stalls
        previous = produced[0]
        time.sleep(0.5)
    held_back = produced[0]
    indexes = [answer.chunk_index for answer in stream]
    assert held_back < total / 2, f"{held_back} of {total} chunks taken while none was read"
    assert indexes == list(range(1, total + 1))


def test_a_kserve_sequence_continues_over_new_connections(both, offline):
    _, native = both
    chunks = ["the film", "was great fun", "but the ending", "was awful"]
    got = []
    for i, chunk in enumerate(chunks):              # a new client (connection) per step
        client = triton.InferenceServerClient(native.address)
        got.append(step(client, LSTM, chunk, 77, start=i == 0, end=i == len(chunks) - 1))
        client.close()
    np.testing.assert_allclose(got, offline[LSTM].stream(chunks), atol=TOLERANCE, rtol=0)


def test_the_quota_sees_real_callers_and_ignores_forged_addresses(tiny_repository,
                                                                   native_frontend_binary):
    with start_server(tiny_repository, frontend="native", max_sequences_per_client=1) as server:
        client = triton.InferenceServerClient(server.address)
        step(client, LSTM, "one", 1, start=True)
        forged = [("rnnserve-peer", "ipv4:10.9.9.9")]
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        with pytest.raises(grpc.RpcError) as caught:       # a stream
            list(stub.StreamClassify(iter([pb.StreamClassifyRequest(text="x", model=GRU)]),
                                     metadata=forged, timeout=30))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(triton.InferenceServerException) as refused:    # a v2 step
            client.infer(f"{LSTM}-stream", [_text("two")], sequence_id=2, sequence_start=True,
                         headers=dict(forged))
        assert "per-client limit is 1" in str(refused.value)
        step(client, LSTM, "end", 1, end=True)              # the slot comes back
        step(client, LSTM, "two", 2, start=True, end=True)
        client.close()


def _text(text: str) -> triton.InferInput:
    tensor = triton.InferInput("TEXT", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text]], dtype=object))
    return tensor


def test_auto_is_python_for_one_worker_and_native_for_more(native_frontend_binary):
    from rnnserve.server.native_frontend import choose_frontend

    cache = native_frontend_binary.parent
    assert choose_frontend("auto", 1, cache) == ("python", None)
    assert choose_frontend("auto", 2, cache) == ("native", None)
    assert choose_frontend("python", 2, cache) == ("python", None)
    assert choose_frontend("native", 1, cache) == ("native", None)


def test_auto_without_a_compiler_serves_on_python_front_end_processes(tiny_repository,
                                                                      tmp_path):
    """``--workers 2`` where the native front-end cannot be built: a warning that says why,
    then the Python front-end processes serve."""
    env = {"PATH": str(tmp_path / "empty"), "RNNSERVE_NATIVE_CACHE": str(tmp_path / "cache"),
           "RNNSERVE_FRONTEND": "auto"}
    with start_server(tiny_repository, subprocess=True, workers=2, env=env) as server:
        unavailable = server.find_event("native_frontend_unavailable")
        assert unavailable is not None and unavailable["frontend"] == "python"
        assert "libgrpc++-dev" in unavailable["reason"], unavailable
        assert len(server.find_event("ready")["worker_pids"]) == 2
        assert _frontend_pids(server.process.pid) == []
        with server.channel() as channel:
            answer = sentiment_pb2_grpc.SentimentStub(channel).Classify(
                pb.ClassifyRequest(texts=["a great film"], model=LSTM), timeout=30)
        assert answer.model == LSTM
        assert server.stop() == 0


def test_workers_2_runs_two_front_ends_on_one_port_and_a_killed_one_costs_only_its_calls(
        tiny_repository, native_frontend_binary, offline):
    with start_server(tiny_repository, subprocess=True, frontend="native",
                      workers=2) as server:
        frontends = sorted(_frontend_pids(server.process.pid))
        assert len(frontends) == 2
        # Two ORT sessions per model: one per worker (no instance_group in the config).
        assert server.find_event("model_loaded")["instances"] == 2
        clients = 8
        channels = [server.channel(OWN_CONNECTION) for _ in range(clients)]
        request = pb.ClassifyRequest(texts=["a great film"], model=LSTM)
        for channel in channels:
            answer = sentiment_pb2_grpc.SentimentStub(channel).Classify(request, timeout=30)
            np.testing.assert_allclose(answer.predictions[0].logits,
                                       offline[LSTM].logits("a great film"),
                                       atol=TOLERANCE, rtol=0)
        held = {pid: connections_held(pid, server.port) for pid in frontends}
        assert sum(held.values()) == clients and all(held.values()), held

        outcomes: dict[int, list[str]] = {index: [] for index in range(clients)}
        stop = threading.Event()

        def load(index: int) -> None:
            stub = sentiment_pb2_grpc.SentimentStub(channels[index])
            while not stop.is_set():
                try:
                    stub.Classify(request, timeout=5)
                    outcomes[index].append("ok")
                except grpc.RpcError as exc:
                    outcomes[index].append(exc.code().name)
                    time.sleep(0.01)

        threads = [threading.Thread(target=load, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        victim, survivor = frontends
        cut_off = held[victim]               # clients whose connection the victim holds
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        failed = [o for results in outcomes.values() for o in results if o != "ok"]
        # Only calls in flight on the killed front-end's connections: one per such client.
        assert set(failed) <= {"UNAVAILABLE"} and len(failed) <= cut_off, (failed, held)
        assert survivor in _frontend_pids(server.process.pid)
        assert len(_frontend_pids(server.process.pid)) == 2         # the victim's successor
        assert server.find_event("native_frontend_exited")["pid"] == victim
        total = sum(len(results) for results in outcomes.values())
        figures.report(f"--workers 2 with the native front-end, one of two front-ends "
                       f"SIGKILLed under load: {total} requests, {len(failed)} failed "
                       f"(its connections: {cut_off} of {clients} clients)")
        for channel in channels:
            channel.close()
        assert server.stop() == 0
        assert not any(_alive(pid) for pid in _frontend_pids(server.process.pid))


def test_a_killed_frontend_is_restarted_and_serving_within_two_seconds(tiny_repository,
                                                                        native_frontend_binary):
    with start_server(tiny_repository, subprocess=True, frontend="native") as server:
        [frontend] = _frontend_pids(server.process.pid)
        # Default reconnect backoff (1 s): the port keeps listening while the front-end is
        # restarted, so a client's reconnect is queued, never refused, and never backs off.
        clients = 4
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        request = pb.ClassifyRequest(texts=["a great film"], model=LSTM)
        outcomes: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    stub.Classify(request, timeout=5)
                    outcomes.append("ok")
                except grpc.RpcError as exc:
                    outcomes.append(exc.code().name)
                    time.sleep(0.01)                   # no tight loop on a closed port

        threads = [threading.Thread(target=load) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        before = len(outcomes)
        killed = time.monotonic()
        os.kill(frontend, signal.SIGKILL)
        recovered = None
        while time.monotonic() - killed < 10:   # a new connection per probe, as a prober makes
            with server.channel() as channel:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=0.2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        recovered = time.monotonic() - killed
                        break
                except grpc.RpcError:
                    time.sleep(0.01)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        assert recovered is not None and recovered < 2.0, f"serving again after {recovered}"
        assert server.find_event("native_frontend_exited") is not None
        [restarted] = _frontend_pids(server.process.pid)
        assert restarted != frontend
        failed = [o for o in outcomes if o != "ok"]
        # Only the calls the kill cut off: one per client, each had one in flight.
        assert set(failed) <= {"UNAVAILABLE"} and len(failed) <= clients, failed
        with server.channel() as channel:
            answer = sentiment_pb2_grpc.SentimentStub(channel).Classify(request, timeout=10)
        assert answer.model == LSTM
        figures.report(f"native front-end SIGKILL under load: {len(outcomes)} requests "
                       f"({before} before the kill), {len(failed)} failed (UNAVAILABLE; "
                       f"{clients} clients on one channel, default reconnect backoff), health "
                       f"SERVING again after "
                       f"{recovered:.2f} s")
        assert server.stop() == 0
        assert not _alive(restarted)


def test_sigterm_exits_zero_and_server_death_takes_the_frontend_along(tiny_repository,
                                                                      native_frontend_binary):
    with start_server(tiny_repository, subprocess=True, frontend="native") as server:
        [frontend] = _frontend_pids(server.process.pid)
        sockets = _socket_directory(frontend)
        assert server.stop(signal.SIGTERM) == 0
        assert not _alive(frontend)
        assert not sockets.exists()
    with start_server(tiny_repository, subprocess=True, frontend="native", workers=2) as server:
        frontends = _frontend_pids(server.process.pid)
        sockets = _socket_directory(frontends[0])
        server.process.kill()                      # no chance to clean up
        server.wait()
        deadline = time.monotonic() + 5
        while any(map(_alive, frontends)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, frontends)), "a front-end outlived its server"
        assert not sockets.exists(), "the server's sockets were left behind"


def _socket_directory(frontend: int) -> Path:
    """The directory of the server's sockets that front-end process ``frontend`` uses."""
    argv = Path(f"/proc/{frontend}/cmdline").read_bytes().split(b"\0")
    directory = Path(argv[argv.index(b"--calls") + 1].decode()).parent
    assert directory.is_dir()
    return directory


@pytest.mark.parametrize("frontend", ["native", "python"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_whole_process_group_drains_in_order(tiny_repository, signum, frontend,
                                                             native_frontend_binary):
    """A terminal's Ctrl-C, ``kill -- -PGID`` or a supervisor that signals every process
    reaches the front-end processes too. The server still drains in its own order: the port
    keeps taking calls until the streams have ended with their state trailers, and no
    front-end is taken for dead and restarted."""
    with start_server(tiny_repository, subprocess=True, workers=2, frontend=frontend,
                      drain_delay_seconds=1.5) as server:
        hold = threading.Event()

        def chunks():
            yield pb.StreamClassifyRequest(text="a great", model=LSTM)
            hold.wait(30)                           # the stream stays open

        channel = server.channel(OWN_CONNECTION)
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        stream = stub.StreamClassify(chunks(), timeout=30)
        next(stream)
        server.signal_group(signum)
        time.sleep(0.2)               # within the drain delay: the port still takes calls
        answer = stub.Classify(pb.ClassifyRequest(texts=["fine"], model=LSTM), timeout=10)
        assert answer.model == LSTM
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)
        hold.set()
        channel.close()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "rnnserve-sequence-state-bin" in dict(ended.value.trailing_metadata() or ())
        assert server.wait(60) == 0
        restarts = [e for e in server.events()
                    if e.get("event") in ("native_frontend_exited", "worker_exited")]
        assert restarts == [], restarts
        leftover = subprocess.run(["pgrep", "-g", str(server.process.pid)],
                                  capture_output=True, text=True, check=False).stdout
        assert leftover == "", f"processes left in the server's group: {leftover}"


def test_without_a_compiler_the_server_says_what_to_install(tiny_repository, tmp_path):
    """No g++ on PATH and nothing compiled yet: exit status 1 and a message naming the
    packages, and nothing left behind."""
    import json
    import sys

    env = {**os.environ, "PATH": str(tmp_path / "empty"), "TMPDIR": str(tmp_path),
           "RNNSERVE_NATIVE_CACHE": str(tmp_path / "cache"), "RNNSERVE_LOG_FORMAT": "json"}
    done = subprocess.run([sys.executable, "-m", "rnnserve.server", "--repository",
                           str(tiny_repository), "--port", "0", "--metrics-port", "-1",
                           "--frontend", "native"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    [failed] = [e for e in events if e.get("event") == "startup_failed"]
    assert "apt install g++ pkg-config libgrpc++-dev" in failed["error"]
    assert not list(tmp_path.glob("rnnserve-native-*")), "the sockets' directory leaked"
