"""The architecture of a sentiment RNN: the one description train, export and the server share.

Torch-free (the server imports it); nothing here imports ``rnnserve.train`` or
``rnnserve.export``, which build on it.

Invariants:
- An ``Architecture`` fixes the model's weight shapes, its ONNX signature (docs/architecture.md
  §2) and its per-row state: ``state_names`` each of ``state_shape`` = ``(layers*dirs,
  hidden)`` float32.
- ``labels`` holds ``num_labels`` unique names (index = class id); ``pad_id < vocab_size``.
- Each file that records a model extends it with what only that file holds and stays flat
  JSON: ``ModelSpec`` (a checkpoint's config.json: dropout, max_length) and
  ``RepositoryMetadata`` (a version's metadata.json: precision, opset, measurements).
  ``architecture()`` recovers the shared part of either.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Cell = Literal["lstm", "gru"]

#: Gate blocks per cell: the recurrent weights of every layer and direction stack this many
#: ``hidden``-row blocks (in torch and in ONNX, in different orders).
GATES: dict[str, int] = {"lstm": 4, "gru": 3}
#: Bytes per state value (float32).
STATE_ITEM_BYTES = 4


def state_input_names(cell: str) -> list[str]:
    """Names of the ONNX state inputs of a ``cell`` model, in order (outputs add ``_out``)."""
    return ["state_h", "state_c"] if cell == "lstm" else ["state_h"]


class Architecture(BaseModel):
    """Cell, sizes and labels of a sentiment RNN: everything its weights and I/O depend on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell: Cell
    vocab_size: int = Field(gt=1)
    embed_dim: int = Field(gt=0)
    hidden: int = Field(gt=0)
    layers: int = Field(gt=0)
    bidirectional: bool = False
    num_labels: int = Field(gt=1)
    labels: list[str]
    pad_id: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Architecture:
        if len(self.labels) != self.num_labels:
            raise ValueError(
                f"labels has {len(self.labels)} entries but num_labels is {self.num_labels}"
            )
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        if self.pad_id >= self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary ({self.vocab_size})")
        return self

    def architecture(self) -> Architecture:
        """The shared part alone (drops what a subclass's file adds)."""
        return Architecture(**{name: getattr(self, name) for name in Architecture.model_fields})

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_names(self) -> list[str]:
        """Names of the ONNX state inputs, in order."""
        return state_input_names(self.cell)

    @property
    def state_shape(self) -> tuple[int, int]:
        """Per-row state shape (without the batch dimension): ``(layers*dirs, hidden)``."""
        return (self.layers * self.directions, self.hidden)

    @property
    def state_bytes(self) -> int:
        """Bytes of float32 state one sequence needs."""
        rows, hidden = self.state_shape
        return rows * hidden * STATE_ITEM_BYTES * len(self.state_names)
