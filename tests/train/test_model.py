"""SentimentRNN contract (docs/architecture.md §1): shapes, packing, carried state, names."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from rnnserve.train.model import ModelSpec, SentimentRNN

LABELS = ["negative", "positive"]


def make_spec(cell: str, bidirectional: bool = False, layers: int = 2) -> ModelSpec:
    return ModelSpec(
        cell=cell, vocab_size=50, embed_dim=8, hidden=6, layers=layers, dropout=0.2,
        bidirectional=bidirectional, num_labels=2, labels=LABELS, pad_id=0, max_length=32,
    )  # fmt: skip


def make_model(cell: str, bidirectional: bool = False, layers: int = 2) -> SentimentRNN:
    torch.manual_seed(0)
    return SentimentRNN.from_spec(make_spec(cell, bidirectional, layers)).eval()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    lengths = torch.tensor([5, 2, 7, 1])
    ids = torch.randint(1, 50, (4, 7))
    for row, length in enumerate(lengths):
        ids[row, length:] = 0
    return ids, lengths


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_shapes_and_batch_major_state(cell, bidirectional):
    model = make_model(cell, bidirectional)
    ids, lengths = padded_batch()
    logits, state = model(ids, lengths)
    dirs = 2 if bidirectional else 1
    assert logits.shape == (4, 2)
    assert len(state) == (2 if cell == "lstm" else 1)
    assert all(s.shape == (4, 2 * dirs, 6) for s in state)
    assert model.head.in_features == 6 * dirs


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_a_row(cell, bidirectional):
    model = make_model(cell, bidirectional)
    ids, lengths = padded_batch()
    logits, state = model(ids, lengths)
    for row in range(len(lengths)):
        alone_ids = ids[row : row + 1, : lengths[row]]
        alone_logits, alone_state = model(alone_ids, lengths[row : row + 1])
        torch.testing.assert_close(logits[row], alone_logits[0], rtol=0, atol=1e-6)
        for batched, single in zip(state, alone_state, strict=True):
            torch.testing.assert_close(batched[row], single[0], rtol=0, atol=1e-6)
    # Garbage in the padding positions must not matter either.
    noisy = ids.clone()
    for row, length in enumerate(lengths):
        noisy[row, length:] = 7
    torch.testing.assert_close(model(noisy, lengths)[0], logits)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_carried_state_equals_one_pass(cell):
    model = make_model(cell)
    ids, lengths = padded_batch()
    whole_logits, whole_state = model(ids, lengths)
    cut = 1  # every row has at least one token in the first chunk
    first = model(ids[:, :cut], torch.ones_like(lengths))
    rest_lengths = lengths - cut
    keep = rest_lengths > 0  # rows that continue into the second chunk
    second_logits, second_state = model(
        ids[keep, cut:], rest_lengths[keep], tuple(s[keep] for s in first[1])
    )
    torch.testing.assert_close(second_logits, whole_logits[keep], rtol=0, atol=1e-5)
    for carried, whole in zip(second_state, whole_state, strict=True):
        torch.testing.assert_close(carried, whole[keep], rtol=0, atol=1e-5)
    torch.testing.assert_close(first[0][~keep], whole_logits[~keep], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_logits_are_a_function_of_the_final_state(cell):
    model = make_model(cell)
    ids, lengths = padded_batch()
    logits, state = model(ids, lengths)
    torch.testing.assert_close(logits, model.head(state[0][:, -1]))


def test_zero_state_is_the_default():
    model = make_model("lstm")
    ids, lengths = padded_batch()
    torch.testing.assert_close(model(ids, lengths)[0], model(ids, lengths, model.zero_state(4))[0])


def test_training_mode_applies_dropout_to_the_head_input():
    model = make_model("gru").train()
    ids, lengths = padded_batch()
    torch.manual_seed(0)
    a = model(ids, lengths)[0]
    b = model(ids, lengths)[0]
    assert not torch.allclose(a, b)


def test_parameter_names_follow_the_contract():
    names = set(make_model("lstm", bidirectional=True).state_dict())
    assert {"embedding.weight", "head.weight", "head.bias"} <= names
    for k in (0, 1):
        for suffix in ("", "_reverse"):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                assert f"rnn.{kind}_l{k}{suffix}" in names


def test_embedding_pad_row_is_zero():
    model = make_model("gru")
    assert torch.count_nonzero(model.embedding.weight[0]) == 0


def test_rejects_empty_rows():
    model = make_model("gru")
    with pytest.raises(ValueError, match="every length must be in 1..3"):
        model(torch.ones(2, 3, dtype=torch.int64), torch.tensor([3, 0]))


def test_spec_validation():
    with pytest.raises(ValidationError, match="num_labels"):
        make_spec("gru").model_copy(update={}).model_validate(
            {**make_spec("gru").model_dump(), "num_labels": 3}
        )
    with pytest.raises(ValidationError):
        ModelSpec.model_validate({**make_spec("gru").model_dump(), "unexpected": 1})
    assert set(make_spec("lstm").model_dump()) == {
        "format_version", "cell", "vocab_size", "embed_dim", "hidden", "layers", "dropout",
        "bidirectional", "num_labels", "labels", "pad_id", "max_length",
    }  # fmt: skip
