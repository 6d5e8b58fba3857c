"""A generated SST-2-style dataset for tests and demos (no network, no shared data).

Invariants
----------
* ``write_synthetic_dataset(path, n, seed)`` is a pure function of ``(n, seed)``: the same
  arguments write byte-identical files.
* The file is ``sentence<TAB>label`` with a header, labels 0 (negative) / 1 (positive),
  balanced to within one row, 3 to 30 lower-case words per sentence.
* The label is carried by sentiment words that never occur in the other class, and every
  sentence ends with one, so a tiny unidirectional RNN reading to the final state learns
  it in a few epochs.
"""

from __future__ import annotations

import random
from pathlib import Path

POSITIVE = ("great", "wonderful", "brilliant", "delightful", "excellent", "fun", "lovely")
NEGATIVE = ("awful", "boring", "terrible", "dull", "dreadful", "bad", "stupid")
SUBJECTS = (
    "the movie", "this film", "the acting", "the story", "the script", "the ending",
    "the cast", "the music", "the director 's work", "the plot", "it",
)  # fmt: skip
LINKS = ("was", "is", "felt", "seemed", "was really", "is truly", "was simply")
FILLER = (
    "i", "saw", "this", "with", "my", "friends", "on", "a", "rainy", "sunday", "and", "we",
    "talked", "about", "it", "for", "hours", "after", "the", "show", "in", "town", "last",
    "week", "at", "old", "cinema", "near", "station", "while", "eating", "popcorn",
)  # fmt: skip
MIN_WORDS, MAX_WORDS = 3, 30


def synthetic_sentence(rng: random.Random, positive: bool) -> str:
    """One sentence: an optional neutral lead-in, then a clause ending in a sentiment word."""
    words_of_class = POSITIVE if positive else NEGATIVE
    clause = f"{rng.choice(SUBJECTS)} {rng.choice(LINKS)} {rng.choice(words_of_class)}".split()
    if rng.random() < 0.3:
        clause += ["and", rng.choice(words_of_class)]
    lead_length = rng.randint(0, MAX_WORDS - len(clause) - 3)
    lead = [rng.choice(FILLER) for _ in range(lead_length)]
    if lead and rng.random() < 0.5:
        lead.insert(rng.randint(0, len(lead)), rng.choice(words_of_class))
    words = (lead + clause)[-MAX_WORDS:]
    return " ".join(words)


def write_synthetic_dataset(path: Path | str, n: int = 600, seed: int = 0) -> Path:
    """Write ``n`` labelled sentences to ``path`` (TSV, header ``sentence<TAB>label``)."""
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    rng.shuffle(labels)
    lines = ["sentence\tlabel"]
    lines += [f"{synthetic_sentence(rng, bool(label))}\t{label}" for label in labels]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
