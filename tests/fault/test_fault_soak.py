"""Soak (slow): a subprocess server under steady mixed traffic keeps its RSS within 5 % of
the post-warm-up level and answers every request."""

from __future__ import annotations

import os
import threading
import time

import grpc
import pytest
from fault_support import WORDS, infer_request, skip_unless_slow, slow
from figures import report
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server
from tritonclient.grpc import service_pb2_grpc

WARMUP = float(os.environ.get("RNNSERVE_SOAK_WARMUP", "30"))
SECONDS = float(os.environ.get("RNNSERVE_SOAK_SECONDS", "270"))     # 5 minutes in all


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@slow
@skip_unless_slow
@pytest.mark.timeout(WARMUP + SECONDS + 180)    # beyond the suite's 300 s per-test limit
def test_soak_rss_stays_flat(tiny_repository):
    errors: list[str] = []
    sent = {"n": 0}
    stop = threading.Event()
    with start_server(tiny_repository, subprocess=True, sequence_idle_seconds=1.0) as server:
        pid = server.process.pid

        def client(seed: int) -> None:
            with server.channel() as channel:
                text = sentiment_pb2_grpc.SentimentStub(channel)
                kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                i = 0
                while not stop.is_set():
                    i += 1
                    words = " ".join(WORDS[(i + seed) % 7:(i + seed) % 7 + 8])
                    try:
                        if i % 3 == 0:
                            list(text.StreamClassify(iter([
                                pb.StreamClassifyRequest(text=words, model="tiny-gru"),
                                pb.StreamClassifyRequest(text=words, end=True)]), timeout=30))
                        elif i % 3 == 1:
                            kserve.ModelInfer(infer_request(
                                "tiny-lstm-stream", words, sequence_id=seed * 10**9 + i,
                                sequence_start=True, sequence_end=i % 2 == 0), timeout=30)
                        else:
                            text.Classify(pb.ClassifyRequest(texts=[words] * 4,
                                                             model="tiny-lstm"), timeout=30)
                        sent["n"] += 1
                    except grpc.RpcError as error:
                        errors.append(f"{error.code()}: {error.details()}")

        threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(WARMUP)
        before = _rss_kib(pid)
        samples = [before]
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            time.sleep(5)
            samples.append(_rss_kib(pid))
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        after = _rss_kib(pid)
        growth = (after - before) / before
        report(f"== soak {WARMUP:.0f}+{SECONDS:.0f} s: {sent['n']} requests, {len(errors)} "
              f"errors, RSS after warm-up {before / 1024:.1f} MiB, end {after / 1024:.1f} MiB "
              f"(max {max(samples) / 1024:.1f}), growth {growth * 100:+.2f} %")
        assert not errors, errors[:10]
        assert growth < 0.05, samples
