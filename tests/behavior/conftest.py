"""Fixtures shared by the behaviour tests: the char tokenizer and a random tiny Llama, built once per module."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tok(char_tokenizer):
    return char_tokenizer


@pytest.fixture(scope="module")
def random_model(tok):
    from deltalens.lab.tiny_model import build_tiny_llama

    return build_tiny_llama(tokenizer=tok, seed=0)
