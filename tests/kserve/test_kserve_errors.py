"""Malformed KServe requests: the status code and a message in Triton's style."""

from __future__ import annotations

import grpc
import pytest
from kserve_support import LSTM, raw_bytes, request

INVALID = grpc.StatusCode.INVALID_ARGUMENT
STREAM = f"{LSTM}-stream"


def _missing_input():
    message = request(LSTM)
    del message.inputs[:]
    del message.raw_input_contents[:]
    return message


def _extra_input():
    message = request(LSTM, ["a"])
    extra = message.inputs.add(name="IDS", datatype="INT64")
    extra.shape.extend([1, 1])
    message.raw_input_contents.append(b"\0" * 8)
    return message


def _raw_and_typed():
    message = request(LSTM, ["a"])
    message.inputs[0].contents.bytes_contents.append(b"a")
    return message


def _two_raw_entries():
    message = request(LSTM, ["a"])
    message.raw_input_contents.append(raw_bytes([b"b"]))
    return message


def _typed_wrong_field():
    message = request(LSTM, ["a"], raw=False)
    message.inputs[0].contents.fp32_contents.append(1.0)
    return message


def _truncated_raw():
    message = request(LSTM, ["a", "b"])
    message.raw_input_contents[0] = message.raw_input_contents[0][:-1]
    return message


def _unknown_output():
    message = request(LSTM, ["a"])
    message.outputs.add(name="SCORES")
    return message


def _classification_of_label():
    message = request(LSTM, ["a"])
    message.outputs.add(name="LABEL").parameters["classification"].int64_param = 1
    return message


def _start_as_int():
    message = request(STREAM, ["a"], sequence_id=3)
    message.parameters["sequence_start"].int64_param = 1
    return message


CASES = {
    "wrong dtype": (lambda: request(LSTM, ["a"], datatype="FP32"),
                    INVALID, "inference input 'TEXT' data-type is 'FP32', but model"),
    "rank 1 shape": (lambda: request(LSTM, ["a", "b"], shape=[2]),
                     INVALID, ("unexpected shape for input 'TEXT' for model 'tiny-lstm'. "
                               "Expected [-1,1], got [2]")),
    "inner dim 2": (lambda: request(LSTM, ["a", "b"], shape=[1, 2]),
                    INVALID, "Expected [-1,1], got [1,2]"),
    "empty batch": (lambda: request(LSTM, [], shape=[0, 1]), INVALID, "batch-size must be >= 1"),
    "batch too big": (lambda: request(LSTM, ["a"] * 65), INVALID,
                      "inference request batch-size must be <= 64 for 'tiny-lstm'"),
    "missing input": (_missing_input, INVALID,
                      "expected 1 inputs but got 0 inputs for model 'tiny-lstm'"),
    "unknown input": (lambda: request(LSTM, ["a"], name="SENTENCE"), INVALID,
                      "missing required input(s) ['TEXT']"),
    "extra input": (_extra_input, INVALID, "unexpected inference input 'IDS'"),
    "raw and typed": (_raw_and_typed, INVALID,
                      "contents field must not be specified when using raw_input_contents"),
    "raw count": (_two_raw_entries, INVALID, "raw_input_contents must be used for all inputs"),
    "typed wrong field": (_typed_wrong_field, INVALID, "must be bytes_contents, got fp32"),
    "typed count": (lambda: request(LSTM, ["a", "b", "c"], raw=False, shape=[2, 1]), INVALID,
                    "unexpected number of string elements 3 for inference input 'TEXT'"),
    "raw count short": (lambda: request(LSTM, ["a"], shape=[2, 1]), INVALID,
                        "unexpected number of string elements 1"),
    "raw truncated": (_truncated_raw, INVALID, "element byte size indicates more data"),
    "not utf-8": (lambda: _bytes_request([b"\xff\xfe"]), INVALID, "not valid UTF-8"),
    "empty text": (lambda: request(LSTM, [""]), INVALID, ""),
    "unknown output": (_unknown_output, INVALID, "unexpected inference output 'SCORES'"),
    "classification of LABEL": (_classification_of_label, INVALID,
                                "class result not available for output 'LABEL'"),
    "unknown model": (lambda: request("nope", ["a"]), grpc.StatusCode.NOT_FOUND,
                      "Request for unknown model: 'nope' is not found"),
    "unknown version": (lambda: _with_version(request(LSTM, ["a"]), "3"),
                        grpc.StatusCode.NOT_FOUND,
                        "Request for unknown model: 'tiny-lstm' version 3 is not found"),
    "stream of unknown": (lambda: request("nope-stream", ["a"], sequence_id=1),
                          grpc.StatusCode.NOT_FOUND, "'nope-stream' is not found"),
    "sequence on stateless": (lambda: request(LSTM, ["a"], sequence_id=9, sequence_start=True),
                              INVALID, "model 'tiny-lstm' is stateless"),
    "end flag on stateless": (lambda: request(LSTM, ["a"], sequence_end=True), INVALID,
                              "does not accept sequence parameters"),
    "no sequence id": (lambda: request(STREAM, ["a"]), INVALID,
                       "must specify a non-zero or non-empty correlation ID"),
    "zero sequence id": (lambda: request(STREAM, ["a"], sequence_id=0, sequence_start=True),
                         INVALID, "non-zero or non-empty correlation ID"),
    "batch 2 on stateful": (lambda: request(STREAM, ["a", "b"], sequence_id=4,
                                            sequence_start=True),
                            INVALID, "must specify batch-size 1"),
    "sequence_id as bool": (lambda: request(STREAM, ["a"], sequence_id=True), INVALID,
                            "'sequence_id' must be an int64, uint64 or string"),
    "start as int": (_start_as_int, INVALID, "'sequence_start' must be a bool"),
    "continue unknown sequence": (lambda: request(STREAM, ["a"], sequence_id=987654),
                                  grpc.StatusCode.NOT_FOUND, "987654"),
}


def _bytes_request(items):
    message = request(LSTM, ["x"] * len(items))
    message.raw_input_contents[0] = raw_bytes(items)
    return message


def _with_version(message, version):
    message.model_version = version
    return message


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request(kstub, case):
    build, code, text = CASES[case]
    message = build()
    message.id = "req-9"
    with pytest.raises(grpc.RpcError) as error:
        kstub.ModelInfer(message, timeout=10)
    assert error.value.code() == code, error.value.details()
    assert text in error.value.details()
    if code == INVALID and case != "empty text":
        assert error.value.details().startswith("[request id: req-9] ")


def test_server_survives_bad_requests(kstub):
    response = kstub.ModelInfer(request(LSTM, ["loved it"]), timeout=10)
    assert [o.name for o in response.outputs] == ["PROBABILITIES", "LOGITS", "LABEL"]
