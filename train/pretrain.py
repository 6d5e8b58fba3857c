"""Language-model pretraining of the embedding and the RNN on the training texts.

Before the classifier is trained, the same ``SentimentRNN``'s embedding and recurrent layers
learn to predict each next token of the training split's texts (Dai & Le, 2015: a
sequence autoencoder or language model as initialisation). Labels are not used, so this is
"from scratch": only the text the classifier is trained on anyway.

Invariants
----------
* Only the training split's texts are read (each distinct token sequence once);
  validation never influences the weights before selection starts.
* The next-token head exists only here: a projection of the RNN's output to the embedding
  width, scored against the embedding matrix itself (tied weights), so it adds
  ``hidden * embed_dim + vocab`` parameters that are dropped afterwards. The classifier's
  state dict, its ONNX export and its serving cost do not change.
* The model's own dropout applies (``model.train()``); padding never contributes a loss.
* Deterministic on CPU for a given seed (batch order from ``rng``, dropout from torch's).
* Unidirectional models only: a backward direction would see the token it must predict.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import BaseModel
from rnnserve.train.batching import bucketed_batches, collate
from rnnserve.train.model import SentimentRNN
from rnnserve.train.schedule import lr_factor
from rnnserve.train.tokenizer import PAD_ID
from torch import nn
from tqdm.auto import tqdm


class PretrainEpoch(BaseModel):
    epoch: int
    loss: float
    perplexity: float
    tokens: int
    seconds: float


class NextTokenHead(nn.Module):
    """RNN output ``[B, T, H]`` -> next-token logits ``[B, T, vocab]`` via the embedding matrix."""

    def __init__(self, embedding: nn.Embedding, hidden: int) -> None:
        super().__init__()
        self.embedding = embedding
        self.project = nn.Linear(hidden, embedding.embedding_dim)
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.project(outputs), self.embedding.weight, self.bias)


def pretrain_language_model(
    model: SentimentRNN,
    rows: Sequence[Sequence[int]],
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    clip_norm: float,
    batch_size: int,
    rng: np.random.Generator,
    device: torch.device,
    progress: bool = True,
) -> list[PretrainEpoch]:
    """Train ``model``'s embedding and RNN in place as a next-token language model.

    ``rows``: the training split's token ids. Rows shorter than two tokens predict nothing
    and are skipped; duplicates are trained once per epoch. Returns one record per epoch.
    """
    if epochs <= 0:
        return []
    if model.num_directions != 1:
        raise ValueError("language-model pretraining needs a unidirectional model")
    texts = sorted({tuple(row) for row in rows if len(row) >= 2})
    if not texts:
        return []
    head = NextTokenHead(model.embedding, model.hidden).to(device)
    parameters = [*model.embedding.parameters(), *model.rnn.parameters(), *head.project.parameters(), head.bias]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    total_steps = epochs * math.ceil(len(texts) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor("linear", total_steps))
    lengths = [len(text) for text in texts]
    history: list[PretrainEpoch] = []
    model.train()
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        loss_sum, tokens = 0.0, 0
        batches = tqdm(
            bucketed_batches(lengths, batch_size, rng),
            desc=f"language model epoch {epoch}/{epochs}",
            disable=not progress,
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            for batch in batches:
                ids, _ = collate([texts[i] for i in batch])
                ids = ids.to(device)
                inputs, targets = ids[:, :-1], ids[:, 1:]
                outputs, _ = model.rnn(model.embedding_dropout(model.embedding(inputs)))
                logits = head(model.dropout(outputs))
                loss = nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    targets.reshape(-1),
                    ignore_index=PAD_ID,
                    reduction="sum",
                )
                count = int((targets != PAD_ID).sum())
                optimizer.zero_grad(set_to_none=True)
                (loss / count).backward()
                nn.utils.clip_grad_norm_(parameters, clip_norm)
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach())
                tokens += count
        finally:
            batches.close()
        mean = loss_sum / tokens
        record = PretrainEpoch(
            epoch=epoch,
            loss=mean,
            perplexity=math.exp(min(mean, 50.0)),
            tokens=tokens,
            seconds=time.perf_counter() - started,
        )
        history.append(record)
        if progress:
            tqdm.write(
                f"language model epoch {epoch}: loss {mean:.4f} perplexity "
                f"{record.perplexity:.1f} | {record.seconds:.1f}s",
                file=sys.stderr,
            )
    return history
