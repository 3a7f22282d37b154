"""Words of a prompt that the model's text encoder cannot read.

Only a word-level vocabulary has such words. A `tokenizers` WordLevel model with an unknown token (the embedded
model's: 23 words, split on whitespace, no lowercasing) maps every word it lacks to that one token, so "zebra surfing
at dawn" and a prompt of emoji encode identically and give the same video. Subword tokenizers (UMT5's SentencePiece
in real Wan checkpoints, CLIP's BPE) spell an unseen word out of known pieces instead: nothing is lost, and nothing
is reported for them.
"""

from __future__ import annotations

import string


def unknown_words(tokenizer, text: str) -> list[str]:
    """The words of `text` (in order, once each) that `tokenizer` reads as its unknown token; [] for a tokenizer
    without a word-level vocabulary. Each is quoted; one known in lower case or without its punctuation says so
    ("'Red' (known as 'red')"): the embedded model's vocabulary is lower case, and "circle," is not "circle"."""
    from tokenizers.models import WordLevel

    backend = getattr(tokenizer, "backend_tokenizer", None)  # transformers' fast tokenizers wrap a `tokenizers` one
    if backend is None or not isinstance(backend.model, WordLevel) or not backend.model.unk_token:
        return []
    unknown_token, vocabulary = backend.model.unk_token, backend.get_vocab()
    encoding = backend.encode(text, add_special_tokens=False)
    words = dict.fromkeys(text[start:end] for token, (start, end) in zip(encoding.tokens, encoding.offsets)
                          if token == unknown_token and end > start)
    described = []
    for word in words:
        known = word.lower().strip(string.punctuation)
        described.append(f"'{word}' (known as '{known}')" if known in vocabulary else f"'{word}'")
    return described
