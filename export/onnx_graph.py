"""Build the serving ONNX graph of a SentimentRNN directly from its weights.

The graph uses native ONNX ``LSTM``/``GRU`` operators (one per layer, no unrolled loops) and
follows the I/O contract of docs/architecture.md §2 for an ``Architecture``
(rnnserve/architecture.py; a checkpoint's ``ModelSpec`` is one):

    input_ids   INT64 [batch, time]        lengths      INT64 [batch]
    state_h     FP32  [batch, L*D, hidden] state_c      FP32  [batch, L*D, hidden]  (LSTM)
    logits      FP32  [batch, labels]
    state_h_out FP32  [batch, L*D, hidden] state_c_out  FP32  [batch, L*D, hidden]  (LSTM)

Invariants:
- ``sequence_lens`` (= ``lengths`` as int32) is passed to every recurrent node, so each row's
  ``Y_h``/``Y_c`` is its state after its own last real token; padding never reaches it.
- State axis 1 is ordered like torch's ``h_n`` axis 0: index ``layer * D + direction``.
- Gate blocks are reordered from torch to ONNX order (LSTM i,f,g,o -> i,o,f,c;
  GRU r,z,n -> z,r,h with ``linear_before_reset=1``, which is torch's GRU formula).
- Logits are ``head(concat(last layer's Y_h over directions))`` - a function of the final
  state alone, like the torch module (dropout is the identity at inference).
- The ``layout`` attribute is never used (ORT's CPU LSTM does not implement layout=1); the
  graph transposes to time-major itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnserve.architecture import GATES, Architecture

OPSET = 17
PRODUCER = "rnnserve.export"

#: torch gate block index for each ONNX gate block, per cell.
_GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}


def expected_shapes(spec: Architecture) -> dict[str, tuple[int, ...]]:
    """The state_dict entries (name -> shape) a checkpoint of ``spec`` must contain."""
    gates, hidden = GATES[spec.cell], spec.hidden
    shapes: dict[str, tuple[int, ...]] = {
        "embedding.weight": (spec.vocab_size, spec.embed_dim),
        "head.weight": (spec.num_labels, hidden * spec.directions),
        "head.bias": (spec.num_labels,),
    }
    for layer in range(spec.layers):
        in_dim = spec.embed_dim if layer == 0 else hidden * spec.directions
        for suffix in _direction_suffixes(spec):
            key = f"l{layer}{suffix}"
            shapes[f"rnn.weight_ih_{key}"] = (gates * hidden, in_dim)
            shapes[f"rnn.weight_hh_{key}"] = (gates * hidden, hidden)
            shapes[f"rnn.bias_ih_{key}"] = (gates * hidden,)
            shapes[f"rnn.bias_hh_{key}"] = (gates * hidden,)
    return shapes


def _direction_suffixes(spec: Architecture) -> list[str]:
    return ["", "_reverse"] if spec.bidirectional else [""]


def _reorder_gates(array: np.ndarray, cell: str) -> np.ndarray:
    """Permute the gate blocks along axis 0 from torch order to ONNX order."""
    blocks = np.split(array, GATES[cell], axis=0)
    return np.concatenate([blocks[i] for i in _GATE_ORDER[cell]], axis=0)


def _layer_initializers(
    spec: Architecture, weights: Mapping[str, np.ndarray], layer: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX ``W [D, G*H, in]``, ``R [D, G*H, H]``, ``B [D, 2*G*H]`` for one layer."""
    w, r, b = [], [], []
    for suffix in _direction_suffixes(spec):
        key = f"l{layer}{suffix}"
        w.append(_reorder_gates(weights[f"rnn.weight_ih_{key}"], spec.cell))
        r.append(_reorder_gates(weights[f"rnn.weight_hh_{key}"], spec.cell))
        b.append(
            np.concatenate(
                [
                    _reorder_gates(weights[f"rnn.bias_ih_{key}"], spec.cell),
                    _reorder_gates(weights[f"rnn.bias_hh_{key}"], spec.cell),
                ]
            )
        )
    return tuple(np.ascontiguousarray(np.stack(x), dtype=np.float32) for x in (w, r, b))


class _Graph:
    """Tiny accumulator of nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))


def build_onnx(spec: Architecture, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """Return the fp32 serving graph for ``spec`` with the torch ``state_dict`` ``weights``.

    ``weights`` maps the torch parameter names (``embedding.weight``, ``rnn.*``, ``head.*``)
    to float32 arrays; shapes must match ``expected_shapes(spec)`` (checked by the caller).
    """
    d, h = spec.directions, spec.hidden
    g = _Graph()

    g.const("embedding.weight", np.asarray(weights["embedding.weight"], dtype=np.float32))
    g.node("Gather", ["embedding.weight", "input_ids"], ["embedded"], "embed", axis=0)
    g.node("Transpose", ["embedded"], ["x_l0"], "to_time_major", perm=[1, 0, 2])
    g.node("Cast", ["lengths"], ["seq_lens"], "lengths_int32", to=TensorProto.INT32)

    # Batch-major state [B, L*D, H] -> layer-major [L*D, B, H], sliced per layer below.
    for state in spec.state_names:
        g.node("Transpose", [state], [f"{state}_lm"], f"{state}_to_layer_major", perm=[1, 0, 2])
    g.const("axis0", np.array([0], dtype=np.int64))
    if spec.layers > 1:
        g.const("shape_t_b_dh", np.array([0, 0, d * h], dtype=np.int64))

    layer_outputs: dict[str, list[str]] = {state: [] for state in spec.state_names}
    x = "x_l0"
    for layer in range(spec.layers):
        w, r, b = _layer_initializers(spec, weights, layer)
        g.const(f"W_l{layer}", w)
        g.const(f"R_l{layer}", r)
        g.const(f"B_l{layer}", b)
        g.const(f"start_l{layer}", np.array([layer * d], dtype=np.int64))
        g.const(f"end_l{layer}", np.array([(layer + 1) * d], dtype=np.int64))
        initial = []
        for state in spec.state_names:
            g.node(
                "Slice",
                [f"{state}_lm", f"start_l{layer}", f"end_l{layer}", "axis0"],
                [f"{state}0_l{layer}"],
                f"{state}_slice_l{layer}",
            )
            initial.append(f"{state}0_l{layer}")
        outs = [f"y_l{layer}", f"yh_l{layer}"] + ([f"yc_l{layer}"] if spec.cell == "lstm" else [])
        attrs = {"hidden_size": h, "direction": "bidirectional" if d == 2 else "forward"}
        if spec.cell == "gru":
            attrs["linear_before_reset"] = 1
        g.node(
            spec.cell.upper(),
            [x, f"W_l{layer}", f"R_l{layer}", f"B_l{layer}", "seq_lens", *initial],
            outs,
            f"{spec.cell}_l{layer}",
            **attrs,
        )
        layer_outputs["state_h"].append(f"yh_l{layer}")
        if spec.cell == "lstm":
            layer_outputs["state_c"].append(f"yc_l{layer}")
        if layer + 1 < spec.layers:
            # Y [T, D, B, H] -> [T, B, D*H]: directions concatenated per time step, like torch.
            g.node(
                "Transpose",
                [f"y_l{layer}"],
                [f"y_tbdh_l{layer}"],
                f"y_perm_l{layer}",
                perm=[0, 2, 1, 3],
            )
            g.node(
                "Reshape",
                [f"y_tbdh_l{layer}", "shape_t_b_dh"],
                [f"x_l{layer + 1}"],
                f"y_merge_l{layer}",
            )
            x = f"x_l{layer + 1}"

    for state, parts in layer_outputs.items():
        merged = parts[0]
        if len(parts) > 1:
            merged = f"{state}_lm_out"
            g.node("Concat", parts, [merged], f"{state}_concat", axis=0)
        g.node("Transpose", [merged], [f"{state}_out"], f"{state}_to_batch_major", perm=[1, 0, 2])

    # Head on the last layer's final hidden state: [D, B, H] -> [B, D*H] (forward, backward).
    last = f"yh_l{spec.layers - 1}"
    g.const("shape_b_dh", np.array([0, d * h], dtype=np.int64))
    g.node("Transpose", [last], ["h_last_bdh"], "h_last_batch_major", perm=[1, 0, 2])
    g.node("Reshape", ["h_last_bdh", "shape_b_dh"], ["h_last"], "h_last_merge")
    g.const("head.weight_t", np.ascontiguousarray(weights["head.weight"].T, dtype=np.float32))
    g.const("head.bias", np.asarray(weights["head.bias"], dtype=np.float32))
    g.node("MatMul", ["h_last", "head.weight_t"], ["head_mm"], "head_matmul")
    g.node("Add", ["head_mm", "head.bias"], ["logits"], "head_bias")

    state_dims = ["batch", spec.layers * d, h]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "time"]),
        helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
    ] + [helper.make_tensor_value_info(s, TensorProto.FLOAT, state_dims) for s in spec.state_names]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", spec.num_labels]),
    ] + [
        helper.make_tensor_value_info(f"{s}_out", TensorProto.FLOAT, state_dims)
        for s in spec.state_names
    ]
    graph = helper.make_graph(
        g.nodes, f"sentiment_{spec.cell}", inputs, outputs, initializer=g.initializers
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_operatorsetid("", OPSET)],
        producer_name=PRODUCER,
    )
    # Stay loadable by ORT builds that lag behind the onnx package's newest IR version.
    model.ir_version = 8
    return model
