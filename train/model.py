"""The sentiment RNN and its serialisable description (docs/architecture.md §1).

Invariants
----------
* ``ModelSpec`` holds exactly the fields of ``config.json``: the shared ``Architecture``
  (rnnserve/architecture.py) plus dropout and max_length; a checkpoint's spec is enough to
  rebuild the module with ``SentimentRNN.from_spec``.
* State is batch-major: ``h`` (and ``c`` for LSTM) are ``[B, layers*dirs, hidden]``;
  ``state`` is ``(h, c)`` for LSTM and ``(h,)`` for GRU, ``None`` means zeros.
* Padding never influences a row: sequences are packed, so a row's logits and final state
  depend only on its first ``lengths[i]`` tokens.
* Logits are a function of the final state alone (``head(dropout(h_last))`` with ``h_last``
  the last layer's final hidden state, forward and backward concatenated), so feeding a
  text in pieces with carried state gives the same logits as one pass (unidirectional).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from rnnserve.architecture import Architecture, Cell

State = tuple[torch.Tensor, ...]

FORMAT_VERSION = 1


class ModelSpec(Architecture):
    """A checkpoint's ``config.json``: the architecture plus what only training uses.

    Enough to rebuild a ``SentimentRNN`` (``from_spec``) and to tokenize its input.
    """

    format_version: Literal[1] = FORMAT_VERSION
    dropout: float = Field(ge=0.0, lt=1.0)
    max_length: int = Field(gt=0)


class SentimentRNN(nn.Module):
    """Embedding -> dropout -> multi-layer LSTM/GRU (packed) -> dropout -> linear head.

    ``dropout`` is applied to the embeddings, between RNN layers and to the head's input; the
    dropout modules hold no parameters, so the state dict is exactly the contract's.
    """

    def __init__(
        self,
        cell: Cell,
        vocab_size: int,
        embed_dim: int,
        hidden: int,
        layers: int,
        dropout: float,
        bidirectional: bool,
        num_labels: int,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        self.cell = cell
        self.layers = layers
        self.hidden = hidden
        self.num_directions = 2 if bidirectional else 1
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.embedding_dropout = nn.Dropout(dropout)
        rnn_class = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            embed_dim,
            hidden,
            layers,
            batch_first=True,
            # Inter-layer dropout only exists between layers; torch warns otherwise.
            dropout=dropout if layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * self.num_directions, num_labels)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> SentimentRNN:
        return cls(
            cell=spec.cell,
            vocab_size=spec.vocab_size,
            embed_dim=spec.embed_dim,
            hidden=spec.hidden,
            layers=spec.layers,
            dropout=spec.dropout,
            bidirectional=spec.bidirectional,
            num_labels=spec.num_labels,
            pad_id=spec.pad_id,
        )

    def zero_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        """A fresh batch-major state: zeros of ``[B, layers*dirs, hidden]`` (one or two)."""
        shape = (batch_size, self.layers * self.num_directions, self.hidden)
        count = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(count))

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """``ids[B,T]`` int64 padded at the end, ``lengths[B]`` in 1..T -> (logits, state)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be [batch, time], got shape {tuple(ids.shape)}")
        lengths_cpu = lengths.detach().to("cpu", torch.int64)
        if lengths_cpu.shape != (ids.shape[0],):
            raise ValueError(f"lengths must be [{ids.shape[0]}], got {tuple(lengths_cpu.shape)}")
        if ids.shape[0] and (lengths_cpu.min() < 1 or lengths_cpu.max() > ids.shape[1]):
            raise ValueError(f"every length must be in 1..{ids.shape[1]}, got {lengths_cpu.tolist()}")

        embedded = self.embedding_dropout(self.embedding(ids))
        packed = pack_padded_sequence(embedded, lengths_cpu, batch_first=True, enforce_sorted=False)
        hx = None
        if state is not None:
            # batch-major [B, L*D, H] -> torch's layer-major [L*D, B, H]
            layer_major = tuple(s.transpose(0, 1).contiguous().to(embedded.dtype) for s in state)
            hx = layer_major if self.cell == "lstm" else layer_major[0]
        _, final = self.rnn(packed, hx)
        finals = final if self.cell == "lstm" else (final,)

        h_n = finals[0]  # [L*D, B, H]; packing already restored the caller's row order
        last_layer = h_n[-self.num_directions :]  # [D, B, H]: forward (and backward)
        h_last = torch.cat(list(last_layer), dim=-1)  # [B, D*H]
        logits = self.head(self.dropout(h_last))
        new_state = tuple(s.transpose(0, 1) for s in finals)
        return logits, new_state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
