"""Moving sequences between replicas: snapshot size, ExportSequence/ImportSequence latency,
exactness after the move, and the cost of ``export_state`` on a stream chunk.

    python -m rnnserve.bench.state_migration [--repository DIR] [--model NAME] [--sequences 300]

Two servers (``python -m rnnserve.server`` child processes, replica A and B) serve the same
repository (``--repository``, else as bench/server_quick.py finds one). For each of N
sequences: one KServe v2 chunk on A, then ``ExportSequence(release)`` on A and
``ImportSequence`` on B, each timed from the client (one in flight at a time, so these are
latencies, not throughput). Exactness: for every 10th sequence, a copy is exported without
release first and the same next chunk runs on A (the copy) and on B (the moved one); the
largest |logit difference| is reported (0 means bit-identical). Stream cost: chunk latency on
one StreamClassify stream with and without ``export_state``, alternating chunk by chunk.
Client and servers share the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from .server_quick import find_repository, load_texts, percentile, start_server


def _infer_request(model: str, text: str, sequence_id: int, *, start: bool):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=f"{model}-stream")
    tensor = request.inputs.add(name="TEXT", datatype="BYTES")
    tensor.shape.extend([1, 1])
    data = text.encode("utf-8")
    request.raw_input_contents.append(len(data).to_bytes(4, "little") + data)
    request.parameters["sequence_id"].int64_param = sequence_id
    request.parameters["sequence_start"].bool_param = start
    return request


def _logits(response) -> np.ndarray:
    index = [o.name for o in response.outputs].index("LOGITS")
    return np.frombuffer(response.raw_output_contents[index], dtype="<f4")


def measure(address_a: str, address_b: str, model: str, texts: list[str], sequences: int,
            stream_chunks: int) -> dict:
    import grpc
    from rnnserve.protos import sentiment_pb2 as pb
    from rnnserve.protos import sentiment_pb2_grpc
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(address_a) as channel_a, \
            grpc.insecure_channel(address_b) as channel_b:
        infer_a = service_pb2_grpc.GRPCInferenceServiceStub(channel_a).ModelInfer
        infer_b = service_pb2_grpc.GRPCInferenceServiceStub(channel_b).ModelInfer
        text_a = sentiment_pb2_grpc.SentimentStub(channel_a)
        text_b = sentiment_pb2_grpc.SentimentStub(channel_b)
        export_s, import_s, sizes, diffs = [], [], [], []
        for index in range(sequences):
            sid = 1_000_000 + index
            words = texts[index % len(texts)].split()
            first, rest = " ".join(words[:8]) or "good", " ".join(words[8:16]) or "fine"
            infer_a(_infer_request(model, first, sid, start=True), timeout=30)
            ref = pb.SequenceRef(sequence_id=sid)
            check = index % 10 == 0
            if check:   # a copy stays on A to compare against
                copy = text_a.ExportSequence(pb.ExportSequenceRequest(
                    model=model, sequence=ref), timeout=30).state
                text_a.ImportSequence(pb.ImportSequenceRequest(
                    sequence=pb.SequenceRef(sequence_id=sid + 500_000), state=copy), timeout=30)
            t0 = time.perf_counter()
            blob = text_a.ExportSequence(pb.ExportSequenceRequest(
                model=model, sequence=ref, release=True), timeout=30).state
            t1 = time.perf_counter()
            text_b.ImportSequence(pb.ImportSequenceRequest(sequence=ref, state=blob),
                                  timeout=30)
            t2 = time.perf_counter()
            export_s.append(t1 - t0)
            import_s.append(t2 - t1)
            sizes.append(len(blob))
            moved = _logits(infer_b(_infer_request(model, rest, sid, start=False), timeout=30))
            if check:
                stayed = _logits(infer_a(_infer_request(model, rest, sid + 500_000,
                                                        start=False), timeout=30))
                diffs.append(float(np.abs(moved - stayed).max()))

        plain, exported, state_size = _stream_cost(text_a, model, texts, stream_chunks)

    ms = lambda values, q: percentile(values, q) * 1e3
    return {
        "model": model, "sequences": sequences,
        "snapshot_bytes": int(statistics.median(sizes)),
        "export_ms_p50": ms(export_s, 50), "export_ms_p99": ms(export_s, 99),
        "import_ms_p50": ms(import_s, 50), "import_ms_p99": ms(import_s, 99),
        "move_ms_p50": ms([a + b for a, b in zip(export_s, import_s, strict=True)], 50),
        "parity_checks": len(diffs), "max_abs_logit_diff_after_move": max(diffs),
        "stream_chunk_ms_p50": ms(plain, 50),
        "stream_chunk_export_state_ms_p50": ms(exported, 50),
        "stream_state_bytes": state_size,
    }


def _stream_cost(stub, model: str, texts: list[str], chunks: int):
    """Median latency of a chunk on one stream, plain vs export_state, alternating."""
    import queue

    from rnnserve.protos import sentiment_pb2 as pb

    outbox: queue.Queue = queue.Queue()

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    responses = stub.StreamClassify(requests(), timeout=600)
    plain, exported = [], []
    size = 0
    for index in range(chunks):
        words = texts[index % len(texts)].split()[:6] or ["good"]
        export = index % 2 == 1
        request = pb.StreamClassifyRequest(text=" ".join(words), model=model if index == 0
                                           else "", export_state=export)
        t0 = time.perf_counter()
        outbox.put(request)
        response = next(responses)
        elapsed = time.perf_counter() - t0
        if index >= 10:                     # skip connection warm-up
            (exported if export else plain).append(elapsed)
        if export:
            size = len(response.state)
    outbox.put(None)
    for _ in responses:
        pass
    return plain, exported, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository")
    parser.add_argument("--model", help="default: every model of the repository")
    parser.add_argument("--sequences", type=int, default=300)
    parser.add_argument("--stream-chunks", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    repository = find_repository(args.repository)
    models = [args.model] if args.model else sorted(
        p.parent.name for p in repository.glob("*/config.pbtxt"))
    texts = load_texts(1000)
    a, port_a = start_server(repository, None, {})
    b, port_b = start_server(repository, None, {})
    try:
        results = [measure(f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}", model, texts,
                           args.sequences, args.stream_chunks) for model in models]
    finally:
        for process in (a, b):
            process.terminate()
            process.wait(timeout=60)
    if args.json:
        json.dump({"repository": str(repository), "results": results}, sys.stdout, indent=2)
        print()
        return 0
    print(f"repository {repository}")
    print("| model | snapshot B | export p50/p99 ms | import p50/p99 ms | move p50 ms | "
          "max abs logit diff after move (checks) | chunk p50 ms plain / with export_state |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['snapshot_bytes']:,} | {r['export_ms_p50']:.2f} / "
              f"{r['export_ms_p99']:.2f} | {r['import_ms_p50']:.2f} / {r['import_ms_p99']:.2f} | "
              f"{r['move_ms_p50']:.2f} | {r['max_abs_logit_diff_after_move']:.1e} "
              f"({r['parity_checks']}) | {r['stream_chunk_ms_p50']:.3f} / "
              f"{r['stream_chunk_export_state_ms_p50']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
