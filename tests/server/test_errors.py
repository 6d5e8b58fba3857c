"""Every bad input gets a precise status and a message saying what to fix; nothing
malformed reaches ONNX Runtime, and an ORT failure is INTERNAL for that batch only."""

from __future__ import annotations

import time

import grpc
import pytest
from offline import LSTM
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from rnnserve.server.wire import request_class
from serving import start_server

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _status(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "predictions"):
            list(result)
    return info.value.code(), info.value.details()


@pytest.mark.parametrize(("texts", "model", "version", "code", "needle"), [
    ([], LSTM, "", INVALID, "no texts"),
    (["great", ""], LSTM, "", INVALID, "text 1 is empty"),
    (["   \t "], LSTM, "", INVALID, "has no tokens"),
    (["great"] * 257, LSTM, "", INVALID, "at most 256"),
    (["great"], "no-such-model", "", grpc.StatusCode.NOT_FOUND,
     "is not found (served models: tiny-gru, tiny-gru-stream, tiny-lstm, tiny-lstm-stream)"),
    (["great"], LSTM, "7", grpc.StatusCode.NOT_FOUND, "version 7 is not found (served versions"),
    (["great"], LSTM, "latest", grpc.StatusCode.NOT_FOUND, "version latest is not found"),
    (["great"], "", "", INVALID, "no default model"),
])
def test_classify_bad_input(stub, texts, model, version, code, needle):
    got, details = _status(stub.Classify, pb.ClassifyRequest(texts=texts, model=model,
                                                             version=version))
    assert got == code
    assert needle in details


def _raw_classify(channel):
    return channel.unary_unary("/rnnserve.v1.Sentiment/Classify",
                               request_serializer=lambda message: message.SerializeToString(),
                               response_deserializer=pb.ClassifyResponse.FromString)


def test_invalid_utf8_is_invalid_argument_not_internal(channel):
    raw = request_class("ClassifyRequest")
    code, details = _status(_raw_classify(channel),
                            raw(texts=[b"fine", b"bad \xff\xfe"], model=LSTM.encode()))
    assert code == INVALID and "texts[1] is not valid UTF-8" in details
    code, details = _status(_raw_classify(channel), raw(texts=[b"ok"], model=b"\xc3"))
    assert code == INVALID and "model is not valid UTF-8" in details
    stream = channel.stream_stream("/rnnserve.v1.Sentiment/StreamClassify",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=pb.StreamClassifyResponse.FromString)
    chunk = request_class("StreamClassifyRequest")
    code, details = _status(stream, iter([chunk(text=b"\x80", model=LSTM.encode())]))
    assert code == INVALID and "text is not valid UTF-8" in details


def test_message_too_large_is_resource_exhausted(tiny_repository):
    with start_server(tiny_repository, max_message_bytes=4096) as server:
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        code, _ = _status(stub.Classify, pb.ClassifyRequest(texts=["great " * 1000],
                                                            model=LSTM))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Classify(pb.ClassifyRequest(texts=["great"], model=LSTM)).predictions


@pytest.mark.parametrize(("requests", "code", "needle"), [
    ([pb.StreamClassifyRequest(text="", model=LSTM)], INVALID, "first chunk has no tokens"),
    ([pb.StreamClassifyRequest(text="  ", model=LSTM, end=True)], INVALID, "no tokens"),
    ([pb.StreamClassifyRequest(text="good", model=LSTM), pb.StreamClassifyRequest(text=" ")],
     INVALID, "chunk without end has no tokens"),
    ([pb.StreamClassifyRequest(text="good", model="nope")], grpc.StatusCode.NOT_FOUND,
     "is not found (served models:"),
    ([pb.StreamClassifyRequest(text="good", model=LSTM),
      pb.StreamClassifyRequest(text="good", model="tiny-gru")], INVALID,
     "only the first message"),
])
def test_stream_bad_input(stub, requests, code, needle):
    got, details = _status(stub.StreamClassify, iter(requests))
    assert got == code
    assert needle in details


def test_full_queue_answers_resource_exhausted_at_once(tiny_repository):
    with start_server(tiny_repository, max_queue_size=4, max_queue_delay_us=1_500_000,
                      adaptive_queue_delay=False) as server:
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        held = stub.Classify.future(pb.ClassifyRequest(texts=["good"] * 4, model=LSTM))
        time.sleep(0.3)                                 # 4 rows wait for the batch delay
        started = time.monotonic()
        code, details = _status(stub.Classify, pb.ClassifyRequest(texts=["bad"], model=LSTM))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at capacity" in details
        assert time.monotonic() - started < 1.0          # not after the 1.5 s batch delay
        assert len(held.result(timeout=10).predictions) == 4   # accepted work completes


def test_ort_failure_is_internal_and_server_stays_up(tiny_repository):
    with start_server(tiny_repository) as server:
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        model = server.registry.get(LSTM).scheduler.executors[0].model
        original = model.run
        calls = []

        def broken(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("simulated ORT failure")
            return original(*args, **kwargs)

        model.run = broken
        code, details = _status(stub.Classify, pb.ClassifyRequest(texts=["good"], model=LSTM))
        assert code == grpc.StatusCode.INTERNAL and "still serving" in details
        assert stub.Classify(pb.ClassifyRequest(texts=["good"], model=LSTM)).predictions
        calls.clear()
        # a failed chunk closes its sequence: later chunks are NOT_FOUND, the stream ends
        code, details = _status(stub.StreamClassify, iter([
            pb.StreamClassifyRequest(text="good", model=LSTM)]))
        assert code == grpc.StatusCode.INTERNAL
        assert len(server.registry.get(LSTM).store) == 0


def test_text_without_tokens_found_by_the_worker(tiny_repository):
    """A text that passes the loop-side check but yields no token (tokenized in the worker)
    fails its request with INVALID_ARGUMENT; the rest of the batch runs normally."""
    with start_server(tiny_repository) as server:
        executor = server.registry.get(LSTM).scheduler.executors[0]
        real = executor.encoder

        class DropsMarker:
            def encode(self, texts):
                return [ids[:0] if text == "\u2063" else ids
                        for text, ids in zip(texts, real.encode(texts), strict=True)]

        executor.encoder = DropsMarker()
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        code, details = _status(stub.Classify,
                                pb.ClassifyRequest(texts=["good", "\u2063"], model=LSTM))
        assert code == INVALID and "text 1 has no tokens" in details
        assert stub.Classify(pb.ClassifyRequest(texts=["good"], model=LSTM)).predictions


def test_text_length_limit_on_every_entry_point(tiny_repository):
    """max_text_length caps a Classify text, a stream chunk and a KServe text; exactly at
    the limit is accepted."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    limit = 40
    at_limit, over = "great " * 6 + "fine", "great " * 7
    assert len(at_limit) <= limit < len(over)
    with start_server(tiny_repository, max_text_length=limit) as server, \
            server.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        assert stub.Classify(pb.ClassifyRequest(texts=[at_limit], model=LSTM), timeout=10)
        code, details = _status(stub.Classify, pb.ClassifyRequest(
            texts=["fine", over], model=LSTM), timeout=10)
        assert code == INVALID and "text 1 is 42 characters long; at most 40" in details
        code, details = _status(stub.StreamClassify, iter([
            pb.StreamClassifyRequest(text="fine", model=LSTM),
            pb.StreamClassifyRequest(text=over)]), timeout=10)
        assert code == INVALID and "the chunk is 42 characters long" in details

        request = service_pb2.ModelInferRequest(model_name=LSTM)
        tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
        tensor.contents.bytes_contents.append(over.encode())
        with pytest.raises(grpc.RpcError) as error:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        assert error.value.code() == INVALID and "at most 40" in error.value.details()
