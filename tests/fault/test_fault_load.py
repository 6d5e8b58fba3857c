"""Sustained load (slow): batch sizes hold steady from the first to the last third, and
pipelined chunks queued before an end are answered in order with correct values."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
from fault_support import WORDS, admitted, open_sequences, skip_unless_slow, slow
from figures import report
from offline import Offline
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server

LSTM = "tiny-lstm"
SECONDS = 60
CLIENTS = 8


def _batch_rows(statistics) -> tuple[int, int]:
    """(executions, rows) summed over batch_stats of one ModelStatistics."""
    executions = sum(s.compute_infer.count for s in statistics.batch_stats)
    rows = sum(s.batch_size * s.compute_infer.count for s in statistics.batch_stats)
    return executions, rows


@slow
@skip_unless_slow
def test_sustained_load_keeps_batching_and_order(tiny_repository):
    reference = Offline(tiny_repository, LSTM)
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 30)))) for _ in range(64)]
    expected = {t: reference.logits(t) for t in texts}
    errors: list[str] = []
    counts = {"unary": 0, "stream": 0}
    stop = threading.Event()
    with start_server(tiny_repository, max_batch_size=16, max_queue_delay_us=2000) as server:
        engine = server.registry.get(LSTM)

        def unary_client(seed: int) -> None:
            local = np.random.default_rng(seed)
            with server.channel() as channel:
                stub = sentiment_pb2_grpc.SentimentStub(channel)
                while not stop.is_set():
                    text = texts[int(local.integers(len(texts)))]
                    try:
                        response = stub.Classify(pb.ClassifyRequest(texts=[text], model=LSTM),
                                                 timeout=30)
                    except grpc.RpcError as error:
                        errors.append(f"unary {error.code()}: {error.details()}")
                        continue
                    if not np.allclose(response.predictions[0].logits, expected[text],
                                       atol=1e-5):
                        errors.append(f"wrong logits for {text!r}")
                    counts["unary"] += 1

        def stream_client(seed: int) -> None:
            local = np.random.default_rng(seed)
            with server.channel() as channel:
                stub = sentiment_pb2_grpc.SentimentStub(channel)
                while not stop.is_set():
                    chunks = [texts[int(local.integers(len(texts)))]
                              for _ in range(int(local.integers(2, 8)))]
                    requests = [pb.StreamClassifyRequest(text=c, model=LSTM if i == 0 else "",
                                                         end=i == len(chunks) - 1)
                                for i, c in enumerate(chunks)]
                    try:
                        responses = list(stub.StreamClassify(iter(requests), timeout=30))
                    except grpc.RpcError as error:
                        errors.append(f"stream {error.code()}: {error.details()}")
                        continue
                    ids: list[int] = []
                    for index, (chunk, response) in enumerate(zip(chunks, responses,
                                                                  strict=True)):
                        ids += reference.ids(chunk)
                        if response.chunk_index != index + 1 or not np.allclose(
                                response.prediction.logits, reference.logits_of_ids(ids),
                                atol=1e-5):
                            errors.append(f"stream chunk {index} out of order or wrong")
                    if not responses[-1].end:
                        errors.append("last stream response not marked end")
                    counts["stream"] += 1

        threads = [threading.Thread(target=unary_client, args=(i,)) for i in range(CLIENTS)]
        threads += [threading.Thread(target=stream_client, args=(100 + i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        marks = []
        for _ in range(4):
            marks.append(_batch_rows(engine.telemetry.statistics()))
            time.sleep(SECONDS / 3)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        first = (marks[1][1] - marks[0][1]) / max(1, marks[1][0] - marks[0][0])
        last = (marks[3][1] - marks[2][1]) / max(1, marks[3][0] - marks[2][0])
        report(f"== sustained load {SECONDS} s: {counts} requests/streams, errors "
              f"{len(errors)}, mean rows per ORT call first third {first:.2f}, last third "
              f"{last:.2f}")
        assert not errors, errors[:10]
        assert last >= 0.7 * first, (first, last)
        assert admitted(server, LSTM) == 0 and open_sequences(server, LSTM) == 0
