"""Loaders, label mapping, malformed input and the deterministic split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rnnserve.train.data import (
    DataError,
    load_delimited,
    load_imdb_directory,
    load_jsonl,
    load_labelled_texts,
)
from rnnserve.train.splits import split_train_validation


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_sst2_tsv_any_column_order_and_crlf(tmp_path):
    path = write(tmp_path / "train.tsv", "label\tsentence\r\n0\ta dull film\r\n1\ta gem\r\n")
    data = load_delimited(path)
    assert data.texts == ["a dull film", "a gem"]
    assert data.labels == [0, 1]
    assert data.label_names == ["negative", "positive"]


def test_glue_dev_content_column_maps_onto_training_labels(tmp_path):
    path = write(tmp_path / "dev.tsv", "label\tcontent\n1\tgood\n0\tbad\n")
    data = load_labelled_texts(path, labels=["negative", "positive"])
    assert data.labels == [1, 0]


def test_csv_with_named_columns_and_word_labels(tmp_path):
    path = write(
        tmp_path / "x.csv",
        'id,body,mood\n1,"hello, world",positive\n2,meh,neutral\n3,"multi\nline",negative\n',
    )
    data = load_delimited(path, text_column="body", label_column="mood")
    assert data.texts == ["hello, world", "meh", "multi line"]
    assert data.label_names == ["negative", "neutral", "positive"]
    assert [data.label_names[i] for i in data.labels] == ["positive", "neutral", "negative"]


def test_jsonl(tmp_path):
    rows = [{"text": "fine", "label": "pos"}, {"text": "awful", "label": "neg"}]
    path = write(tmp_path / "x.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_labelled_texts(path)
    assert data.label_names == ["neg", "pos"]
    assert data.labels == [1, 0]


def test_imdb_directory_layout(tmp_path):
    for folder, texts in {"pos": ["loved it"], "neg": ["hated it<br />really", "meh"]}.items():
        (tmp_path / "train" / folder).mkdir(parents=True)
        for i, text in enumerate(texts):
            write(tmp_path / "train" / folder / f"{i}_1.txt", text)
    data = load_imdb_directory(tmp_path)
    assert data.label_names == ["negative", "positive"]
    assert sorted(zip(data.texts, data.labels, strict=True)) == [
        ("hated it really", 0),
        ("loved it", 1),
        ("meh", 0),
    ]
    assert load_labelled_texts(tmp_path / "train").texts == data.texts


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        ("words\tlabel\nhi\t1\n", 1, "missing text column"),
        ("sentence\tscore\nhi\t1\n", 1, "missing label column"),
        ("sentence\tlabel\nhi\t0\nho\tpositive\n", 3, "unknown label 'positive'"),
        ("sentence\tlabel\nhi\t0\n  \t1\n", 3, "empty text"),
        ("sentence\tlabel\nhi\t0\nho\t\n", 3, "empty label"),
        ("sentence\tlabel\nhi\t0\nho\n", 3, "row has 1 field"),
        ("sentence\tlabel\n", None, "no examples"),
        ("", 1, "file is empty"),
    ],
)
def test_malformed_tsv_names_file_and_line(tmp_path, content, line, problem):
    path = write(tmp_path / "bad.tsv", content)
    with pytest.raises(DataError) as caught:
        load_delimited(path)
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert str(caught.value).startswith(where)
    assert problem in str(caught.value)
    assert caught.value.line == line


def test_invalid_utf8_names_the_line(tmp_path):
    path = write(tmp_path / "bad.tsv", b"sentence\tlabel\nfine\t0\ncaf\xe9 bad\t1\n")
    with pytest.raises(DataError, match=r"bad\.tsv:3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        load_delimited(path)


def test_unknown_label_against_given_names(tmp_path):
    path = write(tmp_path / "dev.tsv", "sentence\tlabel\nok\t1\nhuh\t2\n")
    with pytest.raises(DataError, match=r"dev\.tsv:3: unknown label '2'"):
        load_delimited(path, labels=["negative", "positive"])


def test_malformed_jsonl(tmp_path):
    path = write(tmp_path / "x.jsonl", '{"text": "a", "label": 0}\n{"text": "b"\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: invalid JSON"):
        load_jsonl(path)
    path = write(tmp_path / "y.jsonl", '{"text": "a", "label": 0}\n{"label": 1}\n')
    with pytest.raises(DataError, match=r"y\.jsonl:2: missing text field"):
        load_jsonl(path)


def test_missing_source_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_labelled_texts(tmp_path / "nope.tsv")


def test_split_is_deterministic_stratified_and_disjoint(tiny_dataset):
    data = load_labelled_texts(tiny_dataset)
    first = split_train_validation(data, 0.2, seed=3)
    again = split_train_validation(data, 0.2, seed=3)
    other = split_train_validation(data, 0.2, seed=4)
    assert first.validation.texts == again.validation.texts
    assert first.validation.texts != other.validation.texts
    assert len(first.train) + len(first.validation) == len(data)
    counts = first.validation.label_counts()
    assert counts == {"negative": 60, "positive": 60}
    assert first.label_names == data.label_names


def test_synthetic_dataset_contract(tmp_path):
    from rnnserve.train.synthetic import write_synthetic_dataset

    path = write_synthetic_dataset(tmp_path / "s.tsv", n=101, seed=7)
    again = write_synthetic_dataset(tmp_path / "t.tsv", n=101, seed=7)
    assert path.read_bytes() == again.read_bytes()
    lines = path.read_text().splitlines()
    assert lines[0] == "sentence\tlabel"
    sentences = [line.split("\t") for line in lines[1:]]
    assert len(sentences) == 101
    assert all(3 <= len(text.split()) <= 30 for text, _ in sentences)
    assert abs(sum(int(label) for _, label in sentences) - 50.5) <= 1
    lengths = {len(text.split()) for text, _ in sentences}
    assert min(lengths) <= 6 and max(lengths) >= 20


def test_hub_source_without_datasets_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match=r"hf:glue:sst2: the optional 'datasets' package"):
        load_labelled_texts("hf:glue:sst2")
