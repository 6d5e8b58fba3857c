"""The limit: raw ONNX Runtime on the served model and the benchmark sentences.

No server, no gRPC, no asyncio: the same ``model.onnx`` and ``tokenizer.json`` from the
model repository, the same sentences, one ORT session with the thread count the server uses,
swept over batch sizes. Three figures per batch size:

- ``ort``: ``session.run`` alone on pre-tokenized, pre-padded batches of consecutive
  sentences in dataset order (like arrivals at a server);
- ``ort_sorted``: the same on batches of length-sorted sentences (least padding: what a
  length-aware batcher could reach at best);
- ``pipeline``: tokenize + pad + run + softmax from strings, dataset order (what any server
  must do at least).

The limit is the best ``ort`` or ``ort_sorted`` figure over the sweep: a true ceiling for a
server, whatever its batching policy.

Run it alone (pinned to a core with ``taskset``) as
``python -m rnnserve.bench.raw_limit --repository R --model M --json out.json``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rnnserve.bench.data import load_sentences
from rnnserve.bench.report import emit_json
from rnnserve.bench.stats import summarize_latencies

from rnnserve import repository as repo_contract

DEFAULT_BATCH_SIZES = (1, 4, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class ModelFiles:
    """Where one served model version's files are, and its metadata."""

    name: str
    version: str
    directory: Path
    metadata: repo_contract.RepositoryMetadata

    @property
    def onnx(self) -> Path:
        return self.directory / repo_contract.ONNX_FILE

    @property
    def tokenizer(self) -> Path:
        return self.directory / repo_contract.TOKENIZER_FILE


def resolve_model(repository: Path, name: str, version: str | None = None) -> ModelFiles:
    """The files of ``name`` (highest version unless ``version``) in a model repository."""
    model_path = repo_contract.model_dir(Path(repository), name)
    versions = repo_contract.list_versions(model_path)
    if not versions:
        raise repo_contract.RepositoryError(f"model {name!r} has no version under {model_path}")
    chosen = repo_contract.validate_version(version) if version else versions[-1]
    directory = model_path / chosen
    meta_text = (directory / repo_contract.METADATA_FILE).read_text(encoding="utf-8")
    metadata = repo_contract.RepositoryMetadata.model_validate_json(meta_text)
    return ModelFiles(name=name, version=chosen, directory=directory, metadata=metadata)


def make_session(onnx_path: Path, threads: int, providers: list[str] | None = None):
    """An ORT session configured like a serving session: fixed intra-op threads, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would steal the core from whatever else is measured beside them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
    )


class RawModel:
    """Tokenizer + ORT session for one model version, nothing else."""

    def __init__(self, files: ModelFiles, *, threads: int, providers: list[str] | None = None):
        from tokenizers import Tokenizer

        self.files = files
        self.meta = files.metadata
        self.tokenizer = Tokenizer.from_file(str(files.tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.session = make_session(files.onnx, threads, providers)
        self._zero_states: dict[int, dict[str, np.ndarray]] = {}

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text (at least one id each: empty texts get the pad id)."""
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [e.ids or [self.meta.pad_id] for e in encodings]

    def pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids[B,T], lengths[B])`` padded at the end with the pad id."""
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        ids = np.full((len(rows), int(lengths.max())), self.meta.pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return ids, lengths

    def feeds(self, ids: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        batch = ids.shape[0]
        states = self._zero_states.get(batch)
        if states is None:
            shape = (batch, *self.meta.state_shape)
            states = {name: np.zeros(shape, np.float32) for name in self.meta.state_names}
            self._zero_states[batch] = states
        return {"input_ids": ids, "lengths": lengths, **states}

    def run(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Logits ``[B, labels]`` (the state outputs are computed and dropped)."""
        return self.session.run(["logits"], self.feeds(ids, lengths))[0]

    def classify(self, texts: list[str]) -> np.ndarray:
        """Strings -> probabilities: the minimal serving pipeline."""
        logits = self.run(*self.pad(self.encode(texts)))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


def _batches(sentences: list[str], batch: int, count: int) -> list[list[str]]:
    """``count`` consecutive batches of ``batch`` sentences, wrapping around the list."""
    n = len(sentences)
    return [[sentences[(start * batch + i) % n] for i in range(batch)] for start in range(count)]


def _timed_loop(step, items: list, *, seconds: float, min_iters: int) -> list[float]:
    """Call ``step(item)`` cycling over items until ``seconds`` and ``min_iters`` are reached."""
    latencies = []
    deadline = time.perf_counter() + seconds
    i = 0
    while i < min_iters or time.perf_counter() < deadline:
        item = items[i % len(items)]
        t0 = time.perf_counter()
        step(item)
        latencies.append(time.perf_counter() - t0)
        i += 1
    return latencies


def measure_batch(model: RawModel, sentences: list[str], batch: int, *, seconds: float) -> dict:
    """ORT-only and pipeline throughput and per-call latency at one batch size."""
    count = max(1, min(64, -(-len(sentences) // batch)))
    text_batches = _batches(sentences, batch, count)
    encoded = [model.encode(texts) for texts in text_batches]
    padded = [model.pad(rows) for rows in encoded]
    real_tokens = sum(int(lengths.sum()) for _, lengths in padded)
    padded_tokens = sum(int(ids.size) for ids, _ in padded)
    tokens_per_batch = real_tokens / len(padded)
    for ids, lengths in padded[:2]:  # warm-up: allocations, kernel selection
        model.run(ids, lengths)

    by_length = sorted((row for rows in encoded for row in rows), key=len)
    sorted_padded = [model.pad(by_length[i : i + batch]) for i in range(0, len(by_length), batch)]
    sorted_padded = [p for p in sorted_padded if p[0].shape[0] == batch] or sorted_padded
    result = {"batch": batch, "padding_ratio": padded_tokens / real_tokens}
    sorted_tokens = sum(int(lengths.sum()) for _, lengths in sorted_padded) / len(sorted_padded)
    for mode, step, items, per_call in (
        ("ort", lambda item: model.run(*item), padded, tokens_per_batch),
        ("ort_sorted", lambda item: model.run(*item), sorted_padded, sorted_tokens),
        ("pipeline", model.classify, text_batches, tokens_per_batch),
    ):
        lat = _timed_loop(step, items, seconds=seconds, min_iters=3)
        total = float(sum(lat))
        sizes = [len(item) if mode == "pipeline" else len(item[1]) for item in items]
        rows = sum(sizes[i % len(sizes)] for i in range(len(lat)))
        result[mode] = {
            "calls": len(lat),
            "seconds": total,
            "sentences_per_s": rows / total,
            "tokens_per_s": per_call * len(lat) / total,
            **summarize_latencies(lat),
        }
    return result


def measure_raw_limit(
    files: ModelFiles,
    sentences: list[str],
    *,
    threads: int,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    seconds: float = 1.0,
    providers: list[str] | None = None,
) -> dict:
    """Sweep batch sizes; the limit is the best ``ort`` sentences/s over the sweep."""
    model = RawModel(files, threads=threads, providers=providers)
    sweep = [measure_batch(model, sentences, b, seconds=seconds) for b in batch_sizes]
    best_mode, best = max(
        ((mode, r) for r in sweep for mode in ("ort", "ort_sorted")),
        key=lambda mr: mr[1][mr[0]]["sentences_per_s"],
    )
    arrival = max(sweep, key=lambda r: r["ort"]["sentences_per_s"])
    best_pipe = max(sweep, key=lambda r: r["pipeline"]["sentences_per_s"])
    by_batch = {r["batch"]: r for r in sweep}
    one = by_batch.get(1)
    return {
        "model": files.name,
        "version": files.version,
        "precision": files.metadata.precision,
        "cell": files.metadata.cell,
        "shape": {k: getattr(files.metadata, k) for k in ("embed_dim", "hidden", "layers")},
        "threads": threads,
        "providers": model.session.get_providers(),
        "sentences": len(sentences),
        "sweep": sweep,
        "best_batch": best["batch"],
        "best_mode": best_mode,
        "sentences_per_s": best[best_mode]["sentences_per_s"],
        "tokens_per_s": best[best_mode]["tokens_per_s"],
        "arrival_best_batch": arrival["batch"],
        "arrival_sentences_per_s": arrival["ort"]["sentences_per_s"],
        "pipeline_best_batch": best_pipe["batch"],
        "pipeline_sentences_per_s": best_pipe["pipeline"]["sentences_per_s"],
        "pipeline_tokens_per_s": best_pipe["pipeline"]["tokens_per_s"],
        "batch1_p50_ms": one["ort"]["p50_ms"] if one else None,
        "batch1_pipeline_p50_ms": one["pipeline"]["p50_ms"] if one else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    parser.add_argument("--seconds", type=float, default=1.0, help="time per batch size and mode")
    parser.add_argument("--data", default=None, help="TSV of sentences (default: SST-2 dev)")
    parser.add_argument("--provider", action="append", default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)

    sentences, source = load_sentences(args.data)
    files = resolve_model(args.repository, args.model, args.version)
    result = measure_raw_limit(
        files,
        sentences,
        threads=args.threads,
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",") if b),
        seconds=args.seconds,
        providers=args.provider,
    )
    result["data_source"] = source
    emit_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
