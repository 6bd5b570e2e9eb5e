"""The tokenizer: one token per character, exact round trips, loud failure on anything else."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.tokenizer import EOS, PAD, VOCAB, get_tokenizer

tok = get_tokenizer()
vocab_text = st.text(alphabet=VOCAB, max_size=200)

# ----------------------------------------------------------------------------
# Encoding


@settings(max_examples=200, deadline=None)
@given(vocab_text)
def test_decode_of_encode_is_the_identity_on_vocabulary_strings(text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(vocab_text)
def test_every_character_is_exactly_one_token(text):
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert ids == [tok.encode(ch)[0] for ch in text]


def test_each_digit_is_its_own_token():
    ids = tok.encode("12345678900")
    assert len(ids) == 11
    assert len(set(ids[:10])) == 10
    assert ids[-1] == ids[-2]


def test_characters_have_distinct_ordinary_ids_below_the_special_ones():
    ids = [tok.encode(ch)[0] for ch in VOCAB]
    assert sorted(ids) == list(range(len(VOCAB)))


@pytest.mark.parametrize("bad", ["x", "é", " ", "\t", "Q:1/2", "<|eos|>", "12" + EOS])
def test_encode_rejects_characters_outside_the_vocabulary_naming_the_first_one(bad):
    first_bad = next(ch for ch in bad if ch not in VOCAB)
    with pytest.raises(ValueError, match=re.escape(repr(first_bad))):
        tok.encode(bad)


def test_encode_rejects_non_strings():
    with pytest.raises(ValueError, match="str"):
        tok.encode(b"12")


# ----------------------------------------------------------------------------
# Special tokens


def test_eos_and_pad_are_distinct_ids_past_the_ordinary_tokens():
    assert tok.eos_id != tok.pad_id
    assert min(tok.eos_id, tok.pad_id) >= len(VOCAB)


def test_vocab_size_counts_the_characters_and_the_two_special_tokens():
    assert tok.vocab_size == len(VOCAB) + 2 == 22
    assert max(tok.eos_id, tok.pad_id) == tok.vocab_size - 1


def test_decode_skips_special_tokens_by_default():
    ids = tok.encode("A:7") + [tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == "A:7"


def test_decode_can_write_special_tokens_as_their_names():
    ids = tok.encode("A:7") + [tok.eos_id, tok.pad_id]
    assert tok.decode(ids, skip_special=False) == "A:7" + EOS + PAD


@pytest.mark.parametrize("bad_id", [-1, 22, 10**6])
def test_decode_rejects_ids_outside_the_vocabulary(bad_id):
    with pytest.raises(ValueError, match=str(bad_id)):
        tok.decode([0, bad_id])


def test_get_tokenizer_returns_one_shared_instance():
    assert get_tokenizer() is get_tokenizer()


def test_encode_error_lists_the_allowed_characters():
    with pytest.raises(ValueError) as info:
        tok.encode("x")
    assert all(repr(ch) in str(info.value) for ch in VOCAB)
