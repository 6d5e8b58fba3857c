"""export_checkpoint end to end: repository layout, config round trip, precisions, errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from rnnserve.export import exporter
from rnnserve.export.errors import ExportError
from rnnserve.export.exporter import export_checkpoint
from rnnserve.export.validate import OrtRunner, pad_batch
from rnnserve.train.checkpoint import read_spec
from tritonclient.grpc import model_config_pb2 as mc

from rnnserve.repository import (
    CONFIG_FILE,
    LABELS_FILE,
    METADATA_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    RepositoryMetadata,
    config_parameters,
    list_models,
    list_versions,
    read_model_config,
)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to prove an export changed nothing)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _metadata(version_dir: Path) -> RepositoryMetadata:
    return RepositoryMetadata.model_validate_json((version_dir / METADATA_FILE).read_text())


# ---------------------------------------------------------------- layout and config


def test_tiny_repository_layout_and_metadata(tiny_repository, tiny_checkpoints):
    assert list_models(tiny_repository) == ["tiny-gru", "tiny-lstm"]
    for cell, name in (("lstm", "tiny-lstm"), ("gru", "tiny-gru")):
        model = tiny_repository / name
        assert list_versions(model) == ["1"]
        assert sorted(p.name for p in model.iterdir()) == ["1", CONFIG_FILE]  # no leftovers
        version = model / "1"
        assert sorted(p.name for p in version.iterdir()) == sorted(
            [ONNX_FILE, TOKENIZER_FILE, LABELS_FILE, METADATA_FILE]
        )
        meta = _metadata(version)
        assert (meta.cell, meta.precision, meta.opset, meta.hidden, meta.layers) == (
            cell,
            "fp32",
            17,
            24,
            2,
        )
        assert (version / LABELS_FILE).read_text().splitlines() == meta.labels
        assert meta.architecture() == read_spec(tiny_checkpoints[cell]).architecture()
        assert (version / TOKENIZER_FILE).read_bytes() == (
            tiny_checkpoints[cell] / TOKENIZER_FILE
        ).read_bytes()
        assert meta.validation["max_abs_logit_diff"] <= 1e-5
        assert meta.validation["chunked_max_abs_logit_diff"] <= 1e-5
        onnx.checker.check_model(str(version / ONNX_FILE))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_config_round_trip(tiny_repository, cell):
    name = f"tiny-{cell}"
    config = read_model_config(tiny_repository / name / CONFIG_FILE)
    meta = _metadata(tiny_repository / name / "1")
    states = ["state_h", "state_c"] if cell == "lstm" else ["state_h"]
    assert config.name == name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    inputs = {t.name: (t.data_type, list(t.dims)) for t in config.input}
    outputs = {t.name: (t.data_type, list(t.dims)) for t in config.output}
    assert inputs == {
        "input_ids": (mc.TYPE_INT64, [-1]),
        "lengths": (mc.TYPE_INT64, [1]),
        **{s: (mc.TYPE_FP32, [2, 24]) for s in states},
    }
    assert outputs == {
        "logits": (mc.TYPE_FP32, [meta.num_labels]),
        **{f"{s}_out": (mc.TYPE_FP32, [2, 24]) for s in states},
    }
    sequence = config.sequence_batching
    assert sequence.max_sequence_idle_microseconds > 0
    assert sequence.oldest.max_queue_delay_microseconds == 500
    assert list(sequence.oldest.preferred_batch_size) == [8, 16, 32, 64]
    assert [(s.input_name, s.output_name, s.data_type, list(s.dims)) for s in sequence.state] == [
        (s, f"{s}_out", mc.TYPE_FP32, [2, 24]) for s in states
    ]
    assert all(s.initial_state[0].zero_data for s in sequence.state)
    assert config_parameters(config) == {
        "cell": cell,
        "hidden": "24",
        "layers": "2",
        "bidirectional": "false",
        "pad_id": "0",
        "precision": "fp32",
        "tokenizer": TOKENIZER_FILE,
        "labels": LABELS_FILE,
        "chunk_length": "128",
        "opset": "17",
    }


def test_default_export_is_fast_and_versions_increment(tiny_checkpoints, tmp_path):
    export_checkpoint(tiny_checkpoints["lstm"], repository=tmp_path, name="m")  # warm imports
    started = time.perf_counter()
    second = export_checkpoint(tiny_checkpoints["lstm"], repository=tmp_path, name="m")
    assert time.perf_counter() - started < 3.0
    assert second == tmp_path / "m" / "2"
    third = export_checkpoint(tiny_checkpoints["lstm"], repository=tmp_path, name="m", version=7)
    assert third.name == "7"
    assert export_checkpoint(tiny_checkpoints["lstm"], repository=tmp_path, name="m").name == "8"


def test_served_graph_matches_checkpoint_on_real_text(
    tiny_repository, tiny_checkpoints, tiny_dataset
):
    """The written model.onnx (not just the in-memory graph) agrees with torch."""
    from rnnserve.export.eval_data import encode
    from rnnserve.export.validate import run_torch
    from rnnserve.train.checkpoint import load_checkpoint
    from rnnserve.train.data import load_labelled_texts

    model, spec, tokenizer = load_checkpoint(tiny_checkpoints["gru"])
    texts = load_labelled_texts(tiny_dataset).texts[:40]
    batch = pad_batch(encode(tokenizer, texts, spec.max_length), spec.pad_id)
    runner = OrtRunner(
        (tiny_repository / "tiny-gru" / "1" / ONNX_FILE).read_bytes(), ["state_h"], spec.state_shape
    )
    logits, _ = runner.run(batch)
    expected, _ = run_torch(model, batch)
    assert np.abs(logits - expected).max() <= 1e-5


# ---------------------------------------------------------------- precisions


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_reduced_precision_keeps_accuracy(
    tiny_checkpoints, tiny_dataset, tmp_path, cell, precision
):
    version = export_checkpoint(
        tiny_checkpoints[cell],
        repository=tmp_path,
        name="m",
        precision=precision,
        data=str(tiny_dataset),
    )
    meta = _metadata(version)
    assert meta.precision == precision
    assert (
        config_parameters(read_model_config(tmp_path / "m" / CONFIG_FILE))["precision"] == precision
    )
    assert meta.metrics["val_examples"] == 600
    assert meta.metrics["accuracy_delta_points"] <= exporter.ACCURACY_TOLERANCE_POINTS
    assert meta.metrics["fp32_val_accuracy"] > 0.8, "the tiny model should have learned the data"
    graph = onnx.load(str(version / ONNX_FILE))
    ops = {node.op_type for node in graph.graph.node}
    if precision == "int8" and cell == "lstm":
        assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    if precision == "int8":
        assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    if precision == "fp16":
        assert meta.validation["fp16_recurrence_arithmetic_validated"] == 0.0
    boundary = {
        v.name: v.type.tensor_type.elem_type for v in [*graph.graph.input, *graph.graph.output]
    }
    assert {
        k: v for k, v in boundary.items() if k not in ("input_ids", "lengths")
    } == dict.fromkeys(
        [k for k in boundary if k not in ("input_ids", "lengths")], onnx.TensorProto.FLOAT
    )


def test_int8_without_data_uses_the_checkpoint_validation_split(tiny_checkpoints, tmp_path):
    version = export_checkpoint(
        tiny_checkpoints["lstm"], repository=tmp_path, name="m", precision="int8"
    )
    meta = _metadata(version)
    recorded = json.loads((tiny_checkpoints["lstm"] / "metrics.json").read_text())
    assert meta.metrics["val_examples"] == recorded["val_examples"]
    # ORT fp32 on the same split reproduces the trainer's (torch) accuracy exactly.
    assert meta.metrics["fp32_val_accuracy"] == pytest.approx(recorded["best_val_accuracy"])
    assert meta.metrics["accuracy_delta_points"] <= exporter.ACCURACY_TOLERANCE_POINTS


def test_accuracy_loss_beyond_tolerance_fails_and_writes_nothing(
    tiny_checkpoints, tiny_dataset, tmp_path, monkeypatch
):
    monkeypatch.setattr(exporter, "ACCURACY_TOLERANCE_POINTS", -1.0)
    with pytest.raises(ExportError, match="loses .* accuracy points"):
        export_checkpoint(
            tiny_checkpoints["gru"],
            repository=tmp_path,
            name="m",
            precision="int8",
            data=str(tiny_dataset),
        )
    assert _snapshot(tmp_path) == {}
