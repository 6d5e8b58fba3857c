"""Exact parameter counts of ``SentimentRNN`` from its sizes, without building it.

Invariants
----------
* ``model_parameters(...).total`` equals ``sum(p.numel() for p in SentimentRNN(...).parameters())``
  for every size (tests check it against torch), so claims about size are computed, not quoted.
* Per layer and direction a cell with ``g`` gates has ``g * (hidden*input + hidden*hidden +
  2*hidden)`` weights (torch keeps two bias vectors, ``bias_ih`` and ``bias_hh``); an LSTM has
  ``g = 4`` and a GRU ``g = 3``, so the recurrent part of a GRU is exactly 3/4 of the LSTM's at
  the same sizes. The embedding and the head do not depend on the cell.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rnnserve.architecture import GATES


def recurrent_parameter_count(
    cell: str, input_size: int, hidden: int, layers: int, bidirectional: bool = False
) -> int:
    """Weights and biases of ``nn.LSTM``/``nn.GRU(input_size, hidden, layers)``."""
    if cell not in GATES:
        raise ValueError(f"unknown cell {cell!r} (expected one of {sorted(GATES)})")
    directions = 2 if bidirectional else 1
    total = 0
    for layer in range(layers):
        layer_input = input_size if layer == 0 else hidden * directions
        per_direction = GATES[cell] * (hidden * layer_input + hidden * hidden + 2 * hidden)
        total += directions * per_direction
    return total


@dataclass(frozen=True)
class ParameterBreakdown:
    """Parameter count of a whole ``SentimentRNN`` split into its three parts."""

    embedding: int
    recurrent: int
    head: int

    @property
    def total(self) -> int:
        return self.embedding + self.recurrent + self.head

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def model_parameters(
    cell: str,
    vocab_size: int,
    embed_dim: int,
    hidden: int,
    layers: int,
    bidirectional: bool = False,
    num_labels: int = 2,
) -> ParameterBreakdown:
    """Embedding ``V*E`` + recurrent layers + head ``(H*dirs)*labels + labels``."""
    directions = 2 if bidirectional else 1
    return ParameterBreakdown(
        embedding=vocab_size * embed_dim,
        recurrent=recurrent_parameter_count(cell, embed_dim, hidden, layers, bidirectional),
        head=hidden * directions * num_labels + num_labels,
    )


def size_of(cell: str, params: dict[str, Any], vocab_size: int, num_labels: int) -> dict[str, int]:
    """Exact parameter breakdown (with ``total``) of a trial's model from its sampled sizes."""
    return model_parameters(
        cell, vocab_size=vocab_size, embed_dim=int(params["embed_dim"]),
        hidden=int(params["hidden"]), layers=int(params["layers"]), num_labels=num_labels,
    ).as_dict()
