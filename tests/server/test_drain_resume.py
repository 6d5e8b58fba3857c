"""A stream survives a replica drain: the client code printed in docs/server.md, on one
round-robin channel over two replicas, keeps its sequence when the replica serving it
drains mid-stream, and every chunk is answered exactly once with the offline value."""

from __future__ import annotations

import threading

import documented
import grpc
import numpy as np
from offline import GRU
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server

CHUNKS = [f"chunk {i} the film was great fun" if i % 3 else "but the ending was awful"
          for i in range(240)]


def test_stream_survives_a_drain_with_the_documented_client(tiny_repository, offline):
    classify_stream = documented.classify_stream()
    with start_server(tiny_repository) as first, start_server(tiny_repository) as second:
        target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
        options = [("grpc.lb_policy_name", "round_robin")]
        with grpc.insecure_channel(target, options=options) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            stub = sentiment_pb2_grpc.SentimentStub(channel)
            responses = []
            stopper = None
            for response in classify_stream(stub, CHUNKS, model=GRU):
                responses.append(response)
                if len(responses) == 20:       # drain whichever replica holds the stream
                    holder = first if _holds_stream(first) else second
                    stopper = threading.Thread(target=holder.stop)
                    stopper.start()
            stopper.join(timeout=60)
    assert [r.chunk_index for r in responses] == list(range(1, len(CHUNKS) + 1))
    assert responses[-1].end
    resumed = [i for i, r in enumerate(responses) if r.model and i > 0]
    assert resumed, "the stream was never resumed: the drain did not interrupt it"
    expected = offline[GRU].stream(CHUNKS)
    np.testing.assert_allclose([r.prediction.logits for r in responses], expected,
                               atol=1e-5, rtol=0)


def _holds_stream(server) -> bool:
    return server.run_sync(lambda: len(server.registry.get(GRU).store)) > 0
