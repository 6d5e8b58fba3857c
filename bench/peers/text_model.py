"""The model every peer serves: tokenizer.json + model.onnx from an rnnserve repository version.

Standalone on purpose (numpy, onnxruntime, tokenizers only): it runs inside the peers' own
virtual environments, where rnnserve is not installed. The ORT session is configured like the
raw-limit session in ``rnnserve.bench.raw_limit`` (same threads, no spinning, all graph
optimizations), so every system runs the same kernels with the same thread count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class OnnxTextClassifier:
    """Strings -> (logits, probabilities): tokenize, pad at the end, run ORT, softmax."""

    def __init__(self, model_dir: str | Path, *, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        meta = json.loads((model_dir / "metadata.json").read_text(encoding="utf-8"))
        self.pad_id = int(meta.get("pad_id", 0))
        self.labels = list(meta["labels"])
        rows = int(meta["layers"]) * (2 if meta.get("bidirectional") else 1)
        self.state_shape = (rows, int(meta["hidden"]))
        self.state_names = ["state_h", "state_c"] if meta["cell"] == "lstm" else ["state_h"]
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        rows = [e.ids or [self.pad_id] for e in encodings]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        ids = np.full((len(rows), int(lengths.max())), self.pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        feeds = {"input_ids": ids, "lengths": lengths}
        for name in self.state_names:
            feeds[name] = np.zeros((len(rows), *self.state_shape), dtype=np.float32)
        logits = self.session.run(["logits"], feeds)[0]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return logits, (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
