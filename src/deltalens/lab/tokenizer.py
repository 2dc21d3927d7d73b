"""A character-level tokenizer built offline with the ``tokenizers`` library.

Every printable ASCII character, newline and tab is one token; ``<pad>``, ``<bos>``,
``<eos>`` and ``<unk>`` are special tokens. The result is a ``PreTrainedTokenizerFast`` that
saves and loads like any Hugging Face tokenizer, so every deltalens command (and TRL) works on
models that use it.
"""

from __future__ import annotations

import string

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARACTERS = "".join(ch for ch in string.printable if ch not in "\r\x0b\x0c")


def char_vocab() -> dict[str, int]:
    """Token -> id: the special tokens first, then one id per character."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab.setdefault(ch, len(vocab))
    return vocab


def build_char_tokenizer(model_max_length: int = 512):
    """Return a ``transformers.PreTrainedTokenizerFast`` that splits text into characters."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab=char_vocab(), merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="left",
    )
    return tok
