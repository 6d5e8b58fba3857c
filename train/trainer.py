"""One readable training loop: data -> tokenizer -> SentimentRNN -> best checkpoint.

Invariants
----------
* The tokenizer is trained on the training split only; validation never influences it.
* With ``ema_decay > 0`` the weights validated and saved are an exponential moving average
  of the trained weights (updated every step).
* Model selection is by validation accuracy: the checkpoint written to ``config.out`` holds
  the weights of the best epoch (early stopping restores them), never the last epoch's.
* ``on_epoch(epoch, metrics)`` runs after every validation; an exception it raises (e.g.
  Optuna's ``TrialPruned``) propagates after cleanup, and then no checkpoint is written.
* Given the same config (and data), CPU training is deterministic: the seed fixes weight
  initialisation, dropout and batch order; ``split_seed`` alone fixes the validation split.
* ``torch.set_num_threads`` is restored when ``train`` returns or raises.
* With ``lm_pretrain_epochs > 0`` the model first learns next-token prediction on the
  training texts (``train.pretrain``); it uses its own batch-order generator, so the
  classifier's batch order does not depend on it, and with 0 nothing of it runs.
"""

from __future__ import annotations

import copy
import math
import random
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field
from rnnserve.train.batching import bucketed_batches, collate, encode_texts, sorted_batches
from rnnserve.train.checkpoint import save_checkpoint
from rnnserve.train.config import Cell, TrainConfig
from rnnserve.train.data import load_labelled_texts
from rnnserve.train.distill import distillation_loss, soft_targets
from rnnserve.train.metrics import accuracy, confusion_matrix, macro_f1
from rnnserve.train.model import ModelSpec, SentimentRNN, count_parameters
from rnnserve.train.pretrain import pretrain_language_model
from rnnserve.train.schedule import lr_factor
from rnnserve.train.splits import Splits, split_train_validation
from rnnserve.train.tokenizer import PAD_ID, UNK_ID, TokenizerKind, train_tokenizer
from tokenizers import Tokenizer
from torch import nn
from tqdm.auto import tqdm


class EpochMetrics(BaseModel):
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    seconds: float


class TrainResult(BaseModel):
    checkpoint_dir: Path
    cell: Cell
    labels: list[str]
    best_val_accuracy: float
    best_val_macro_f1: float
    best_epoch: int
    epochs: list[EpochMetrics]
    parameters: int
    seconds_per_epoch: float
    peak_memory_bytes: int
    peak_memory_source: str = Field(description="what peak_memory_bytes measures")
    train_examples: int
    val_examples: int
    vocab_size: int
    device: str


@dataclass
class PreparedData:
    """Splits plus the tokenizer trained on the training split and both splits' token ids.

    Build once with ``prepare_data`` and pass to ``train(dataset=...)`` for every trial that
    shares the data options (data, columns, split, tokenizer, vocab_size, max_length).
    """

    splits: Splits
    tokenizer: Tokenizer
    train_ids: list[list[int]]
    val_ids: list[list[int]]
    tokenizer_kind: TokenizerKind
    vocab_size: int
    max_length: int

    def check_compatible(self, config: TrainConfig) -> None:
        expected = (config.tokenizer, config.vocab_size, config.max_length)
        actual = (self.tokenizer_kind, self.vocab_size, self.max_length)
        if expected != actual:
            raise ValueError(
                f"prepared data was built for (tokenizer, vocab_size, max_length)={actual}, "
                f"config asks for {expected}"
            )


def load_splits(config: TrainConfig) -> Splits:
    """Load ``config.data`` and split it, or pair it with ``config.val_data``."""
    columns = {"text_column": config.text_column, "label_column": config.label_column}
    data = load_labelled_texts(config.data, **columns)
    if config.val_data is None:
        return split_train_validation(data, config.val_fraction, config.split_seed)
    validation = load_labelled_texts(config.val_data, labels=data.label_names, **columns)
    return Splits(train=data, validation=validation)


def prepare_data(config: TrainConfig, splits: Splits | None = None) -> PreparedData:
    """Load/split (unless ``splits`` is given), train the tokenizer, encode both splits."""
    splits = splits if splits is not None else load_splits(config)
    tokenizer = train_tokenizer(splits.train.texts, config.vocab_size, config.tokenizer)
    return PreparedData(
        splits=splits,
        tokenizer=tokenizer,
        train_ids=encode_texts(tokenizer, splits.train.texts, config.max_length),
        val_ids=encode_texts(tokenizer, splits.validation.texts, config.max_length),
        tokenizer_kind=config.tokenizer,
        vocab_size=config.vocab_size,
        max_length=config.max_length,
    )


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return torch.device(choice)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    config: TrainConfig,
    *,
    dataset: PreparedData | Splits | None = None,
    on_epoch: Callable[[int, EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train per ``config``, write the best epoch's checkpoint to ``config.out``."""
    if isinstance(dataset, PreparedData):
        dataset.check_compatible(config)
        prepared = dataset
    else:
        prepared = prepare_data(config, splits=dataset)
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(config, prepared, on_epoch)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    config: TrainConfig,
    prepared: PreparedData,
    on_epoch: Callable[[int, EpochMetrics], None] | None,
) -> TrainResult:
    device = resolve_device(config.device)
    seed_everything(config.seed)
    labels = prepared.splits.label_names
    spec = ModelSpec(
        cell=config.cell,
        vocab_size=prepared.tokenizer.get_vocab_size(with_added_tokens=True),
        embed_dim=config.embed_dim,
        hidden=config.hidden,
        layers=config.layers,
        dropout=config.dropout,
        bidirectional=config.bidirectional,
        num_labels=len(labels),
        labels=labels,
        pad_id=PAD_ID,
        max_length=config.max_length,
    )
    model = SentimentRNN.from_spec(spec).to(device)
    pretraining = pretrain_language_model(
        model,
        prepared.train_ids,
        epochs=config.effective_lm_pretrain_epochs,
        lr=config.lr,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
        batch_size=config.batch_size,
        # its own generator: the classifier's batch order is the same with or without it
        rng=np.random.default_rng([config.seed, 1]),
        device=device,
        progress=config.progress,
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(len(prepared.train_ids) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(config.lr_schedule, config.epochs * steps_per_epoch)
    )
    # Validation and the checkpoint use an exponential moving average of the weights when
    # ema_decay > 0: a cheap, smoother estimate than the last step's weights.
    averaged = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    scored = averaged.model if averaged is not None else model
    step = _TrainStep(model, optimizer, scheduler, averaged, config.clip_norm, device)
    step.word_dropout = config.word_dropout
    step.adversarial_eps = config.adversarial_eps
    step.distill_alpha, step.distill_temperature = config.distill_alpha, config.distill_temperature
    train_soft = (
        soft_targets(config.teacher, prepared.splits.train.texts, labels, config.distill_temperature)
        if config.teacher
        else None
    )
    batch_rng = np.random.default_rng(config.seed)
    train_labels = torch.tensor(prepared.splits.train.labels, dtype=torch.int64)
    val_labels = np.asarray(prepared.splits.validation.labels)
    train_lengths = [len(ids) for ids in prepared.train_ids]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    history: list[EpochMetrics] = []
    best: EpochMetrics | None = None
    best_state: dict[str, torch.Tensor] = {}
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        batches = bucketed_batches(train_lengths, config.batch_size, batch_rng)
        progress = tqdm(
            batches,
            desc=f"{config.cell} epoch {epoch}/{config.epochs}",
            disable=not config.progress,
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        try:
            for number, batch in enumerate(progress, start=1):
                ids, lengths = collate([prepared.train_ids[i] for i in batch])
                soft = train_soft[batch] if train_soft is not None else None
                loss, batch_correct = step(ids, lengths, train_labels[batch], soft)
                loss_sum += loss * len(batch)
                correct += batch_correct
                seen += len(batch)
                if number % 20 == 0:
                    progress.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        finally:
            progress.close()
        val_loss, predictions = predict(scored, prepared.val_ids, device, val_labels)
        confusion = confusion_matrix(val_labels, predictions, len(labels))
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum / seen,
            train_accuracy=correct / seen,
            val_loss=val_loss,
            val_accuracy=accuracy(confusion),
            val_macro_f1=macro_f1(confusion),
            seconds=time.perf_counter() - started,
        )
        history.append(metrics)
        if config.progress:
            tqdm.write(_describe(config.cell, metrics), file=sys.stderr)
        if best is None or metrics.val_accuracy > best.val_accuracy:
            best = metrics
            best_state = copy.deepcopy(scored.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if epoch - best.epoch >= config.patience:
            break

    assert best is not None  # epochs >= 1
    model.load_state_dict(best_state)
    model.eval()
    peak_bytes, peak_source = _peak_memory(device)
    result = TrainResult(
        checkpoint_dir=config.out,
        cell=config.cell,
        labels=labels,
        best_val_accuracy=best.val_accuracy,
        best_val_macro_f1=best.val_macro_f1,
        best_epoch=best.epoch,
        epochs=history,
        parameters=count_parameters(model),
        seconds_per_epoch=sum(m.seconds for m in history) / len(history),
        peak_memory_bytes=peak_bytes,
        peak_memory_source=peak_source,
        train_examples=len(prepared.splits.train),
        val_examples=len(prepared.splits.validation),
        vocab_size=spec.vocab_size,
        device=str(device),
    )
    metrics_json = {
        **result.model_dump(mode="json"),
        "config": config.model_dump(mode="json"),
        "lm_pretraining": [record.model_dump() for record in pretraining],
        "data_source": prepared.splits.train.source,
        "val_source": prepared.splits.validation.source,
        "train_label_counts": prepared.splits.train.label_counts(),
        "torch_version": torch.__version__,
    }
    save_checkpoint(config.out, model.cpu(), spec, prepared.tokenizer, metrics_json)
    return result


class WeightAverage:
    """Exponential moving average of a model's parameters, with the usual warm-up.

    The decay used at update ``t`` is ``min(decay, (1 + t) / (10 + t))``, so short runs
    average over their few steps instead of staying near the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = list(self.model.parameters())
        torch._foreach_lerp_(averaged, [p.detach() for p in model.parameters()], 1.0 - decay)


class _TrainStep:
    """One step: word dropout, forward (AMP on CUDA), backward, clip, AdamW, schedule, EMA.

    With ``adversarial_eps > 0`` the step also trains on an adversarial copy of the batch
    (Miyato et al., 2016): each text's embedded sequence is moved by ``adversarial_eps``
    (L2 over the whole sequence) along the gradient of the loss, and the loss there is
    added to the clean loss. With soft targets (``train.distill``) both losses are the
    distillation loss. Only training changes; the model and its contract do not.
    """

    def __init__(
        self,
        model: SentimentRNN,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        averaged: WeightAverage | None,
        clip_norm: float,
        device: torch.device,
    ) -> None:
        self.model, self.optimizer, self.averaged = model, optimizer, averaged
        self.scheduler = scheduler
        self.clip_norm, self.device = clip_norm, device
        self.use_amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.word_dropout = 0.0
        self.adversarial_eps = 0.0
        self.distill_alpha, self.distill_temperature = 0.0, 1.0
        self.soft: torch.Tensor | None = None  # the current batch's soft targets

    def __call__(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor,
        soft: torch.Tensor | None = None,
    ) -> tuple[float, int]:
        """Returns (mean loss, correct predictions) of the batch before the update.

        ``soft``: the teacher's soft targets for the batch (distillation), or None.
        """
        targets = targets.to(self.device)
        self.soft = soft.to(self.device) if soft is not None else None
        if self.word_dropout > 0:
            # Word dropout: hide random real tokens behind [UNK] so no phrase is memorised.
            hidden = (torch.rand(ids.shape) < self.word_dropout) & (ids != PAD_ID)
            ids = ids.masked_fill(hidden, UNK_ID)
        ids = ids.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        if self.adversarial_eps > 0:
            logits, loss = self._adversarial(ids, lengths, targets)
        else:
            with self._autocast():
                logits, _ = self.model(ids, lengths)
            loss = self._loss(logits, targets)
            self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.averaged is not None:
            self.averaged.update(self.model)
        return loss.item(), int((logits.argmax(dim=1) == targets).sum())

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, or the distillation loss when the batch has soft targets."""
        if self.soft is None:
            return nn.functional.cross_entropy(logits.float(), targets)
        return distillation_loss(
            logits.float(), targets, self.soft, self.distill_alpha, self.distill_temperature
        )

    def _autocast(self) -> torch.autocast | nullcontext:
        return torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()

    def _adversarial(
        self, ids: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean and adversarial backward passes (gradients accumulate); clean logits and loss."""
        captured: list[torch.Tensor] = []

        def capture(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            output.retain_grad()
            captured.append(output)

        handle = self.model.embedding.register_forward_hook(capture)
        try:
            with self._autocast():
                logits, _ = self.model(ids, lengths)
        finally:
            handle.remove()
        loss = self._loss(logits, targets)
        self.scaler.scale(loss).backward()
        gradient = captured[0].grad.detach().float()
        norms = gradient.flatten(1).norm(dim=1).clamp_min(1e-12)
        perturbation = self.adversarial_eps * gradient / norms[:, None, None]

        def perturb(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            return output + perturbation.to(output.dtype)

        handle = self.model.embedding.register_forward_hook(perturb)
        try:
            with self._autocast():
                adversarial_logits, _ = self.model(ids, lengths)
        finally:
            handle.remove()
        adversarial_loss = self._loss(adversarial_logits, targets)
        self.scaler.scale(adversarial_loss).backward()
        return logits, loss


@torch.no_grad()
def predict(
    model: SentimentRNN,
    rows: list[list[int]],
    device: torch.device,
    labels: np.ndarray | None = None,
    batch_size: int = 512,
) -> tuple[float, np.ndarray]:
    """``(mean cross-entropy or nan without labels, predicted class per row)``, eval mode."""
    model.eval()
    predictions = np.zeros(len(rows), dtype=np.int64)
    loss_sum = 0.0
    for batch in sorted_batches([len(r) for r in rows], batch_size):
        ids, lengths = collate([rows[i] for i in batch])
        logits, _ = model(ids.to(device), lengths)
        logits = logits.float()
        predictions[batch] = logits.argmax(dim=1).cpu().numpy()
        if labels is not None:
            targets = torch.as_tensor(labels[batch], device=device)
            loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
    mean_loss = loss_sum / len(rows) if labels is not None and rows else math.nan
    return mean_loss, predictions


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    # Linux reports ru_maxrss in KiB: the whole process's peak resident set, data included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (ru_maxrss)"


def _describe(cell: str, m: EpochMetrics) -> str:
    return (
        f"{cell} epoch {m.epoch}: train loss {m.train_loss:.4f} acc {m.train_accuracy:.4f} | "
        f"val loss {m.val_loss:.4f} acc {m.val_accuracy:.4f} macro-F1 {m.val_macro_f1:.4f} | "
        f"{m.seconds:.1f}s"
    )
