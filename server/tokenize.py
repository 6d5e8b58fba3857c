"""Text -> token ids with the model's own ``tokenizer.json`` (HF tokenizers, no torch).

Invariants:
- The tokenizer is used exactly as saved by training (same normalizer, pre-tokenizer, model)
  except that truncation and padding are switched off: the server pads itself and runs long
  texts in chunks, so nothing is ever cut.
- No special tokens are added (training adds none, train/tokenizer.py); hence a text split at
  whitespace encodes to the concatenation of its pieces' encodings, which is what makes a
  stream of chunks equal to the whole text.
- Every id returned is in ``[0, vocab_size)`` of the ONNX embedding (checked once at load:
  the tokenizer's vocabulary must fit the model's).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import InvalidArgument


class TextEncoder:
    """Batch encoder returning one ``int64`` array per text (possibly empty)."""

    def __init__(self, path: Path, *, vocab_size: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        if size > vocab_size:
            raise ValueError(f"{path}: tokenizer has {size} ids but the model's embedding has "
                             f"only {vocab_size}")
        self.vocab_size = vocab_size

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text, in order (possibly empty). Runs in Rust with the GIL
        released, in parallel for large batches; the batch call is also the cheapest for
        one text (no offsets or token strings are built)."""
        encodings = self._encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    @property
    def _encode_batch(self):
        return getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)


def check_texts(texts: Sequence[str], max_length: int | None = None) -> None:
    """Cheap loop-side validation: no text may be empty or only whitespace (the worker
    re-checks that every text yields at least one token), nor longer than ``max_length``
    characters."""
    for index, text in enumerate(texts):
        where = f"text {index}" if len(texts) > 1 else "the text"
        if not text or text.isspace():
            what = "is empty" if not text else "has no tokens (only whitespace)"
            raise InvalidArgument(f"{where} {what}; send at least one word")
        if max_length is not None and len(text) > max_length:
            raise InvalidArgument(too_long(where, len(text), max_length, "characters"))


def too_long(where: str, length: int, limit: int, unit: str) -> str:
    return (f"{where} is {length:,} {unit} long; at most {limit:,} are allowed "
            "(max_text_length): split it into chunks of a stream")


def no_tokens(index: int, many: bool) -> InvalidArgument:
    where = f"text {index}" if many else "the text"
    return InvalidArgument(f"{where} has no tokens (nothing but characters the tokenizer "
                           "drops); send at least one word")
