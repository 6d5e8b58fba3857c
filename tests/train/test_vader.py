"""The VADER review corpus reader: parsing, labelling margin, de-duplication, sdist handling.

No network: the sdist is built here with the same nested layout as the real one.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from rnnserve.train import vader
from rnnserve.train.data import DataError, load_labelled_texts

FILMS, PRODUCTS = vader.REVIEW_FILES


def test_parse_labels_by_margin_dedupes_and_keeps_order():
    files = {
        FILMS: (
            b"1\t2.3\tA gripping,  funny film\r\n"
            b"2\t-0.49\tIt is a film.\r\n"  # too close to neutral: dropped
            b"3\t-1.5\tTedious and dull\r\n"
            b"4\t0.5\tQuite nice\r\n"  # exactly the margin counts
            b"\r\n"
        ),
        PRODUCTS: (
            b"1_1\t-3.0\tBroke after a day\r\n"
            b"1_2\t-2.0\ta GRIPPING, funny film\r\n"  # duplicate of film 1: mean 0.15, dropped
            b"1_3\t-0.5\tmeh battery\r\n"
        ),
    }
    data = vader.parse_reviews(files)
    assert data.label_names == ["negative", "positive"]
    assert data.texts == ["Tedious and dull", "Quite nice", "Broke after a day", "meh battery"]
    assert data.labels == [0, 1, 0, 0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"1\t2.0\tok\n2\tnot-a-number\tx\n", ":2: rating 'not-a-number' is not a number"),
        (b"1\t2.0\ttext\textra\n", ":1: expected 3 tab-separated fields, got 4"),
        (b"1\t2.0\t  \n", ":1: empty text"),
        (b"1\t2.0\tcaf\xe9\n", "invalid UTF-8 at byte 9"),
    ],
)
def test_malformed_lines_name_file_and_line(content, problem):
    with pytest.raises(DataError, match=problem):
        vader.parse_reviews({FILMS: content})


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _fake_sdist(path: Path, films: bytes, products: bytes) -> Path:
    inner = _tar_gz({FILMS: films, PRODUCTS: products})
    path.write_bytes(_tar_gz({vader.INNER_ARCHIVE: inner}))
    return path


def test_review_files_are_read_from_the_nested_archive(tmp_path):
    sdist = _fake_sdist(tmp_path / "v.tar.gz", b"1\t1.0\tgood film\n", b"1_1\t-1.0\tbad phone\n")
    data = vader.parse_reviews(vader.read_review_files(sdist))
    assert (data.texts, data.labels) == (["good film", "bad phone"], [1, 0])


def test_broken_or_incomplete_sdist_is_a_data_error(tmp_path):
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="cannot read the review files"):
        vader.read_review_files(broken)
    missing = tmp_path / "missing.tar.gz"
    missing.write_bytes(_tar_gz({"something/else.txt": b""}))
    with pytest.raises(DataError, match="cannot read the review files"):
        vader.read_review_files(missing)


def test_sdist_checksum_is_enforced_before_use(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNSERVE_CACHE", str(tmp_path))
    placed = tmp_path / "sdists" / vader.SDIST_NAME
    placed.parent.mkdir()
    _fake_sdist(placed, b"1\t1.0\tgood\n", b"1_1\t-1.0\tbad\n")
    with pytest.raises(DataError, match="does not match the pinned"):
        vader.ensure_sdist()
    with pytest.raises(DataError, match="does not match the pinned"):
        load_labelled_texts("vader-reviews")


def test_validation_labels_must_be_the_corpus_labels():
    with pytest.raises(DataError, match=r"labels are \['negative', 'positive'\]"):
        vader.load_vader_reviews(labels=["negative", "neutral", "positive"])
