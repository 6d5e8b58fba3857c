"""Request builders for the load generator: one sentence per request, serialized up front."""

from __future__ import annotations

import struct

from rnnserve.bench.loadgen import UnaryWorkload

KSERVE_INFER = "/inference.GRPCInferenceService/ModelInfer"
CLASSIFY = "/rnnserve.v1.Sentiment/Classify"
STREAM_CLASSIFY = "/rnnserve.v1.Sentiment/StreamClassify"
#: The BYTES input every text model (rnnserve, PyTriton and MLServer wrappers) accepts.
TEXT_INPUT = "TEXT"
#: The outputs requested from every system, so all of them do the same work.
REQUESTED_OUTPUTS = ("PROBABILITIES", "LOGITS")


def bytes_tensor(items: list[bytes]) -> bytes:
    """KServe v2 raw BYTES encoding: each element as <uint32 LE length><bytes>."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def kserve_text_request(model: str, text: str, *, input_name: str = TEXT_INPUT,
                        shape: tuple[int, ...] = (1, 1),
                        outputs: tuple[str, ...] = REQUESTED_OUTPUTS) -> bytes:
    """A serialized ``ModelInferRequest`` carrying one text as a ``[1, 1]`` BYTES tensor."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name = input_name
    tensor.datatype = "BYTES"
    tensor.shape.extend(shape)
    request.raw_input_contents.append(bytes_tensor([text.encode("utf-8")]))
    for name in outputs:
        request.outputs.add().name = name
    return request.SerializeToString()


def check_kserve_response(data: bytes) -> int:
    """Parse a ``ModelInferResponse``; return its batch size (rows of the first output)."""
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse.FromString(data)
    if not response.outputs:
        raise ValueError(f"KServe response without outputs from model {response.model_name!r}")
    return int(response.outputs[0].shape[0]) if response.outputs[0].shape else 1


def kserve_text_workload(model: str, sentences: list[str], tokens: list[int], *,
                         input_name: str = TEXT_INPUT) -> UnaryWorkload:
    return UnaryWorkload(
        api="kserve",
        method=KSERVE_INFER,
        requests=[kserve_text_request(model, s, input_name=input_name) for s in sentences],
        tokens=list(tokens),
        check=check_kserve_response,
    )


def check_classify_response(data: bytes) -> int:
    """Parse a ``rnnserve.v1.ClassifyResponse``; return how many predictions it holds."""
    from rnnserve.protos import sentiment_pb2

    response = sentiment_pb2.ClassifyResponse.FromString(data)
    for prediction in response.predictions:
        if not prediction.probabilities or prediction.tokens < 1:
            raise ValueError(f"malformed prediction from {response.model!r}: {prediction}")
    return len(response.predictions)


def text_api_workload(model: str, sentences: list[str], tokens: list[int]) -> UnaryWorkload:
    """rnnserve.v1.Sentiment/Classify, one text per request."""
    from rnnserve.protos import sentiment_pb2

    return UnaryWorkload(
        api="text",
        method=CLASSIFY,
        requests=[
            sentiment_pb2.ClassifyRequest(texts=[s], model=model).SerializeToString()
            for s in sentences
        ],
        tokens=list(tokens),
        check=check_classify_response,
    )
