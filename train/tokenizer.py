"""Training the HF ``tokenizers`` tokenizer that is saved next to every checkpoint.

Invariants
----------
* ``[PAD]`` has id 0 (``PAD_ID``) and ``[UNK]`` id 1; there are no BOS/EOS/CLS tokens and no
  post-processor, so a text's ids are exactly its word pieces.
* All normalisation (Unicode NFKC, lower-casing, ``xxurl``/``xxuser`` placeholders) lives in the
  tokenizer's normalizer, so the server gets identical behaviour by loading tokenizer.json.
* Chunk invariance: the pre-tokenizer splits at whitespace first and no normalisation rule
  matches across whitespace, so for any text split at whitespace into chunks,
  ``concat(encode(chunk).ids for chunk in chunks) == encode(text).ids``. This is what lets
  the server stream a text in pieces with carried state.
* The tokenizer is trained on the training split only (the caller passes those texts).
* The saved file has no truncation and no padding: the trainer and the server pad
  themselves with ``PAD_ID`` and chunk long inputs.

Kinds: ``wordlevel`` (whole words, the default: best dev accuracy, see train/DATA.md),
``wordpiece`` and ``bpe`` (sub-words, fewer unknowns on rare words).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rnnserve.train.config import TokenizerKind
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
PAD_ID = 0
UNK_ID = 1
SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN]
TOKENIZER_FILE = "tokenizer.json"


def build_normalizer() -> normalizers.Normalizer:
    """NFKC, placeholders for URLs and @mentions, lower-case. No rule crosses whitespace."""
    return normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Replace(Regex(r"(?:https?://|www\.)\S+"), "xxurl"),
            normalizers.Replace(Regex(r"@\w+"), "xxuser"),
            normalizers.Lowercase(),
        ]
    )


def build_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split at whitespace, then split punctuation off words (``don't`` -> ``don ' t``)."""
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )


def _empty_tokenizer(kind: TokenizerKind) -> tuple[Tokenizer, type]:
    """An untrained tokenizer of ``kind`` and the matching trainer class."""
    if kind == "wordlevel":
        return Tokenizer(models.WordLevel(unk_token=UNK_TOKEN)), trainers.WordLevelTrainer
    if kind == "wordpiece":
        return Tokenizer(models.WordPiece(unk_token=UNK_TOKEN)), trainers.WordPieceTrainer
    if kind == "bpe":
        return Tokenizer(models.BPE(unk_token=UNK_TOKEN)), trainers.BpeTrainer
    raise ValueError(f"unknown tokenizer kind {kind!r} (expected wordlevel, wordpiece or bpe)")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, kind: TokenizerKind = "wordlevel", min_frequency: int = 1
) -> Tokenizer:
    """Train a tokenizer on ``texts`` (the training split) with at most ``vocab_size`` ids."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    tokenizer, trainer_class = _empty_tokenizer(kind)
    tokenizer.normalizer = build_normalizer()
    tokenizer.pre_tokenizer = build_pre_tokenizer()
    options = {
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "special_tokens": SPECIAL_TOKENS,
    }
    if kind != "wordlevel":
        options["show_progress"] = False
    trainer = trainer_class(**options)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if kind == "wordpiece":
        tokenizer.decoder = decoders.WordPiece()
    check_special_tokens(tokenizer)
    return tokenizer


def check_special_tokens(tokenizer: Tokenizer) -> None:
    """Raise ValueError unless ``[PAD]`` is id 0 and ``[UNK]`` is id 1."""
    for token, expected in ((PAD_TOKEN, PAD_ID), (UNK_TOKEN, UNK_ID)):
        actual = tokenizer.token_to_id(token)
        if actual != expected:
            raise ValueError(f"tokenizer maps {token} to {actual}, expected {expected}")


def encode_batch(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids per text (no special tokens are ever added)."""
    return [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> Path:
    path = Path(directory) / TOKENIZER_FILE
    tokenizer.save(str(path))
    return path
