"""Shared fixtures: tiny models and tokenizers built in code (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# weight-file digests are remembered in this process only: tests leave no entries in ~/.cache
os.environ.setdefault("DELTALENS_FINGERPRINT_CACHE", "")


@pytest.fixture(scope="session")
def char_tokenizer():
    from deltalens.lab.tokenizer import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture()
def tiny_llama(char_tokenizer):
    from deltalens.lab.tiny_model import build_tiny_llama

    return build_tiny_llama(tokenizer=char_tokenizer, seed=0)


@pytest.fixture()
def run_cli(capsys):
    """Run the CLI in-process; returns (exit_code, stdout, stderr)."""
    from deltalens.cli import main

    def _run(*args: str):
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run
