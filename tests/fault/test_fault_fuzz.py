"""Property-based fuzzing of one real in-process server (text API, KServe v2, raw bytes).

Whatever a client sends, the server answers one of the documented statuses (docs/errors.md),
never UNKNOWN/INTERNAL, and keeps serving. ``pytest -s`` prints the statuses per API.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from fault_support import (
    KSERVE_SERVICE,
    SLOW,
    TEXT_SERVICE,
    WORDS,
    StatusTally,
    code_of,
    healthy_classify,
    identity,
    open_sequences,
    raw_bytes,
    set_parameter,
    skip_unless_slow,
    slow,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protobuf_wire import field
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc

LSTM, GRU = "tiny-lstm", "tiny-gru"
RPC_TIMEOUT = 20

# Fast budget: ~1000 cases in all (the slow variant multiplies it).
FAST = {"classify": 250, "stream": 120, "infer": 300, "stream_infer": 60, "raw": 250,
        "state": 120}
SLOW_FACTOR = 8


@pytest.fixture(scope="module")
def fuzz_server(tiny_repository):
    # a short idle time so sequences fuzz leaves open expire during the run
    with start_server(tiny_repository, sequence_idle_seconds=2.0, max_texts_per_request=16,
                      max_message_bytes=1024 * 1024) as handle:
        yield handle


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_server):
    with fuzz_server.channel() as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


def _run(strategy, body, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=not SLOW,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def inner(value):
        body(value)
    inner()


def _after(server, tally: StatusTally) -> None:
    tally.assert_documented()
    seconds, response = healthy_classify(server, LSTM)
    assert response.predictions[0].label
    assert seconds < 5


# -- strategies ----------------------------------------------------------------------------

words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)
weird = st.sampled_from([
    "", " ", "\t\n \r", "\x00", "\x00\x01\x02", "\u200b\u200b", "\ufeff", "\U0001f600" * 50,
    "e\u0301" * 30, "\ud7ff\ue000", "word " * 2000, "x" * 50_000, "good " * 3000,
    "\\" * 100, "%s%n%x", "' OR 1=1 --", "\u202e gnp.exe", "日本語のテキスト", "a\x85b\u2028c",
])
texts = st.one_of(words, weird, st.text(max_size=64), st.text(
    st.characters(codec="utf-8"), max_size=400))
# Served names most of the time, so most cases get past the model lookup and exercise
# validation and the engine; hostile names the rest of the time.
served = st.sampled_from([LSTM, GRU])
hostile_names = st.one_of(
    st.sampled_from(["", "../x", "../../etc/passwd", "tiny-lstm/../tiny-gru",
                     "/tiny-lstm", "tiny-lstm\x00", "TINY-LSTM", " tiny-lstm", "tiny-lstm-stream",
                     "tiny-gru-stream", "-stream", "." , "..", "%2e%2e%2fx", "x" * 5000]),
    st.text(max_size=24))
hostile_versions = st.one_of(st.sampled_from(
    ["2", "0", "-1", "01", "1.0", "../1", "latest", "9" * 40, "1\x00", " 1"]),
    st.text(max_size=8))


def mostly(good, bad, percent: int = 80):
    """``good`` about ``percent`` % of the time (hypothesis' own choice between branches
    leans heavily towards the branch with more to explore)."""
    return st.integers(0, 99).flatmap(lambda i: good if i < percent else bad)


names = mostly(served, hostile_names)
versions = mostly(st.sampled_from(["", "1"]), hostile_versions)


# -- text API ------------------------------------------------------------------------------

def test_fuzz_classify(fuzz_server, fuzz_channel):
    _fuzz_classify(fuzz_server, fuzz_channel, FAST["classify"])


@slow
@skip_unless_slow
def test_fuzz_classify_slow(fuzz_server, fuzz_channel):
    _fuzz_classify(fuzz_server, fuzz_channel, FAST["classify"] * SLOW_FACTOR)


def _fuzz_classify(server, channel, examples: int) -> None:
    stub = sentiment_pb2_grpc.SentimentStub(channel)
    tally = StatusTally("Classify fuzz")
    strategy = st.tuples(st.lists(texts, max_size=6), names, versions)

    def body(case):
        items, model, version = case
        tally.case("Classify")
        request = pb.ClassifyRequest(texts=items, model=model, version=version)
        code, details, response = code_of(lambda: stub.Classify(request, timeout=RPC_TIMEOUT))
        tally.record("Classify", code, details, case)
        if code == grpc.StatusCode.OK:
            assert len(response.predictions) == len(items)
            for prediction in response.predictions:
                assert np.isfinite(prediction.logits).all()
                assert abs(sum(prediction.probabilities) - 1) < 1e-4

    _run(strategy, body, examples)
    # metadata calls with the same hostile names
    for model in ["../x", "", "x" * 5000, LSTM, "\x00"]:
        tally.case("GetModelMetadata")
        code, details, _ = code_of(lambda m=model: stub.GetModelMetadata(
            pb.GetModelMetadataRequest(model=m, version="../1"), timeout=RPC_TIMEOUT))
        tally.record("GetModelMetadata", code, details, model)
    _after(server, tally)


def test_fuzz_stream_classify(fuzz_server, fuzz_channel):
    _fuzz_stream(fuzz_server, fuzz_channel, FAST["stream"])


@slow
@skip_unless_slow
def test_fuzz_stream_classify_slow(fuzz_server, fuzz_channel):
    _fuzz_stream(fuzz_server, fuzz_channel, FAST["stream"] * SLOW_FACTOR)


def _fuzz_stream(server, channel, examples: int) -> None:
    stub = sentiment_pb2_grpc.SentimentStub(channel)
    tally = StatusTally("StreamClassify fuzz")
    message = st.builds(
        lambda text, model, version, end, reset, set_model: (
            text, model if set_model else "", version if set_model else "", end, reset),
        texts.filter(lambda t: len(t) < 20_000), st.one_of(st.sampled_from([LSTM, GRU]), names),
        versions, st.booleans(), st.booleans(), st.booleans())
    strategy = st.lists(message, min_size=0, max_size=8)

    def body(messages):
        tally.case("StreamClassify")
        requests = [pb.StreamClassifyRequest(text=t, model=m, version=v, end=e, reset=r)
                    for t, m, v, e, r in messages]
        responses = []

        def consume():
            responses.extend(stub.StreamClassify(iter(requests), timeout=RPC_TIMEOUT))

        code, details, _ = code_of(consume)
        tally.record("StreamClassify", code, details, messages)
        assert len(responses) <= len(requests)
        for response in responses:
            assert np.isfinite(response.prediction.logits).all()

    _run(strategy, body, examples)
    for name in (LSTM, GRU):      # every fuzz stream ended or was closed by the server
        assert _wait_zero(lambda n=name: open_sequences(server, n)), name
    _after(server, tally)


def _wait_zero(read, timeout: float = 10.0) -> bool:
    from fault_support import poll
    return bool(poll(lambda: read() == 0, timeout))


# -- sequence state (ExportSequence / ImportSequence / resume_state) ----------------------

@st.composite
def snapshots(draw, valid: bytes):
    """Mutations of a real snapshot (flipped, cut, extended, spliced) and plain junk."""
    kind = draw(st.sampled_from(["flip", "cut", "extend", "splice", "junk", "valid", "empty"]))
    data = bytearray(valid)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= draw(st.integers(1, 255))
    elif kind == "cut":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":
        start = draw(st.integers(0, len(data)))
        data[start:start + draw(st.integers(0, 40))] = draw(st.binary(max_size=40))
    elif kind == "junk":
        data = bytearray(draw(st.binary(max_size=300)))
    elif kind == "empty":
        data = bytearray()
    return bytes(data)


def _refs():
    return st.one_of(st.builds(pb.SequenceRef),
                     st.builds(lambda i: pb.SequenceRef(sequence_id=i), st.integers(0, 2**64 - 1)),
                     st.builds(lambda n: pb.SequenceRef(sequence_name=n), st.text(max_size=20)))


def test_fuzz_sequence_state(fuzz_server, fuzz_channel):
    _fuzz_state(fuzz_server, fuzz_channel, FAST["state"])


@slow
@skip_unless_slow
def test_fuzz_sequence_state_slow(fuzz_server, fuzz_channel):
    _fuzz_state(fuzz_server, fuzz_channel, FAST["state"] * SLOW_FACTOR)


def _fuzz_state(server, channel, examples: int) -> None:
    stub = sentiment_pb2_grpc.SentimentStub(channel)
    tally = StatusTally("sequence state fuzz")
    valid = next(iter(stub.StreamClassify(iter([pb.StreamClassifyRequest(
        text="a fine film", model=LSTM, export_state=True, end=True)]),
        timeout=RPC_TIMEOUT))).state
    strategy = st.tuples(snapshots(valid), _refs(), st.one_of(st.sampled_from(
        [LSTM, GRU, "", f"{LSTM}-stream"]), names), versions, texts, st.booleans())

    def body(case):
        blob, ref, model, version, text, release = case
        tally.case("ImportSequence")
        code, details, response = code_of(lambda: stub.ImportSequence(pb.ImportSequenceRequest(
            model=model, version=version, sequence=ref, state=blob), timeout=RPC_TIMEOUT))
        tally.record("ImportSequence", code, details, case)
        if code == grpc.StatusCode.OK:
            assert blob == valid, "a changed snapshot passed the integrity check"
            assert np.isfinite(response.prediction.logits).all()
            tally.case("ExportSequence")
            code, details, _ = code_of(lambda: stub.ExportSequence(
                pb.ExportSequenceRequest(model=response.model, sequence=ref, release=True),
                timeout=RPC_TIMEOUT))
            tally.record("ExportSequence", code, details, case)
            assert code == grpc.StatusCode.OK, details       # it was just opened
        tally.case("ExportSequence")
        code, details, _ = code_of(lambda: stub.ExportSequence(pb.ExportSequenceRequest(
            model=model, version=version, sequence=ref, release=release),
            timeout=RPC_TIMEOUT))
        tally.record("ExportSequence", code, details, case)
        tally.case("StreamClassify")
        responses: list = []
        code, details, _ = code_of(lambda: responses.extend(stub.StreamClassify(iter([
            pb.StreamClassifyRequest(text=text[:2000], model=model, resume_state=blob,
                                     export_state=release),
            pb.StreamClassifyRequest(text="and more", end=True)]), timeout=RPC_TIMEOUT)))
        tally.record("StreamClassify", code, details, case)
        for answer in responses:
            assert np.isfinite(answer.prediction.logits).all()

    _run(strategy, body, examples)
    for name in (LSTM, GRU):
        assert _wait_zero(lambda n=name: open_sequences(server, n)), name
    _after(server, tally)


# -- KServe --------------------------------------------------------------------------------

DATATYPES = ["BYTES", "FP32", "INT64", "INT32", "UINT8", "BOOL", "FP16", "STRING", "", "bytes"]
KMODELS = st.one_of(st.sampled_from([LSTM, GRU, f"{LSTM}-stream", f"{GRU}-stream"]), names)
int64s = st.integers(-(2**63), 2**63 - 1)
shapes = st.lists(st.one_of(st.integers(-3, 4), int64s), max_size=4)
param_values = st.one_of(st.booleans(), int64s, st.tuples(st.just("u"), st.integers(0, 2**64 - 1)),
                         st.floats(allow_nan=True), st.text(max_size=12), st.sampled_from(
                             [0, 1, 5, -1, "", "5", True, False]))
param_keys = st.sampled_from(["sequence_id", "sequence_start", "sequence_end", "priority",
                              "timeout", "classification", "binary_data_output", "x", ""])
seq_params = st.fixed_dictionaries({}, optional={
    "sequence_id": st.one_of(st.integers(1, 6), st.sampled_from(["s1", "s2", 0, -5, ""]),
                             param_values),
    "sequence_start": st.one_of(st.booleans(), param_values),
    "sequence_end": st.one_of(st.booleans(), param_values)})


@st.composite
def infer_requests(draw):
    message = service_pb2.ModelInferRequest(model_name=draw(KMODELS),
                                            model_version=draw(versions),
                                            id=draw(st.text(max_size=8)))
    n_inputs = draw(st.sampled_from([1, 1, 1, 0, 2, 3]))
    use_raw = draw(st.booleans())
    for _ in range(n_inputs):
        tensor = message.inputs.add(
            name=draw(st.one_of(st.just("TEXT"), st.sampled_from(["text", "", "LOGITS"]),
                                st.text(max_size=6))),
            datatype=draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6))))
        batch = draw(st.integers(0, 3))
        items = draw(st.lists(st.one_of(words, texts.filter(lambda t: len(t) < 5000)),
                              min_size=batch, max_size=batch))
        tensor.shape.extend(draw(st.one_of(st.just([batch, 1]), shapes)))
        kind = draw(st.sampled_from(["raw", "raw_garbage", "bytes", "bytes_raw_utf8", "int64",
                                     "fp32", "none", "both"]))
        if kind in ("raw", "both") or (use_raw and kind == "none"):
            message.raw_input_contents.append(raw_bytes([t.encode() for t in items]))
        if kind == "raw_garbage":
            message.raw_input_contents.append(draw(st.binary(max_size=64)))
        if kind in ("bytes", "both"):
            tensor.contents.bytes_contents.extend(t.encode() for t in items)
        if kind == "bytes_raw_utf8":
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=16),
                                                                max_size=3)))
        if kind == "int64":
            tensor.contents.int64_contents.extend(draw(st.lists(int64s, max_size=8)))
        if kind == "fp32":
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32),
                                                               max_size=4)))
        for key, value in draw(st.dictionaries(param_keys, param_values, max_size=2)).items():
            set_parameter(tensor.parameters[key], value)
    if draw(st.integers(0, 4)) == 0:
        message.raw_input_contents.append(draw(st.binary(max_size=32)))
    for key, value in draw(seq_params).items():
        set_parameter(message.parameters[key], value)
    for key, value in draw(st.dictionaries(param_keys, param_values, max_size=2)).items():
        set_parameter(message.parameters[key], value)
    for _ in range(draw(st.integers(0, 2))):
        output = message.outputs.add(name=draw(st.one_of(
            st.sampled_from(["LOGITS", "PROBABILITIES", "LABEL"]), st.text(max_size=6))))
        if draw(st.booleans()):
            set_parameter(output.parameters["classification"],
                          draw(st.one_of(st.integers(-3, 5), param_values)))
    return message


def test_fuzz_model_infer(fuzz_server, fuzz_channel):
    _fuzz_infer(fuzz_server, fuzz_channel, FAST["infer"], FAST["stream_infer"])


@slow
@skip_unless_slow
def test_fuzz_model_infer_slow(fuzz_server, fuzz_channel):
    _fuzz_infer(fuzz_server, fuzz_channel, FAST["infer"] * SLOW_FACTOR,
                FAST["stream_infer"] * SLOW_FACTOR)


def _fuzz_infer(server, channel, examples: int, stream_examples: int) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    tally = StatusTally("KServe ModelInfer fuzz")

    def body(message):
        tally.case("ModelInfer")
        code, details, response = code_of(lambda: stub.ModelInfer(message,
                                                                  timeout=RPC_TIMEOUT))
        tally.record("ModelInfer", code, details, message)
        if code == grpc.StatusCode.OK:
            assert len(response.raw_output_contents) == len(response.outputs)

    _run(infer_requests(), body, examples)

    def stream_body(messages):
        tally.case("ModelStreamInfer")
        responses = []

        def consume():
            responses.extend(stub.ModelStreamInfer(iter(messages), timeout=RPC_TIMEOUT))

        code, details, _ = code_of(consume)
        tally.record("ModelStreamInfer", code, details, messages)
        # a failed request does not end the stream: one answer per request
        if code == grpc.StatusCode.OK:
            assert len(responses) == len(messages)
        for response in responses:
            tally.case("ModelStreamInfer.message")
            status = _stream_message_status(response.error_message)
            tally.record("ModelStreamInfer.message", status, response.error_message, messages)

    _run(st.lists(infer_requests(), max_size=5), stream_body, stream_examples)
    for name in (LSTM, GRU):         # fuzz-opened KServe sequences expire (idle 2 s)
        assert _wait_zero(lambda n=name: open_sequences(server, n), timeout=15), name
    _after(server, tally)


def _stream_message_status(error_message: str) -> grpc.StatusCode:
    # ModelStreamInfer carries no status code per message: flag only internal errors
    if not error_message:
        return grpc.StatusCode.OK
    if error_message.startswith("internal error") or "Traceback" in error_message:
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.INVALID_ARGUMENT


# -- raw malformed bytes -------------------------------------------------------------------

UNARY = [TEXT_SERVICE + m for m in ("Classify", "ListModels", "GetModelMetadata",
                                    "ExportSequence", "ImportSequence")] + [
    KSERVE_SERVICE + m for m in (
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelConfig", "ModelStatistics", "RepositoryIndex", "ModelInfer",
        "RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryStatus",
        "CudaSharedMemoryRegister", "TraceSetting", "LogSettings")] + [
    "/grpc.health.v1.Health/Check"]
STREAMING = [TEXT_SERVICE + "StreamClassify", KSERVE_SERVICE + "ModelStreamInfer"]


garbage = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"\xff" * 11, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 10,
                     b"\x0a\x05abc", b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
                     b"\x0b\x0c", b"\x1a\x02\xc3\x28", b"\x0a\x03\xed\xa0\x80"]),
    # well-formed framing, field numbers 1..20, arbitrary (often non-UTF-8) payloads
    st.lists(st.tuples(st.integers(1, 20), st.binary(max_size=40)), max_size=5).map(
        lambda fields: b"".join(field(n, v) for n, v in fields)),
)


def test_fuzz_raw_bytes(fuzz_server, fuzz_channel):
    _fuzz_raw(fuzz_server, fuzz_channel, FAST["raw"])


@slow
@skip_unless_slow
def test_fuzz_raw_bytes_slow(fuzz_server, fuzz_channel):
    _fuzz_raw(fuzz_server, fuzz_channel, FAST["raw"] * SLOW_FACTOR)


def _fuzz_raw(server, channel, examples: int) -> None:
    tally = StatusTally("raw malformed bytes (unary methods)")
    unary = {m: channel.unary_unary(m, request_serializer=identity,
                                    response_deserializer=identity) for m in UNARY}

    def body(case):
        method, payload = case
        api = method.rsplit("/", 1)[1]
        tally.case(api)
        code, details, _ = code_of(lambda: unary[method](payload, timeout=RPC_TIMEOUT))
        tally.record(api, code, details, case)

    _run(st.tuples(st.sampled_from(sorted(unary)), garbage), body, examples)
    _after(server, tally)


@pytest.mark.parametrize("method", STREAMING)
def test_undecodable_stream_message_is_answered(fuzz_server, fuzz_channel, method):
    call = fuzz_channel.stream_stream(method, request_serializer=identity,
                                      response_deserializer=identity)
    code, details, _ = code_of(lambda: list(call(iter([b"\xff" * 11]), timeout=3)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
