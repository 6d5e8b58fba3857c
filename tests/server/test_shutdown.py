"""SIGTERM on a real server process: every accepted request and chunk is answered, new
calls are refused, open streams end with UNAVAILABLE, and the process exits 0 in time."""

from __future__ import annotations

import signal
import threading
import time

import grpc
from offline import GRU, LSTM
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server


def test_sigterm_drains_without_losing_accepted_work(tiny_repository):
    # A 1.5 s batch delay keeps accepted requests queued while the signal arrives.
    server = start_server(tiny_repository, subprocess=True, max_queue_delay_us=1_500_000,
                          adaptive_queue_delay=False, grace_seconds=20)
    with server:
        channel = server.channel()
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        futures = [stub.Classify.future(pb.ClassifyRequest(texts=["good fun"] * (1 + i % 3),
                                                           model=LSTM if i % 2 else GRU),
                                        timeout=30)
                   for i in range(20)]
        hold = threading.Event()

        def chunks():
            yield pb.StreamClassifyRequest(text="great", model=LSTM)
            yield pb.StreamClassifyRequest(text="movie")
            hold.wait(30)

        stream = stub.StreamClassify(chunks(), timeout=30)
        time.sleep(0.5)                           # all of the above is accepted and queued
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)

        for future in futures:                    # nothing accepted is lost
            assert future.result().predictions
        responses = []
        try:
            for response in stream:
                responses.append(response)  # noqa: PERF402 - keep answers before the error
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in error.details()
        else:
            raise AssertionError("the open stream should end with UNAVAILABLE")
        finally:
            hold.set()
        assert [r.chunk_index for r in responses] == [1, 2]

        assert server.wait(timeout=20) == 0
        assert time.monotonic() - signalled < 20
        late = sentiment_pb2_grpc.SentimentStub(server.channel())
        try:
            late.Classify(pb.ClassifyRequest(texts=["good"], model=LSTM), timeout=2)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        else:
            raise AssertionError("a stopped server answered")
        events = [e["event"] for e in server.events()]
        assert events.index("signal") < events.index("draining") < events.index("stopped")
