"""ModelInferRequest validation and ModelInferResponse construction for rnnserve models.

``parse_request`` turns a request into texts, sequence control and requested outputs, or
raises InvalidArgument with a Triton-style message ("[request id: …] …").
``build_response`` turns the engine's predictions back into a response whose outputs are in
``raw_output_contents`` (one entry per output, same order as ``outputs``), as Triton does.

Invariants: a parsed request has 1 ≤ len(texts) ≤ max(max_batch_size, 1); a stateful request
has exactly one text and a non-zero / non-empty sequence id; a stateless request has no
sequence control. Requested outputs are unique names from OUTPUT_NAMES.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2

from .errors import InvalidArgument
from .kserve_models import (
    INPUT_TEXT,
    OUTPUT_LABEL,
    OUTPUT_NAMES,
    OUTPUT_PROBABILITIES,
    ModelView,
    TensorSpec,
    full_shape,
)
from .kserve_tensors import (
    decode_bytes_elements,
    encode_bytes_elements,
    format_shape,
    fp32_raw,
    typed_contents_fields,
)
from .wire import decode_all
from .wire import sequence_id as checked_sequence_id


@dataclass(frozen=True)
class SequenceControl:
    sequence_id: int | str
    start: bool
    end: bool


@dataclass(frozen=True)
class OutputRequest:
    name: str
    classification: int = 0  # top-k classes as "value:index:label" strings; 0 = the tensor


@dataclass(frozen=True)
class ParsedRequest:
    texts: list[str]
    outputs: list[OutputRequest]
    sequence: SequenceControl | None


@dataclass(frozen=True)
class ServedShape:
    """What one request is checked against."""

    view: ModelView
    max_batch_size: int
    num_labels: int
    labels: tuple[str, ...]


def request_prefix(request: service_pb2.ModelInferRequest) -> str:
    return f"[request id: {request.id or '<id_unknown>'}] "


def parse_request(request: service_pb2.ModelInferRequest, served: ServedShape) -> ParsedRequest:
    prefix = request_prefix(request)
    model = served.view.name
    sequence = _sequence_control(request, served, prefix)
    texts = _text_input(request, served, prefix)
    if sequence is not None and len(texts) != 1:
        raise InvalidArgument(
            f"{prefix}inference request to model '{model}' must specify batch-size 1 due to "
            f"requirements of sequence batcher"
        )
    return ParsedRequest(texts=texts, outputs=_requested_outputs(request, served, prefix),
                         sequence=sequence)


def _text_input(request, served: ServedShape, prefix: str) -> list[str]:
    model = served.view.name
    names = [tensor.name for tensor in request.inputs]
    if INPUT_TEXT not in names:
        got = ", ".join(f"'{n}'" for n in names)
        raise InvalidArgument(
            f"{prefix}expected 1 inputs but got {len(names)} inputs for model '{model}'. "
            f"Got input(s) [{got}], but missing required input(s) ['{INPUT_TEXT}']. "
            "Please provide all required input(s)."
        )
    for name in names:
        if name != INPUT_TEXT:
            raise InvalidArgument(f"{prefix}unexpected inference input '{name}' for model '{model}'")
    if len(names) != 1:
        raise InvalidArgument(f"{prefix}input '{INPUT_TEXT}' is given {len(names)} times for model "
                      f"'{model}'")
    raw_count = len(request.raw_input_contents)
    if raw_count not in (0, len(names)):
        raise InvalidArgument(
            f"{prefix}expected {len(names)} raw_input_contents entries (one per input) but got "
            f"{raw_count} for model '{model}': raw_input_contents must be used for all inputs "
            "or for none"
        )
    tensor = request.inputs[0]
    what = f"inference input '{INPUT_TEXT}' for model '{model}'"
    if tensor.datatype != "BYTES":
        raise InvalidArgument(
            f"{prefix}inference input '{INPUT_TEXT}' data-type is '{tensor.datatype}', but "
            f"model '{model}' expects 'BYTES'"
        )
    count = _check_shape(list(tensor.shape), served, prefix)
    filled = typed_contents_fields(tensor.contents)
    if raw_count:
        if filled:
            raise InvalidArgument(
                f"{prefix}contents field must not be specified when using raw_input_contents "
                f"for '{INPUT_TEXT}' for model '{model}'"
            )
        items = decode_bytes_elements(request.raw_input_contents[0], count, what=what,
                                      prefix=prefix)
    else:
        wrong = [f for f in filled if f != "bytes_contents"]
        if wrong:
            raise InvalidArgument(
                f"{prefix}{what} has datatype BYTES, so its typed contents must be "
                f"bytes_contents, got {', '.join(wrong)}"
            )
        items = list(tensor.contents.bytes_contents)
        if len(items) != count:
            raise InvalidArgument(
                f"{prefix}unexpected number of string elements {len(items)} for {what}, "
                f"expecting {count} (shape {format_shape(tensor.shape)})"
            )
    return decode_all(items, f"{prefix}{what}")


def _check_shape(shape: list[int], served: ServedShape, prefix: str) -> int:
    """Validate the TEXT shape; return its element count (the batch size)."""
    model = served.view.name
    batching = served.max_batch_size > 0
    expected = full_shape(TensorSpec(INPUT_TEXT, "BYTES", (1,)), served.max_batch_size)
    ok = len(shape) == len(expected) and shape[-1] == 1 and all(d >= 0 for d in shape)
    if not ok:
        note = (
            " NOTE: Setting a non-zero max_batch_size in the model config requires a batch "
            "dimension to be prepended to each input shape." if batching else ""
        )
        raise InvalidArgument(
            f"{prefix}unexpected shape for input '{INPUT_TEXT}' for model '{model}'. Expected "
            f"{format_shape(expected)}, got {format_shape(shape)}.{note}"
        )
    batch = shape[0] if batching else 1
    if batch < 1:
        raise InvalidArgument(f"{prefix}inference request batch-size must be >= 1 for '{model}'")
    if batching and batch > served.max_batch_size:
        raise InvalidArgument(
            f"{prefix}inference request batch-size must be <= {served.max_batch_size} "
            f"for '{model}'"
        )
    return batch


def _requested_outputs(request, served: ServedShape, prefix: str) -> list[OutputRequest]:
    model = served.view.name
    if not request.outputs:
        return [OutputRequest(name) for name in OUTPUT_NAMES]
    result: list[OutputRequest] = []
    seen: set[str] = set()
    for tensor in request.outputs:
        if tensor.name not in OUTPUT_NAMES:
            raise InvalidArgument(f"{prefix}unexpected inference output '{tensor.name}' for model "
                          f"'{model}'")
        if tensor.name in seen:
            raise InvalidArgument(f"{prefix}output '{tensor.name}' is requested more than once for "
                          f"model '{model}'")
        seen.add(tensor.name)
        k = 0
        if "classification" in tensor.parameters:
            k = _int_parameter(tensor.parameters["classification"], "classification", prefix)
            if k < 0:
                raise InvalidArgument(f"{prefix}classification count must be >= 0, got {k}")
            if k and tensor.name == OUTPUT_LABEL:
                raise InvalidArgument(
                    f"{prefix}class result not available for output '{OUTPUT_LABEL}' of model "
                    f"'{model}' due to non-numeric type 'BYTES'"
                )
        result.append(OutputRequest(tensor.name, min(k, served.num_labels)))
    return result


def _int_parameter(parameter, key: str, prefix: str) -> int:
    kind = parameter.WhichOneof("parameter_choice")
    if kind in ("int64_param", "uint64_param"):
        return int(getattr(parameter, kind))
    raise InvalidArgument(f"{prefix}parameter '{key}' must be an int64 or uint64, got {kind}")


def _bool_parameter(parameter, key: str, prefix: str) -> bool:
    kind = parameter.WhichOneof("parameter_choice")
    if kind != "bool_param":
        raise InvalidArgument(f"{prefix}parameter '{key}' must be a bool, got {kind}")
    return parameter.bool_param


def _sequence_control(request, served: ServedShape, prefix: str) -> SequenceControl | None:
    model = served.view.name
    params = request.parameters
    sequence_id: int | str = 0
    if "sequence_id" in params:
        parameter = params["sequence_id"]
        kind = parameter.WhichOneof("parameter_choice")
        if kind == "string_param":
            sequence_id = parameter.string_param
        elif kind in ("int64_param", "uint64_param"):
            sequence_id = int(getattr(parameter, kind))
        else:
            raise InvalidArgument(f"{prefix}parameter 'sequence_id' must be an int64, uint64 or "
                          f"string, got {kind}")
    start = "sequence_start" in params and _bool_parameter(params["sequence_start"],
                                                           "sequence_start", prefix)
    end = "sequence_end" in params and _bool_parameter(params["sequence_end"],
                                                       "sequence_end", prefix)
    sequence_id = checked_sequence_id(sequence_id, f"{prefix}parameter 'sequence_id'")
    if not served.view.stateful:
        if sequence_id is not None or start or end:
            raise InvalidArgument(
                f"{prefix}model '{model}' is stateless and does not accept sequence "
                f"parameters (sequence_id, sequence_start, sequence_end); send sequences to "
                f"its stateful flavour '{model}-stream'"
            )
        return None
    if sequence_id is None:
        raise InvalidArgument(
            f"{prefix}inference request to model '{model}' must specify a non-zero or "
            f"non-empty correlation ID"
        )
    return SequenceControl(sequence_id=sequence_id, start=start, end=end)


def build_response(
    request: service_pb2.ModelInferRequest,
    served: ServedShape,
    version: str,
    outputs: list[OutputRequest],
    predictions,
) -> service_pb2.ModelInferResponse:
    """Outputs for ``predictions`` (one per text, each with .label/.probabilities/.logits)."""
    response = service_pb2.ModelInferResponse(
        model_name=served.view.name, model_version=version, id=request.id
    )
    batch = len(predictions)
    batched = served.max_batch_size > 0
    for output in outputs:
        tensor = response.outputs.add(name=output.name)
        if output.name == OUTPUT_LABEL:
            data = encode_bytes_elements(p.label.encode("utf-8") for p in predictions)
            tensor.datatype = "BYTES"
            shape = [batch, 1]
        else:
            values = np.stack([
                p.probabilities if output.name == OUTPUT_PROBABILITIES else p.logits
                for p in predictions
            ]).astype(np.float32, copy=False)
            if output.classification:
                data = encode_bytes_elements(_classes(values, output.classification,
                                                      served.labels))
                tensor.datatype = "BYTES"
                shape = [batch, output.classification]
            else:
                data = fp32_raw(values)
                tensor.datatype = "FP32"
                shape = [batch, values.shape[1]]
        tensor.shape.extend(shape if batched else shape[1:])
        response.raw_output_contents.append(data)
    return response


def _classes(values: np.ndarray, k: int, labels: tuple[str, ...]):
    """Triton's classification extension: per row the top-k as "value:index:label"."""
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    for row, indices in zip(values, order, strict=True):
        for index in indices:
            label = labels[index] if index < len(labels) else ""
            text = f"{float(row[index]):f}:{int(index)}"
            yield (text + f":{label}" if label else text).encode("utf-8")

