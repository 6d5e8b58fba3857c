"""Overload: a burst of several times the queue bound is partly refused with
RESOURCE_EXHAUSTED at once, the rest is answered correctly, the bound holds, and the server
recovers right after."""

from __future__ import annotations

import grpc
import numpy as np
from fault_support import WORDS, admitted, code_of, healthy_classify
from figures import report
from offline import Offline
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server

LSTM = "tiny-lstm"
QUEUE = 8
TEXTS_PER_REQUEST = 2
REQUESTS = 48          # 96 rows against a bound of 8


def test_overload_burst_refuses_then_recovers(tiny_repository):
    rng = np.random.default_rng(0)
    reference = Offline(tiny_repository, LSTM)
    requests = [[" ".join(rng.choice(WORDS, size=int(rng.integers(150, 250))))
                 for _ in range(TEXTS_PER_REQUEST)] for _ in range(REQUESTS)]
    with start_server(tiny_repository, max_queue_size=QUEUE, max_batch_size=4,
                      max_queue_delay_us=2000) as server:
        peak = {"admitted": 0}
        engine = server.registry.get(LSTM)

        def instrument():
            scheduler = engine.scheduler
            original = scheduler.admit

            def admit(n):
                original(n)
                peak["admitted"] = max(peak["admitted"], scheduler.admitted)
            scheduler.admit = admit
        server.run_sync(instrument)
        with server.channel() as channel:
            stub = sentiment_pb2_grpc.SentimentStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            futures = [stub.Classify.future(pb.ClassifyRequest(texts=texts, model=LSTM),
                                            timeout=60) for texts in requests]
            outcomes = [code_of(f.result) for f in futures]
        codes = [code for code, _, _ in outcomes]
        report(f"== overload: {REQUESTS} requests x {TEXTS_PER_REQUEST} texts, queue "
              f"{QUEUE}: OK={codes.count(grpc.StatusCode.OK)} RESOURCE_EXHAUSTED="
              f"{codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)} peak admitted="
              f"{peak['admitted']}")
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) > 0
        assert codes.count(grpc.StatusCode.OK) > 0
        assert 0 < peak["admitted"] <= QUEUE
        for texts, (code, details, response) in zip(requests, outcomes, strict=True):
            if code == grpc.StatusCode.OK:
                for text, prediction in zip(texts, response.predictions, strict=True):
                    np.testing.assert_allclose(prediction.logits, reference.logits(text),
                                               atol=1e-5, rtol=0)
            else:
                assert "capacity" in details
        assert admitted(server, LSTM) == 0            # nothing left accounted as pending
        seconds, response = healthy_classify(server, LSTM)
        assert response.predictions[0].label and seconds < 2.0, seconds
