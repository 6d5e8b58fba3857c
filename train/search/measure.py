"""Measurements of models for the search report: accuracy, latency, training speed, memory.

Invariants
----------
* Every measurement says which engine produced it: ``onnxruntime`` (the exported
  ``model.onnx``, what the server runs) or ``torch-eager`` (the checkpoint's module, used only
  when no exported model is available). Reports print that label next to the number.
* Inputs are encoded with the checkpoint's own ``tokenizer.json`` exactly as the trainer
  encodes them (``rnnserve.train.batching``: no special tokens, cut at ``max_length``, an
  empty encoding becomes one ``[UNK]``), padded at the end; every row has length >= 1.
  The server loads the same tokenizer file; it chunks texts longer than its chunk length
  instead of cutting them, which makes no difference for texts within ``max_length``.
* Both cells are always measured under the same conditions (same texts, same batches, same
  thread count, interleaved rounds), so a comparison between them is fair even on a shared,
  noisy machine; absolute numbers are only as good as the machine's load allowed.
* Training memory is measured in a fresh process (``measure_training_memory``; a search
  trains many models in one process, where the allocator keeps memory from earlier trials).
  The child (this module run with ``-m``) loads only the batches, records its RSS
  (``baseline``: interpreter, torch, data), builds the model and AdamW, trains on the
  ``steps * batch_size`` longest training rows (an epoch's activation peak) and reports the
  kernel's peak RSS (``VmHWM``): ``training_bytes = peak - baseline`` covers weights,
  gradients, optimizer state and activations, nothing from other models. Linux only
  (``/proc/self/status``); elsewhere it returns None.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rnnserve.train.batching import bucketed_batches, collate, encode_texts
from rnnserve.train.checkpoint import load_checkpoint, read_spec
from rnnserve.train.metrics import accuracy, confusion_matrix, macro_f1
from rnnserve.train.model import SentimentRNN, count_parameters
from tokenizers import Tokenizer

#: ``(ids[B,T] int64, lengths[B] int64) -> logits[B, labels] float32``
Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Runner:
    """A model behind one engine; ``predict`` runs fresh-state inference."""

    engine: str  # "onnxruntime" | "torch-eager"
    detail: str  # e.g. provider and precision, or "checkpoint module, not exported"
    predict: Predict
    pad_id: int
    max_length: int
    tokenizer: Any  # tokenizers.Tokenizer

    @property
    def label(self) -> str:
        return f"{self.engine} ({self.detail})"


# --------------------------------------------------------------------------- encoding


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, exactly as the trainer encodes them (``batching.encode_texts``)."""
    return encode_texts(tokenizer, list(texts), max_length)


def pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids[B, max_len] int64 padded at the end, lengths[B] int64)`` as numpy arrays."""
    ids, lengths = collate(rows, pad_id)
    return ids.numpy(), lengths.numpy()


# --------------------------------------------------------------------------- runners


def onnx_runner(model_dir: Path, checkpoint: Path, *, threads: int = 1) -> Runner:
    """ORT CPU session over ``<version dir>/model.onnx`` (state inputs fed as zeros); texts are
    cut at the source checkpoint's ``max_length`` like in training."""
    import onnxruntime as ort  # only once an export succeeded (else ``torch_runner``)

    model_dir = Path(model_dir)
    spec = read_spec(checkpoint)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    metadata = json.loads((model_dir / "metadata.json").read_text())
    inputs = {i.name: i for i in session.get_inputs()}
    state_names = [name for name in ("state_h", "state_c") if name in inputs]
    state_dims = [d for d in inputs["state_h"].shape[1:]]
    if not all(isinstance(d, int) for d in state_dims):
        raise ValueError(f"{model_dir}: state_h must have static dims after batch, got {state_dims}")

    def predict(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "lengths": lengths}
        zeros = np.zeros((ids.shape[0], *state_dims), dtype=np.float32)
        for name in state_names:
            feed[name] = zeros
        return session.run(["logits"], feed)[0]

    precision = metadata.get("precision", "fp32")
    return Runner(
        engine="onnxruntime",
        detail=f"CPUExecutionProvider, {precision}, {threads} thread(s)",
        predict=predict,
        pad_id=int(metadata.get("pad_id", spec.pad_id)),
        max_length=spec.max_length,
        tokenizer=Tokenizer.from_file(str(model_dir / "tokenizer.json")),
    )


def torch_runner(checkpoint: Path, *, threads: int = 1) -> Runner:
    """The checkpoint's ``SentimentRNN`` in eval mode (used when no ONNX export exists)."""
    model, spec, tokenizer = load_checkpoint(checkpoint)

    def predict(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch_threads(threads), torch.inference_mode():
            logits, _ = model(torch.from_numpy(ids), torch.from_numpy(lengths))
        return logits.numpy()

    return Runner(
        engine="torch-eager",
        detail=f"checkpoint module, not exported, fp32, {threads} thread(s)",
        predict=predict,
        pad_id=spec.pad_id,
        max_length=spec.max_length,
        tokenizer=tokenizer,
    )


@contextmanager
def torch_threads(threads: int):
    """Temporarily run torch with ``threads`` intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- quality


@dataclass
class Quality:
    """Accuracy and macro-F1 of one model on one labelled file, with its predictions."""

    accuracy: float
    macro_f1: float
    examples: int
    predictions: list[int] = field(repr=False)


def classify(runner: Runner, texts: Sequence[str], *, batch_size: int = 64) -> list[int]:
    """Predicted class id per text."""
    rows = encode(runner.tokenizer, texts, runner.max_length)
    predictions: list[int] = []
    for start in range(0, len(rows), batch_size):
        ids, lengths = pad(rows[start : start + batch_size], runner.pad_id)
        predictions.extend(np.argmax(runner.predict(ids, lengths), axis=1).tolist())
    return predictions


def quality(runner: Runner, texts: Sequence[str], labels: Sequence[int], num_labels: int) -> Quality:
    predicted = classify(runner, texts)
    confusion = confusion_matrix(labels, predicted, num_labels)
    return Quality(
        accuracy=accuracy(confusion),
        macro_f1=macro_f1(confusion),
        examples=len(labels),
        predictions=predicted,
    )


def mcnemar_exact(truth: Sequence[int], first: Sequence[int], second: Sequence[int]) -> dict:
    """Exact two-sided McNemar test of two classifiers' predictions on the same examples.

    Only discordant examples count: ``b`` = first right & second wrong, ``c`` = the reverse;
    ``p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)])``.
    """
    b = sum(1 for t, x, y in zip(truth, first, second, strict=True) if x == t and y != t)
    c = sum(1 for t, x, y in zip(truth, first, second, strict=True) if x != t and y == t)
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n if n else 1.0
    return {"first_only_correct": b, "second_only_correct": c, "p_value": min(1.0, 2 * tail)}


# --------------------------------------------------------------------------- speed


@dataclass
class Latency:
    """Batch-1 latency and batch-N throughput of one runner on real texts."""

    engine: str
    batch1_median_ms: float
    batch1_p90_ms: float
    batch1_calls: int
    batch_size: int
    batch_median_ms: float
    throughput_per_s: float  # texts per second at ``batch_size``
    batch_calls: int
    mean_tokens: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latencies(
    runners: dict[str, Runner],
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    single_calls: int = 200,
    rounds: int = 4,
    min_seconds: float = 2.0,
    warmup: int = 10,
) -> dict[str, Latency]:
    """Latency and throughput of every runner on the same texts, measured in turns.

    Batch 1: each of the first ``single_calls`` texts once per runner (split over the rounds).
    Batch ``batch_size``: consecutive texts, cycled until ``min_seconds / rounds`` per round
    and runner. The runners take turns round by round (alternating direction), so background
    load hits them alike; medians make the figures robust to bursts. Throughput is
    ``batch_size / median batch time``.
    """
    plans = {}
    for key, runner in runners.items():
        rows = encode(runner.tokenizer, texts, runner.max_length)
        singles = [pad([row], runner.pad_id) for row in rows[:single_calls]]
        batches = [
            pad(rows[start : start + batch_size], runner.pad_id)
            for start in range(0, len(rows) - batch_size + 1, batch_size)
        ] or [pad((rows * batch_size)[:batch_size], runner.pad_id)]
        for ids, lengths in (singles + batches)[:warmup]:
            runner.predict(ids, lengths)
        tokens = float(np.mean([len(row) for row in rows[:single_calls]]))
        plans[key] = (singles, batches, tokens)

    single_ms: dict[str, list[float]] = {key: [] for key in runners}
    batch_ms: dict[str, list[float]] = {key: [] for key in runners}
    order = list(runners)
    for round_index in range(rounds):
        for key in order if round_index % 2 == 0 else reversed(order):
            predict, (singles, batches, _) = runners[key].predict, plans[key]
            for ids, lengths in singles[round_index::rounds]:
                started = time.perf_counter()
                predict(ids, lengths)
                single_ms[key].append((time.perf_counter() - started) * 1000)
            spent, calls = 0.0, 0
            while spent < min_seconds / rounds or calls < 3:
                ids, lengths = batches[(round_index + calls) % len(batches)]
                started = time.perf_counter()
                predict(ids, lengths)
                elapsed = time.perf_counter() - started
                spent, calls = spent + elapsed, calls + 1
                batch_ms[key].append(elapsed * 1000)
    return {
        key: Latency(
            engine=runners[key].label,
            batch1_median_ms=statistics.median(single_ms[key]),
            batch1_p90_ms=float(np.percentile(single_ms[key], 90)),
            batch1_calls=len(single_ms[key]),
            batch_size=batch_size,
            batch_median_ms=statistics.median(batch_ms[key]),
            throughput_per_s=batch_size / (statistics.median(batch_ms[key]) / 1000),
            batch_calls=len(batch_ms[key]),
            mean_tokens=plans[key][2],
        )
        for key in runners
    }


@dataclass
class TrainSpeed:
    """Equal-size training micro-benchmark result for one cell."""

    cell: str
    parameters: int
    seconds_per_step: float  # wall: mean over the batches of each batch's fastest repeat
    seconds_per_epoch: float  # wall: seconds_per_step * steps per epoch of the training set
    cpu_seconds_per_step: float  # CPU time of this process, same statistic
    cpu_seconds_per_epoch: float  # robust to other processes' load (they do not add CPU time)
    steps_measured: int
    final_loss: float  # mean training loss over the last quarter of the steps

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_speed_at_equal_size(
    sizes: dict[str, Any],
    token_rows: Sequence[Sequence[int]],
    labels: Sequence[int],
    *,
    cells: Sequence[str] = ("lstm", "gru"),
    vocab_size: int,
    num_labels: int,
    batches: int = 40,
    repeats: int = 3,
    seed: int = 0,
    threads: int | None = None,
    clip_norm: float = 1.0,
) -> dict[str, TrainSpeed]:
    """Train every cell at the same sizes on the same batches and time the steps.

    ``sizes`` holds ``embed_dim, hidden, layers, dropout, lr, weight_decay, batch_size``.
    Each step is the trainer's core (cross-entropy, AdamW, gradient clipping at ``clip_norm``;
    not its weight averaging or learning-rate schedule, whose cost does not depend on the cell);
    the ``batches`` are the first of an epoch's length-bucketed batches (``bucketed_batches``,
    as the trainer draws them), so their mean cost estimates an epoch's. Every cell trains on
    all of them ``repeats`` times; the cells take turns repeat by repeat (alternating who goes
    first), and each batch's time is the minimum over its repeats. Both wall time and this
    process's CPU time are kept; CPU time does not grow when other processes compete for the
    cores, so it is the fair comparison on a shared machine.
    Seconds per epoch = mean batch time x ceil(rows / batch_size).
    """
    batch_size = int(sizes["batch_size"])
    plan = bucketed_batches([len(row) for row in token_rows], batch_size, np.random.default_rng(seed))
    tensors = []
    for index in plan[:batches]:
        ids, lengths = pad([token_rows[i] for i in index], pad_id=0)
        target = np.array([labels[i] for i in index], dtype=np.int64)
        tensors.append((torch.from_numpy(ids), torch.from_numpy(lengths), torch.from_numpy(target)))

    models, optimizers, losses = {}, {}, {}
    times: dict[str, list[list[float]]] = {}
    cpu_times: dict[str, list[list[float]]] = {}
    for cell in cells:
        torch.manual_seed(seed)
        models[cell], optimizers[cell] = _trainable(cell, sizes, vocab_size, num_labels)
        times[cell] = [[] for _ in tensors]
        cpu_times[cell] = [[] for _ in tensors]
        losses[cell] = []

    def step(cell: str, batch) -> tuple[float, float, float]:
        ids, lengths, target = batch
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = _train_step(models[cell], optimizers[cell], ids, lengths, target, clip_norm)
        return time.perf_counter() - start, time.process_time() - cpu_start, loss.item()

    with torch_threads(threads or torch.get_num_threads()):
        for cell in cells:  # warm-up step, not timed, same for every cell
            step(cell, tensors[0])
        for repeat in range(repeats):
            for cell in cells if repeat % 2 == 0 else list(reversed(cells)):
                for index, batch in enumerate(tensors):
                    seconds, cpu_seconds, loss = step(cell, batch)
                    times[cell][index].append(seconds)
                    cpu_times[cell][index].append(cpu_seconds)
                    losses[cell].append(loss)

    steps_per_epoch = math.ceil(len(token_rows) / batch_size)
    result = {}
    for cell in cells:
        per_step = statistics.fmean(min(samples) for samples in times[cell])
        cpu_per_step = statistics.fmean(min(samples) for samples in cpu_times[cell])
        tail = losses[cell][-max(1, len(losses[cell]) // 4) :]
        result[cell] = TrainSpeed(
            cell=cell,
            parameters=count_parameters(models[cell]),
            seconds_per_step=per_step,
            seconds_per_epoch=per_step * steps_per_epoch,
            cpu_seconds_per_step=cpu_per_step,
            cpu_seconds_per_epoch=cpu_per_step * steps_per_epoch,
            steps_measured=len(losses[cell]),
            final_loss=sum(tail) / len(tail),
        )
    return result


def _trainable(cell: str, sizes: dict[str, Any], vocab_size: int, num_labels: int):
    """A unidirectional ``SentimentRNN`` of ``sizes`` in training mode, with its AdamW."""
    model = SentimentRNN(
        cell, vocab_size, int(sizes["embed_dim"]), int(sizes["hidden"]), int(sizes["layers"]),
        float(sizes["dropout"]), False, num_labels,
    ).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(sizes["lr"]), weight_decay=float(sizes["weight_decay"])
    )
    return model, optimizer


def _train_step(model, optimizer, ids, lengths, target, clip_norm: float) -> torch.Tensor:
    """The trainer's core step (cross-entropy, AdamW, gradient clipping); returns the loss."""
    logits, _ = model(ids, lengths)
    loss = torch.nn.functional.cross_entropy(logits, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss


# --------------------------------------------------------------------------- memory

#: Batches the fresh-process memory measurement trains on.
MEMORY_STEPS = 8
_STATUS = Path("/proc/self/status")


def status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes; None if absent."""
    try:
        status = _STATUS.read_text()
    except OSError:
        return None
    match = re.search(rf"{field}:\s+(\d+) kB", status)
    return int(match.group(1)) * 1024 if match else None


def rss_bytes() -> int | None:
    return status_bytes("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure_training_memory(
    cell: str,
    sizes: dict[str, Any],
    token_rows: Sequence[Sequence[int]],
    labels: Sequence[int],
    *,
    vocab_size: int,
    num_labels: int,
    threads: int | None = 1,
    steps: int = MEMORY_STEPS,
    timeout: float = 600,
) -> dict[str, int] | None:
    """``{"baseline_bytes", "peak_bytes", "training_bytes"}`` from a child process, or None."""
    if not _STATUS.exists():
        return None
    batch_size = int(sizes["batch_size"])
    longest = sorted(range(len(token_rows)), key=lambda i: -len(token_rows[i]))
    chosen = longest[: steps * batch_size]
    job = {
        "cell": cell, "sizes": sizes, "vocab_size": vocab_size, "num_labels": num_labels,
        "threads": threads, "batch_size": batch_size,
        "rows": [list(token_rows[i]) for i in chosen], "labels": [labels[i] for i in chosen],
    }
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "job.json"
        path.write_text(json.dumps(job))
        completed = subprocess.run(
            [sys.executable, "-m", "rnnserve.train.search.measure", str(path)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {completed.stderr.strip()[-500:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _memory_child(path: str) -> None:
    """Train the job's batches in this fresh process; print baseline, peak and the difference."""
    job = json.loads(Path(path).read_text())
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    rows, labels, batch_size = job["rows"], job["labels"], job["batch_size"]
    batches = [
        (*collate(rows[start : start + batch_size]),
         torch.tensor(labels[start : start + batch_size], dtype=torch.int64))
        for start in range(0, len(rows), batch_size)
    ]
    del rows
    baseline = _required_status_bytes("VmRSS")
    model, optimizer = _trainable(job["cell"], job["sizes"], job["vocab_size"], job["num_labels"])
    for ids, lengths, targets in batches:
        _train_step(model, optimizer, ids, lengths, targets, 1.0)
    peak = _required_status_bytes("VmHWM")
    print(json.dumps({"baseline_bytes": baseline, "peak_bytes": peak,
                      "training_bytes": max(0, peak - baseline)}))


def _required_status_bytes(field: str) -> int:
    value = status_bytes(field)
    if value is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return value


if __name__ == "__main__":
    _memory_child(sys.argv[1])
