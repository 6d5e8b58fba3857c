"""Tokenizer contract: special ids, in-tokenizer normalisation, file round trip, chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rnnserve.train.tokenizer import (
    PAD_ID,
    PAD_TOKEN,
    UNK_ID,
    UNK_TOKEN,
    encode_batch,
    save_tokenizer,
    train_tokenizer,
)
from tokenizers import Tokenizer

CORPUS = [
    "The movie was GREAT, truly great!",
    "I didn't like it at all... boring & dull",
    "@someone said: see http://example.com/review?id=3 for more",
    "Caf\u00e9 scenes were lovely; the ending wasn't",
] * 5


@pytest.fixture(scope="module", params=["wordlevel", "wordpiece", "bpe"])
def tokenizer(request) -> Tokenizer:
    return train_tokenizer(CORPUS, vocab_size=200, kind=request.param)


def test_special_tokens_and_no_added_tokens(tokenizer):
    assert tokenizer.token_to_id(PAD_TOKEN) == PAD_ID == 0
    assert tokenizer.token_to_id(UNK_TOKEN) == UNK_ID
    assert tokenizer.post_processor is None
    ids = tokenizer.encode("great").ids
    assert PAD_ID not in ids
    assert tokenizer.encode("great", add_special_tokens=True).ids == ids


def test_normalisation_lives_in_the_tokenizer(tokenizer):
    assert tokenizer.encode("GREAT Movie").ids == tokenizer.encode("great movie").ids
    assert tokenizer.normalizer.normalize_str("@Bob: https://x.y/z YES") == "xxuser: xxurl yes"


def test_unknown_word_maps_to_unk():
    wordlevel = train_tokenizer(CORPUS, vocab_size=200, kind="wordlevel")
    assert wordlevel.encode("zzzzqqq").ids == [UNK_ID]


def test_vocab_size_is_an_upper_bound():
    small = train_tokenizer(CORPUS, vocab_size=12, kind="wordlevel")
    assert small.get_vocab_size() <= 12


def test_file_round_trip(tokenizer, tmp_path):
    path = save_tokenizer(tokenizer, tmp_path)
    loaded = Tokenizer.from_file(str(path))
    texts = ["the movie was great", "Caf\u00e9 wasn't boring!", "unseen words here"]
    assert encode_batch(loaded, texts) == encode_batch(tokenizer, texts)
    words = tokenizer.decode(tokenizer.encode("the ending was great").ids)
    assert words.replace(" ", "") == "theendingwasgreat"


def test_training_sees_only_given_texts():
    tokenizer = train_tokenizer(["alpha beta"] * 3, vocab_size=50, kind="wordlevel")
    assert tokenizer.token_to_id("gamma") is None
    assert tokenizer.token_to_id("alpha") is not None


WORDS = st.sampled_from(
    ["the", "GREAT", "film", "didn't", "wasn't!", "caf\u00e9", "@user1", "http://a.b/c?d=e",
     "...", "zzz", "\u00c9t\u00e9", "\U0001f600", "end.", "(ok)", "ﬁne"]
)  # fmt: skip
SPACES = st.sampled_from([" ", "  ", "\t", "\n", " \u00a0 "])


@settings(max_examples=150, deadline=None)
@given(words=st.lists(WORDS, min_size=1, max_size=12), gaps=st.lists(SPACES, max_size=12),
       cuts=st.lists(st.booleans(), max_size=12))  # fmt: skip
def test_chunks_split_at_whitespace_tokenize_like_the_whole(tokenizer, words, gaps, cuts):
    """Invariant: concat(encode(chunk)) == encode(text) for chunks split at whitespace."""
    chunks, current = [], words[0]
    for i, word in enumerate(words[1:]):
        gap = gaps[i] if i < len(gaps) else " "
        if i < len(cuts) and cuts[i]:
            chunks.append(current)  # the whitespace between chunks is dropped
            current = word
        else:
            current += gap + word
    chunks.append(current)
    text = " ".join(chunks)
    whole = tokenizer.encode(text).ids
    pieces = [i for chunk in chunks for i in tokenizer.encode(chunk).ids]
    assert pieces == whole
