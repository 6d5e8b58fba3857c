"""Knowledge distillation: soft targets from trained teacher checkpoints for a student run.

The student's loss is ``(1 - alpha) * CE(student, labels)
+ alpha * T² * KL(teacher soft targets || softmax(student / T))`` (Hinton et al., 2015).

Invariants
----------
* A teacher is any checkpoint directory (bidirectional or not, any cell); it reads the
  training texts with its own tokenizer and ``max_length``, so student and teacher need not
  share a vocabulary. Its labels must be the student's labels, in the same order.
* Several teachers form an ensemble: the soft target is the mean of their temperature-``T``
  probabilities.
* Each teacher runs once per training set: its logits are cached next to its weights as
  ``distill-logits-<digest>.npy``, the digest covering the texts in order. Rewriting a
  checkpoint replaces its directory, so a cache never outlives the weights it came from.
* Only the training loss changes; the student's architecture and contract do not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rnnserve.train.batching import collate, encode_texts, sorted_batches
from rnnserve.train.checkpoint import load_checkpoint
from torch import nn

CACHE_PREFIX = "distill-logits-"


def texts_digest(texts: Sequence[str]) -> str:
    """A short digest of the texts in order (the cache key of a teacher's logits)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def teacher_logits(
    teacher: Path | str, texts: Sequence[str], labels: Sequence[str], batch_size: int = 512
) -> np.ndarray:
    """``[len(texts), num_labels]`` float32 logits of the teacher checkpoint, cached on disk."""
    teacher = Path(teacher)
    cache = teacher / f"{CACHE_PREFIX}{texts_digest(texts)}.npy"
    model, spec, tokenizer = load_checkpoint(teacher)
    if list(spec.labels) != list(labels):
        raise ValueError(f"teacher {teacher} has labels {spec.labels}, the student {list(labels)}")
    if cache.is_file():
        return np.load(cache)
    rows = encode_texts(tokenizer, list(texts), spec.max_length)
    logits = np.zeros((len(rows), spec.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for batch in sorted_batches([len(r) for r in rows], batch_size):
            ids, lengths = collate([rows[i] for i in batch])
            logits[batch] = model(ids, lengths)[0].float().numpy()
    np.save(cache, logits)
    return logits


def soft_targets(
    teachers: Sequence[Path | str], texts: Sequence[str], labels: Sequence[str], temperature: float
) -> torch.Tensor:
    """Mean over the teachers of ``softmax(logits / temperature)``: ``[len(texts), C]``."""
    if not teachers:
        raise ValueError("soft_targets needs at least one teacher")
    probabilities = [
        torch.softmax(torch.from_numpy(teacher_logits(t, texts, labels)) / temperature, dim=1)
        for t in teachers
    ]
    return torch.stack(probabilities).mean(dim=0)


def distillation_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    soft: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``(1-alpha)·CE(logits, targets) + alpha·T²·KL(soft || softmax(logits/T))``, batch mean.

    The T² factor keeps the soft term's gradients on the scale of the hard term's.
    """
    hard = nn.functional.cross_entropy(logits, targets)
    log_student = nn.functional.log_softmax(logits / temperature, dim=1)
    kl = nn.functional.kl_div(log_student, soft, reduction="batchmean")
    return (1.0 - alpha) * hard + alpha * temperature**2 * kl
