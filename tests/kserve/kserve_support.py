"""Helpers of the KServe tests: offline reference, request builders, BYTES encoding."""

from __future__ import annotations

import struct

import numpy as np
import tritonclient.grpc as triton
from kserve_wire import raw_bytes, set_parameter
from offline import GRU, LSTM, Offline, softmax  # noqa: F401 (re-exported to the tests)
from tritonclient.grpc import service_pb2

TOLERANCE = 1e-5

SENTENCES = [
    "a great film with fine actors",
    "the plot was boring and the ending awful",
    "not very good but the music was fun",
    "loved it",
    "hated the story , really bad movie",
    "the actors were fine and the film was really great fun",
]


def text_input(texts: list[str]) -> triton.InferInput:
    tensor = triton.InferInput("TEXT", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t] for t in texts], dtype=object))
    return tensor


def request(model: str, texts: list[str] | None = None, *, raw: bool = True,
            shape: list[int] | None = None, datatype: str = "BYTES", name: str = "TEXT",
            **parameters) -> service_pb2.ModelInferRequest:
    """A hand-made ModelInferRequest (raw or typed contents); parameters by Python type."""
    texts = SENTENCES[:2] if texts is None else texts
    message = service_pb2.ModelInferRequest(model_name=model)
    tensor = message.inputs.add(name=name, datatype=datatype)
    tensor.shape.extend(shape if shape is not None else [len(texts), 1])
    items = [t.encode() for t in texts]
    if raw:
        message.raw_input_contents.append(raw_bytes(items))
    else:
        tensor.contents.bytes_contents.extend(items)
    for key, value in parameters.items():
        set_parameter(message.parameters[key], value)
    return message


def fp32_output(response, name: str) -> np.ndarray:
    index = [o.name for o in response.outputs].index(name)
    shape = list(response.outputs[index].shape)
    return np.frombuffer(response.raw_output_contents[index], dtype="<f4").reshape(shape)


def bytes_output(response, name: str) -> list[bytes]:
    index = [o.name for o in response.outputs].index(name)
    data = response.raw_output_contents[index]
    items, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        items.append(data[offset + 4:offset + 4 + length])
        offset += 4 + length
    return items
