"""A character-level tokenizer for the arithmetic tasks, built on tiktoken.

Every character of the vocabulary is one token (one token per digit), so the model never has to
learn how a number happens to be split. Two special tokens follow the ordinary ones: EOS ends a
completion and PAD fills batches. They are distinct on purpose: when pad == eos, masking the
padding also masks the EOS the model must learn to emit.

    tok = get_tokenizer()
    ids = tok.encode("Q:12+3\n")            # ValueError on any character outside VOCAB
    tok.decode(ids + [tok.eos_id])          # "Q:12+3\n"        (special tokens skipped)
    tok.decode([tok.eos_id], skip_special=False)  # "<|eos|>"   (special tokens as their names)
"""
import functools

import tiktoken

# ----------------------------------------------------------------------------
# Vocabulary

VOCAB = "0123456789+-*=QA:\n()"  # "(" and ")" are unused for now, reserved for parenthesised tasks
EOS = "<|eos|>"
PAD = "<|pad|>"

# One piece per character, newline included, so tiktoken never merges anything.
PAT_STR = r"(?s:.)"


def check_text(text):
    """Raise ValueError unless text is a string made only of VOCAB characters."""
    if not isinstance(text, str):
        raise ValueError(f"expected a str to encode, got {type(text).__name__}")
    for ch in text:
        if ch not in VOCAB:
            # Checked here: tiktoken would raise a Rust panic (a BaseException) on an unknown byte.
            raise ValueError(f"character {ch!r} is not in the vocabulary; "
                             f"allowed characters: {list(VOCAB)}")


# ----------------------------------------------------------------------------
# Tokenizer


class Tokenizer:
    """Thin wrapper over a tiktoken Encoding whose ranks are the VOCAB characters in order."""

    def __init__(self):
        ranks = {ch.encode(): i for i, ch in enumerate(VOCAB)}
        self.n_ordinary = len(VOCAB)
        self.eos_id = self.n_ordinary
        self.pad_id = self.n_ordinary + 1
        specials = {EOS: self.eos_id, PAD: self.pad_id}
        self._enc = tiktoken.Encoding(name="nanorgra", pat_str=PAT_STR, mergeable_ranks=ranks,
                                      special_tokens=specials)
        self.vocab_size = self._enc.n_vocab

    def encode(self, text):
        """Token ids of text, one per character.
        Special-token names in text are rejected, not encoded."""
        check_text(text)
        return self._enc.encode_ordinary(text)

    def decode(self, ids, skip_special=True):
        """Text of ids.
        Special tokens are dropped by default, or written as their names ("<|eos|>")."""
        ids = [int(i) for i in ids]  # accepts lists, numpy arrays and torch tensors alike
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is out of range; "
                                 f"expected 0 <= id < {self.vocab_size}")
        if skip_special:
            ids = [i for i in ids if i < self.n_ordinary]
        return self._enc.decode(ids)


@functools.cache
def get_tokenizer():
    """The shared Tokenizer instance (building it twice would give the same ids, but waste time)."""
    return Tokenizer()
