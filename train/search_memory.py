"""Training memory of one model size, measured in a fresh process.

A search trains many models in one process, where the allocator keeps memory from earlier
trials, so a trial's process RSS says little about the model. Here a child process loads
only the batches, records its RSS (``baseline``: interpreter, torch, data), then builds the
model and AdamW and trains on the longest batches of the training set (the activation peak),
and reports the kernel's peak RSS (``VmHWM``).

Invariants
----------
* ``training_bytes = peak - baseline`` covers weights, gradients, optimizer state and the
  activations of the longest batch; nothing from other models is included.
* The child's batches are the ``steps * batch_size`` longest training rows, so the measured
  peak is the worst case of an epoch (up to allocator variation).
* Linux only (``/proc/self/status``); elsewhere ``measure_training_memory`` returns None.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STEPS = 8


def measure_training_memory(
    cell: str,
    sizes: dict[str, Any],
    token_rows: Sequence[Sequence[int]],
    labels: Sequence[int],
    *,
    vocab_size: int,
    num_labels: int,
    threads: int | None = 1,
    steps: int = STEPS,
    timeout: float = 600,
) -> dict[str, int] | None:
    """``{"baseline_bytes", "peak_bytes", "training_bytes"}`` from a child process, or None."""
    if not Path("/proc/self/status").exists():
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
            [sys.executable, "-m", "rnnserve.train.search_memory", str(path)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {completed.stderr.strip()[-500:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _status_bytes(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1)) * 1024


def _child(path: str) -> None:
    import torch
    from rnnserve.train.batching import collate
    from rnnserve.train.model import SentimentRNN

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
    baseline = _status_bytes("VmRSS")
    sizes = job["sizes"]
    model = SentimentRNN(
        job["cell"], job["vocab_size"], int(sizes["embed_dim"]), int(sizes["hidden"]),
        int(sizes["layers"]), float(sizes["dropout"]), False, job["num_labels"],
    ).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(sizes["lr"]),
                                  weight_decay=float(sizes["weight_decay"]))
    for ids, lengths, targets in batches:
        logits, _ = model(ids, lengths)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    peak = _status_bytes("VmHWM")
    print(json.dumps({"baseline_bytes": baseline, "peak_bytes": peak,
                      "training_bytes": max(0, peak - baseline)}))


if __name__ == "__main__":
    _child(sys.argv[1])
