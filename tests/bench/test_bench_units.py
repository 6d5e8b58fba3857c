"""Unit tests of the benchmark building blocks that need no server."""

from __future__ import annotations

import math
import struct

from rnnserve.bench import targets
from rnnserve.bench.data import generated_sentences, load_sentences
from rnnserve.bench.report import markdown
from rnnserve.bench.stats import summarize_latencies
from rnnserve.bench.streams import make_chunks
from rnnserve.bench.workloads import bytes_tensor, kserve_text_request


def test_summaries_are_ordered_and_empty_is_nan():
    summary = summarize_latencies([0.001 * i for i in range(1, 101)])
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"] == 100
    assert math.isnan(summarize_latencies([])["p50_ms"])


def test_sentences_fall_back_to_generated(tmp_path):
    sentences, source = load_sentences(tmp_path / "absent.tsv")
    assert source.startswith("generated") and sentences == generated_sentences()
    assert all(s.strip() for s in sentences)


def test_chunks_split_at_whitespace():
    chunks = make_chunks(["a b c d e f", "g"], words_per_chunk=4)
    assert chunks == ["a b c d", "e f", "g"]


def test_kserve_request_encodes_one_bytes_element():
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest.FromString(kserve_text_request("m", "héllo"))
    assert request.model_name == "m" and list(request.inputs[0].shape) == [1, 1]
    raw = request.raw_input_contents[0]
    assert raw == bytes_tensor(["héllo".encode()]) and struct.unpack("<I", raw[:4])[0] == 6


def _level(c, rps, p50, p99):
    return {"concurrency": c, "throughput_rps": rps, "tokens_per_s": rps * 20, "p50_ms": p50,
            "p95_ms": p99, "p99_ms": p99, "requests": 100, "errors": 0}


def test_targets_and_report_from_synthetic_results():
    results = {
        "models": [{"name": "m", "role": "primary"}],
        "placements": {"pinned": {"description": "pinned"}},
        "raw_limit": [{"placement": "pinned", "model": "m", "sentences_per_s": 1000.0,
                       "tokens_per_s": 20000.0, "pipeline_sentences_per_s": 900.0,
                       "best_batch": 8, "batch1_p50_ms": 0.4, "batch1_pipeline_p50_ms": 0.45,
                       "precision": "fp32", "threads": 1, "sweep": []}],
        "unary": [
            {"placement": "pinned", "model": "m", "system": "rnnserve", "api": "text",
             "driver": "loadgen", "levels": [_level(1, 500, 0.8, 1.0), _level(16, 950, 10, 12)]},
            {"placement": "pinned", "model": "m", "system": "rnnserve", "api": "kserve",
             "driver": "loadgen", "levels": [_level(16, 900, 10, 12)]},
            {"placement": "pinned", "model": "m", "system": "mlserver", "api": "kserve",
             "driver": "loadgen", "levels": [_level(16, 300, 40, 60)]},
        ],
        "streaming": [],
    }
    rows = {r["target"]: r for r in targets.evaluate(results)}
    assert rows["saturation >= 90% of raw ORT"]["met"] is True
    assert rows["p50 @c1 <= raw batch-1 + 0.5 ms"]["met"] is True
    assert rows[">= 1.5x mlserver throughput at <= p99"]["met"] is True
    results["targets"] = list(rows.values())
    text = markdown(results)
    assert "| rnnserve text (loadgen) | 16 | 950 |" in text and "95%" in text


def test_profile_summary_buckets_collapsed_stacks():
    from rnnserve.bench.profile import parse_collapsed, summarize

    text = ("main (a.py:1);run (onnxruntime/capi/x.py:9) 30\n"
            "main (a.py:1);_run (asyncio/events.py:80) 10\n"
            "worker (threading.py:1);encode (server/tokenize.py:41) 10\n")
    summary = summarize(parse_collapsed(text))
    shares = {c["name"]: c["share"] for c in summary["categories"]}
    assert summary["samples"] == 50
    assert shares == {"onnxruntime": 0.6, "asyncio": 0.2, "tokenizer": 0.2}
