"""Checkpoint -> validated ONNX -> one version of a model in a Triton-layout repository.

``export_checkpoint`` is the whole pipeline:

1. check the options (precision, model name, version) before any heavy work;
2. load the checkpoint (``rnnserve.train.checkpoint.load_checkpoint``);
3. build the fp32 graph from the weights (``onnx_graph.build_onnx``) and ``onnx.checker`` it;
4. validate fp32 against torch: max |Δ logits| and |Δ state| ≤ ``PARITY_TOLERANCE`` (scaled
   by the value's magnitude where it exceeds 1) on a mixed-length batch of real tokenized
   text, and chunked = whole (unidirectional);
5. for fp16/int8, convert, check and measure ORT accuracy of fp32 and the variant on the
   validation data: the variant may lose at most ``ACCURACY_TOLERANCE_POINTS``;
6. write the version directory atomically and replace config.pbtxt.

Invariants: any failure raises ``ExportError`` and leaves the repository as it was; what is
written is exactly what was validated (the same serialized bytes).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from rnnserve.repository import (
    CONFIG_FILE,
    LABELS_FILE,
    METADATA_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    RepositoryError,
    RepositoryMetadata,
    ServingDefaults,
    build_model_config,
    list_versions,
    read_model_config,
    signature,
)

from .errors import ExportError
from .eval_data import EvalSet, checkpoint_eval_set, encode, load_eval_set
from .onnx_graph import OPSET, build_onnx
from .precision import PRECISIONS, to_precision
from .validate import PARITY_TEXTS, OrtRunner, accuracy, chunked_vs_whole, parity
from .writer import choose_version, resolve_model_dir, write_config_atomic, write_version

#: fp32 graph vs torch, and chunked vs whole (both fp32): max ``|Δ| / max(1, |reference|)``,
#: i.e. an absolute bound for logits/states up to 1 in magnitude, a relative one above.
PARITY_TOLERANCE = 1e-5
#: A reduced-precision variant may lose at most this many accuracy points vs fp32.
ACCURACY_TOLERANCE_POINTS = 0.5
#: Chunks per text in the chunked = whole check.
CHUNKS = 3


def export_checkpoint(
    checkpoint: Path | str,
    *,
    repository: Path | str,
    name: str,
    version: int | str | None = None,
    precision: str = "fp32",
    force: bool = False,
    data: str | Path | None = None,
    defaults: ServingDefaults | None = None,
) -> Path:
    """Export ``checkpoint`` as ``<repository>/<name>/<version>``; return that directory.

    ``version`` defaults to the next free integer; an existing version is replaced only with
    ``force``. ``data`` (a source understood by ``rnnserve.train.data``) is used to measure
    ORT accuracy; fp16/int8 always measure it and without ``data`` use the checkpoint's own
    validation split. A plain fp32 export without ``data`` measures no accuracy (fast,
    offline).
    """
    started = time.perf_counter()
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    checkpoint = Path(checkpoint)
    model_path = resolve_model_dir(Path(repository), name)
    target_version = choose_version(model_path, version, force)

    torch_model, spec, tokenizer = _load(checkpoint)
    fp32 = build_onnx(spec, {k: v.detach().numpy() for k, v in torch_model.state_dict().items()})
    fp32_bytes = _checked_bytes(fp32, "fp32")

    metadata = RepositoryMetadata(
        **spec.architecture().model_dump(),
        precision=precision,
        opset=OPSET,
        source_checkpoint=str(checkpoint.resolve()),
    )
    config = build_model_config(name, metadata, defaults)  # independent of the metrics
    _check_signature(model_path, target_version, config)
    runner32 = OrtRunner(fp32_bytes, metadata.state_names, metadata.state_shape)

    eval_set = None
    if data is not None:
        eval_set = load_eval_set(str(data), tokenizer, spec)
    elif precision != "fp32":
        eval_set = checkpoint_eval_set(checkpoint, tokenizer, spec)
    parity_tokens = [t for t in encode(tokenizer, PARITY_TEXTS, spec.max_length) if t]
    if eval_set is not None:
        parity_tokens += eval_set.token_lists[:32]

    validation = _validate_fp32(torch_model, runner32, parity_tokens, spec)
    metrics = _training_metrics(checkpoint)
    model_bytes = fp32_bytes
    if eval_set is not None:
        metrics.update(_accuracy_metrics(runner32, eval_set, spec.pad_id))
    if precision != "fp32":
        model_bytes, extra_validation, extra_metrics = _validate_variant(
            fp32, precision, torch_model, metadata, parity_tokens, eval_set, metrics, spec.pad_id
        )
        validation.update(extra_validation)
        metrics.update(extra_metrics)

    metadata = metadata.model_copy(
        update={
            "metrics": metrics,
            "validation": validation,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )

    def fill(staging: Path) -> None:
        (staging / ONNX_FILE).write_bytes(model_bytes)
        (staging / TOKENIZER_FILE).write_bytes((checkpoint / TOKENIZER_FILE).read_bytes())
        (staging / LABELS_FILE).write_text("".join(f"{label}\n" for label in spec.labels), "utf-8")
        final = metadata.model_copy(
            update={"validation": {**validation, "export_seconds": time.perf_counter() - started}}
        )
        (staging / METADATA_FILE).write_text(final.model_dump_json(indent=2) + "\n", "utf-8")

    try:
        return write_version(
            model_path,
            target_version,
            fill,
            commit=lambda: write_config_atomic(model_path, config),
            replace=force,
        )
    except OSError as exc:
        raise ExportError(f"cannot write {model_path / target_version}: {exc}") from None


def _load(checkpoint: Path):
    from rnnserve.train.checkpoint import load_checkpoint

    try:
        return load_checkpoint(checkpoint)
    except ValueError as exc:  # CheckpointError: names the file and the problem
        raise ExportError(f"invalid checkpoint: {exc}") from None
    except OSError as exc:
        raise ExportError(f"cannot read checkpoint {checkpoint}: {exc}") from None


def _training_metrics(checkpoint: Path) -> dict[str, float]:
    """The torch-measured best validation accuracy from metrics.json, if recorded."""
    try:
        recorded = json.loads((checkpoint / "metrics.json").read_text("utf-8"))
        return {"train_best_val_accuracy": float(recorded["best_val_accuracy"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _checked_bytes(model, label: str) -> bytes:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug here, not a user error
        raise ExportError(f"the {label} graph failed onnx.checker: {exc}") from None
    return model.SerializeToString()


def _validate_fp32(torch_model, runner: OrtRunner, tokens, spec) -> dict[str, float]:
    figures = parity(torch_model, runner, tokens, spec.pad_id)
    worst = max(figures["max_scaled_logit_diff"], figures["max_scaled_state_diff"])
    if worst > PARITY_TOLERANCE:
        raise ExportError(
            f"ONNX Runtime differs from PyTorch by {worst:.3g} (> {PARITY_TOLERANCE:g}): "
            "the exported graph is wrong; please report this checkpoint"
        )
    if not spec.bidirectional:
        chunked = chunked_vs_whole(runner, tokens, spec.pad_id, CHUNKS)
        worst = max(
            chunked["chunked_max_scaled_logit_diff"], chunked["chunked_max_scaled_state_diff"]
        )
        if worst > PARITY_TOLERANCE:
            raise ExportError(
                f"chunked inference with carried state differs from one pass by {worst:.3g} "
                f"(> {PARITY_TOLERANCE:g}); please report this checkpoint"
            )
        figures.update(chunked)
    figures["parity_rows"] = float(len(tokens))
    return figures


def _accuracy_metrics(runner: OrtRunner, eval_set: EvalSet, pad_id: int) -> dict[str, float]:
    return {
        "val_accuracy": accuracy(runner, eval_set.token_lists, eval_set.labels, pad_id),
        "val_examples": float(len(eval_set.labels)),
    }


def _validate_variant(fp32, precision, torch_model, metadata, tokens, eval_set, metrics32, pad_id):
    """Convert, check and measure a reduced-precision variant; raise if it loses accuracy."""
    try:
        variant = to_precision(fp32, precision)
    except Exception as exc:  # noqa: BLE001 - converter internals; report, do not trace
        raise ExportError(f"{precision} conversion failed: {exc}") from None
    variant_bytes = _checked_bytes(variant, precision)
    runner = OrtRunner(variant_bytes, metadata.state_names, metadata.state_shape)
    figures = parity(torch_model, runner, tokens, pad_id)
    validation = {f"{precision}_{key}": value for key, value in figures.items()}
    if not metadata.bidirectional:
        chunked = chunked_vs_whole(runner, tokens, pad_id, CHUNKS)
        validation.update({f"{precision}_{key}": value for key, value in chunked.items()})
    if precision == "fp16":
        # ORT's CPU provider has no fp16 LSTM/GRU kernels and runs them in fp32 behind
        # inserted casts: fp16 weights and casts are validated, fp16 arithmetic is not.
        validation["fp16_recurrence_arithmetic_validated"] = 0.0
    variant_accuracy = accuracy(runner, eval_set.token_lists, eval_set.labels, pad_id)
    delta_points = 100.0 * (metrics32["val_accuracy"] - variant_accuracy)
    if delta_points > ACCURACY_TOLERANCE_POINTS:
        raise ExportError(
            f"{precision} loses {delta_points:.2f} accuracy points on {eval_set.source} "
            f"({variant_accuracy:.4f} vs fp32 {metrics32['val_accuracy']:.4f}; allowed "
            f"{ACCURACY_TOLERANCE_POINTS}): export fp32 instead"
        )
    metrics = {
        "fp32_val_accuracy": metrics32["val_accuracy"],
        "val_accuracy": variant_accuracy,
        "accuracy_delta_points": delta_points,
    }
    return variant_bytes, validation, metrics


def _check_signature(model_path: Path, version: str, config) -> None:
    """Refuse a version whose I/O differs from the model's other versions (one config.pbtxt)."""
    others = [v for v in list_versions(model_path) if v != version]
    config_path = model_path / CONFIG_FILE
    if not others or not config_path.is_file():
        return
    try:
        existing = read_model_config(config_path)
    except RepositoryError as exc:
        raise ExportError(f"{exc}; fix or remove it before exporting") from None
    if signature(existing) != signature(config):
        raise ExportError(
            f"{model_path.name} already has version(s) {', '.join(others)} with different "
            "inputs/outputs (cell, hidden, layers, directions or labels): export under another "
            "--name or remove those versions"
        )


def describe(version_dir: Path) -> dict:
    """The metadata.json of an exported version, as a dict (for the CLI summary)."""
    return json.loads((Path(version_dir) / METADATA_FILE).read_text("utf-8"))
