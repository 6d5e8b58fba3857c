"""Reduced-precision variants of the fp32 serving graph.

Invariants:
- Every variant keeps the fp32 graph's boundary: same input/output names, INT64 ids and
  lengths, FP32 state and logits, so the server code is identical for every precision.
- ``int8``: ONNX Runtime dynamic quantization (weights int8, activations quantized per
  call). LSTM nodes become ``com.microsoft.DynamicQuantizeLSTM`` (quantized recurrence);
  ORT has no quantized GRU, so GRU keeps float recurrence and only the embedding and head
  are quantized.
- ``fp16``: onnxconverter-common ``float16`` with ``keep_io_types=True`` (casts inside the
  graph). On the CPU execution provider ORT has no fp16 LSTM/GRU kernels and inserts casts
  back to fp32 around them, so a CPU run validates the fp16 weights and boundary casts but
  not fp16 arithmetic; the variant is meant for the CUDA provider.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import onnx

PRECISIONS = ("fp32", "fp16", "int8")


def to_precision(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """Return the ``precision`` variant of the fp32 ``model`` (``model`` itself for fp32)."""
    if precision == "fp32":
        return model
    if precision == "fp16":
        return to_fp16(model)
    if precision == "int8":
        return to_int8(model)
    raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # One warning per weight below fp16's range ("will be truncated to 1e-07"): expected.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    converted.ir_version = model.ir_version
    return converted


def to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quant_logger = logging.getLogger()
    previous = quant_logger.level
    # quantize_dynamic logs a "consider pre-processing" warning on the root logger each call.
    quant_logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="rnnserve-int8-") as tmp:
            output = Path(tmp) / "model.int8.onnx"
            quantize_dynamic(
                model,
                output,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["LSTM", "MatMul", "Gather"],
            )
            return onnx.load(str(output))
    finally:
        quant_logger.setLevel(previous)
