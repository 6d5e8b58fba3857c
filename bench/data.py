"""Benchmark input sentences: the SST-2 dev split, or generated sentences when it is absent.

Every system in a run is fed the same list, in the same order, so their numbers compare.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

#: GLUE's SST-2 (``train.tsv``, ``dev.tsv``; text in column ``sentence``): the folder
#: ``RNNSERVE_SST2_DIR`` names, else ``shared/data/sst2`` beside the clone. Benchmarks use it
#: when it is there and fall back to generated sentences when it is not.
SST2_DIR = Path(os.environ.get("RNNSERVE_SST2_DIR")
                or Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2")
DEFAULT_DEV_TSV = SST2_DIR / "dev.tsv"

_VOCABULARY = """
    the film movie story acting plot is was a an and but not very really quite too
    good great wonderful moving funny charming brilliant bad dull boring awful tedious
    predictable mess of with this that it its characters director script ending performances
    never ever at all some most one two hour long slow sharp smart warm cold
"""
_WORDS = _VOCABULARY.split()


def generated_sentences(n: int = 872, *, seed: int = 0) -> list[str]:
    """``n`` reproducible English-like sentences with SST-2-like lengths (3-45 words)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = max(3, min(45, int(rng.gauss(19.5, 9))))
        out.append(" ".join(rng.choice(_WORDS) for _ in range(length)) + " .")
    return out


def read_tsv_sentences(path: Path) -> list[str]:
    """Sentences of an SST-2 style TSV: a header row, a text column named content/sentence."""
    with Path(path).open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        names = [name.strip().lower() for name in header]
        column = next((names.index(c) for c in ("content", "sentence", "text") if c in names), None)
        if column is None:
            column = len(names) - 1
        return [row[column].strip() for row in reader if len(row) > column and row[column].strip()]


def load_sentences(path: str | Path | None = None, *, limit: int | None = None) -> tuple[list[str], str]:
    """Return ``(sentences, source)``: the TSV at ``path`` (default: SST-2 dev) or generated ones.

    ``source`` names where they came from, for the report.
    """
    candidate = Path(path) if path else DEFAULT_DEV_TSV
    if candidate.is_file():
        sentences = read_tsv_sentences(candidate)
        source = str(candidate)
    else:
        sentences = generated_sentences()
        source = "generated (seed 0)"
    if not sentences:
        sentences, source = generated_sentences(), "generated (seed 0)"
    if limit is not None:
        sentences = sentences[:limit]
    return sentences, source
