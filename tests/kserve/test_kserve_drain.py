"""Shutdown drain of ModelStreamInfer: answers to requests already read are flushed, then
the stream ends with UNAVAILABLE. Runs a second grpc.aio server with only the KServe
servicer on the shared server's loop and registry, so it does not depend on app.py."""

from __future__ import annotations

import queue
import threading

import grpc
from kserve_support import LSTM, request
from rnnserve.server import kserve
from rnnserve.server.streaming import Drain
from tritonclient.grpc import service_pb2_grpc


def test_drain_flushes_answers_then_unavailable(kserve_server):
    async def start():
        server = grpc.aio.server()
        drain = Drain()
        kserve.register(server, kserve_server.registry, kserve_server.settings, drain)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, drain, port

    server, drain, port = kserve_server.call(start())
    outbox: queue.Queue = queue.Queue()
    release = threading.Event()

    def messages():
        for i in range(3):
            message = request(LSTM, ["loved it"])
            message.id = str(i)
            outbox.put(message)
            yield message
        release.wait(10)  # keep the stream open (half-open) until the drain

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelStreamInfer(messages(), timeout=30)
            answers = [next(call) for _ in range(3)]
            assert sorted(a.infer_response.id for a in answers) == ["0", "1", "2"]
            assert not any(a.error_message for a in answers)
            kserve_server.run_sync(drain.begin)
            try:
                rest = list(call)
                raise AssertionError(f"stream ended without a status: {rest}")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert "shutting down" in error.details()
            release.set()
    finally:
        release.set()
        kserve_server.call(server.stop(0))
