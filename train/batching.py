"""Turning token-id lists into padded tensors, in length-bucketed batches.

Invariants
----------
* Every encoded row has 1..max_length ids (an empty encoding becomes ``[UNK]``; longer ones
  keep their first ``max_length`` ids), so every row satisfies the model's ``length >= 1``.
* Padding is ``pad_id`` at the end; ``lengths`` holds the real lengths.
* Training batches group rows of similar length (less padding, faster packed RNN) yet every
  row appears exactly once per epoch, and the order is a function of the generator's seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from rnnserve.train.tokenizer import PAD_ID, UNK_ID, encode_batch
from tokenizers import Tokenizer

BUCKET_BATCHES = 50  # rows are sorted by length within windows of this many batches


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return [(ids or [UNK_ID])[:max_length] for ids in encode_batch(tokenizer, texts)]


def collate(
    rows: Sequence[Sequence[int]], pad_id: int = PAD_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids[B, T] int64 padded at the end, lengths[B] int64)`` with T the longest row."""
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.int64)
    ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.int64)
    return ids, lengths


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle, sort by length within windows, cut into batches, shuffle the batches."""
    order = rng.permutation(len(lengths))
    lengths_array = np.asarray(lengths)
    window = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths_array[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Evaluation order: all rows sorted by length, in fixed batches."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
