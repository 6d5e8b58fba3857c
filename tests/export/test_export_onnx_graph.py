"""The hand-built ONNX graph matches the torch module (random weights, every architecture)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from rnnserve.export.eval_data import encode
from rnnserve.export.onnx_graph import OPSET, build_onnx, expected_shapes
from rnnserve.export.validate import (
    PARITY_TEXTS,
    OrtRunner,
    chunked_vs_whole,
    pad_batch,
    parity,
    run_torch,
)

TOLERANCE = 1e-5
ARCHITECTURES = [("lstm", False), ("lstm", True), ("gru", False), ("gru", True)]


def _load(make_checkpoint, cell, bidirectional, **kwargs):
    from rnnserve.train.checkpoint import load_checkpoint

    model, spec, tokenizer = load_checkpoint(make_checkpoint(cell, bidirectional, **kwargs))
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    graph = build_onnx(spec, weights)
    runner = OrtRunner(graph.SerializeToString(), spec.state_names, spec.state_shape)
    tokens = [t for t in encode(tokenizer, PARITY_TEXTS, spec.max_length) if t]
    return model, spec, graph, runner, tokens


@pytest.mark.parametrize(("cell", "bidirectional"), ARCHITECTURES)
def test_parity_with_torch_on_mixed_lengths(make_checkpoint, cell, bidirectional):
    model, spec, graph, runner, tokens = _load(make_checkpoint, cell, bidirectional)
    onnx.checker.check_model(graph, full_check=True)
    lengths = sorted({len(t) for t in tokens})
    assert lengths[0] == 1 and lengths[-1] > 30, "the batch must mix very short and long rows"
    figures = parity(model, runner, tokens, spec.pad_id)
    assert figures["max_abs_logit_diff"] <= TOLERANCE
    assert figures["max_abs_state_diff"] <= TOLERANCE


@pytest.mark.parametrize(("cell", "bidirectional"), ARCHITECTURES)
def test_zero_state_equals_stateless_forward(make_checkpoint, cell, bidirectional):
    model, spec, _, runner, tokens = _load(make_checkpoint, cell, bidirectional)
    batch = pad_batch(tokens, spec.pad_id)
    torch_logits, torch_state = run_torch(model, batch, None)  # state=None: torch's zeros
    logits, state = runner.run(batch, runner.zero_state(len(tokens)))
    np.testing.assert_allclose(logits, torch_logits, atol=TOLERANCE, rtol=0)
    for ours, theirs in zip(state, torch_state, strict=True):
        assert ours.shape == (len(tokens), *spec.state_shape)
        np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_chunked_equals_whole(make_checkpoint, cell):
    _, spec, _, runner, tokens = _load(make_checkpoint, cell, False)
    for chunks in (2, 3, 7):
        figures = chunked_vs_whole(runner, tokens, spec.pad_id, chunks)
        assert max(figures.values()) <= TOLERANCE, (chunks, figures)


def test_chunked_check_detects_a_dropped_state(make_checkpoint):
    """Negative control: a runner that forgets the carried state fails the check."""
    _, spec, _, runner, tokens = _load(make_checkpoint, "lstm", False)

    class Forgetful:
        zero_state = runner.zero_state

        def run(self, batch, state=None):
            return runner.run(batch, None)

    figures = chunked_vs_whole(Forgetful(), tokens, spec.pad_id, 3)
    assert figures["chunked_max_abs_logit_diff"] > 1e-3


@pytest.mark.parametrize(("cell", "bidirectional"), [("lstm", False), ("gru", True)])
def test_padding_and_batch_composition_do_not_change_a_row(make_checkpoint, cell, bidirectional):
    _, spec, _, runner, tokens = _load(make_checkpoint, cell, bidirectional)
    alone, alone_state = runner.run(pad_batch([tokens[2]], spec.pad_id))
    batch = pad_batch(tokens, spec.pad_id)
    extra = np.full((batch.ids.shape[0], 5), spec.pad_id, dtype=np.int64)
    padded = type(batch)(np.concatenate([batch.ids, extra], axis=1), batch.lengths)
    logits, state = runner.run(padded)
    np.testing.assert_allclose(logits[2], alone[0], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(state[0][2], alone_state[0][0], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(("cell", "bidirectional"), ARCHITECTURES)
def test_graph_structure(make_checkpoint, cell, bidirectional):
    _, _, graph, _, _ = _load(make_checkpoint, cell, bidirectional, layers=3)
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count(cell.upper()) == 3
    assert not {"Loop", "Scan", "If"} & set(ops)
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    for node in graph.graph.node:
        if node.op_type == cell.upper():
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert "layout" not in attributes
            assert attributes["direction"] == (b"bidirectional" if bidirectional else b"forward")
            assert node.input[4] == "seq_lens"
    names = lambda values: [(v.name, v.type.tensor_type.elem_type) for v in values]
    states = ["state_h", "state_c"] if cell == "lstm" else ["state_h"]
    f, i = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert names(graph.graph.input) == [("input_ids", i), ("lengths", i)] + [(s, f) for s in states]
    assert names(graph.graph.output) == [("logits", f)] + [(f"{s}_out", f) for s in states]


def test_expected_shapes_match_torch_state_dict(make_checkpoint):
    from rnnserve.train.checkpoint import load_checkpoint

    for cell, bidirectional in ARCHITECTURES:
        model, spec, _ = load_checkpoint(make_checkpoint(cell, bidirectional))
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert expected_shapes(spec) == shapes


def test_scaled_difference_is_absolute_below_one_and_relative_above():
    from rnnserve.export.validate import _max_scaled_diff

    reference = np.array([0.5, -40.0], dtype=np.float32)
    assert _max_scaled_diff([reference + np.array([2e-6, 0], np.float32)], [reference]) == (
        pytest.approx(2e-6, rel=0.05)
    )
    # One fp32 ulp at 40 is 3.8e-6: 2 ulps are 7.6e-6 absolute, 1.9e-7 scaled.
    bumped = np.nextafter(np.nextafter(reference, np.inf), np.inf)
    assert _max_scaled_diff([bumped], [reference]) < 2e-7


@pytest.mark.parametrize("precision", ["int8", "fp16"])
@pytest.mark.parametrize(("cell", "bidirectional"), ARCHITECTURES)
def test_reduced_precision_variants_run_and_stay_close(
    make_checkpoint, cell, bidirectional, precision
):
    from rnnserve.export.precision import to_precision

    model, spec, graph, runner, tokens = _load(make_checkpoint, cell, bidirectional)
    variant = to_precision(graph, precision)
    quantized_ops = {n.op_type for n in variant.graph.node}
    if precision == "int8" and cell == "lstm":
        assert "DynamicQuantizeLSTM" in quantized_ops
    variant_runner = OrtRunner(variant.SerializeToString(), runner.state_names, spec.state_shape)
    figures = parity(model, variant_runner, tokens, spec.pad_id)
    assert figures["max_abs_logit_diff"] < 0.05
    assert figures["max_abs_state_diff"] < 0.05
