"""Package-level checks: the CLI answers fast and lazily, tokenizer and tiny model build."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys; from deltalens.cli import app; "
        "heavy = [m for m in ('torch', 'transformers', 'trl') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_exit_zero(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    assert "deltalens" in out.lower() or "usage" in out.lower()


def test_char_tokenizer_roundtrip(char_tokenizer):
    text = "What is 12+7?\nAnswer: 19"
    ids = char_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert char_tokenizer.decode(ids) == text


def test_tiny_llama_forward(tiny_llama, char_tokenizer):
    import torch

    batch = char_tokenizer(["1+1=2", "3+4=7"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = tiny_llama(**batch).logits
    assert logits.shape == (2, 5, len(char_tokenizer))
    assert torch.isfinite(logits).all()


def test_version_and_short_help(run_cli):
    from importlib.metadata import version

    for args in (("--version",), ("-V",), ("version",)):
        code, out, _ = run_cli(*args)
        assert code == 0 and out.strip() == f"deltalens {version('deltalens')}"
    code, out, _ = run_cli("diff", "-h")
    assert code == 0 and "--subspace-k" in out


def test_write_folder_is_all_or_nothing(tmp_path):
    import os

    import pytest

    from deltalens.results import remove_stale_temps, write_folder

    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), write_folder(dest) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the temporary is gone
    assert (dest / "old.txt").read_text() == "old"
    with write_folder(dest) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
    stale = tmp_path / ".model.999999999.abcd.tmp"  # a dead writer's folder (no such pid)
    stale.mkdir()
    (stale / "x").write_text("x")
    assert remove_stale_temps(tmp_path) == [stale] and not stale.exists() and dest.is_dir()
    assert oct(os.stat(dest).st_mode & 0o777) != oct(0o700)  # the umask's mode, not mkdtemp's private one


def test_model_names_of_checkpoint_folders_keep_their_run(tmp_path):
    from deltalens.models import model_name

    assert model_name(tmp_path / "runs" / "sft" / "seed0" / "step-000016") == "sft/seed0/step-000016"
    assert model_name(tmp_path / "grpo" / "checkpoint-500") == "grpo/checkpoint-500"
    assert model_name(tmp_path / "grpo" / "final") == "grpo/final"
    assert model_name(tmp_path / "Qwen2.5-1.5B") == "Qwen2.5-1.5B"
    assert model_name(tmp_path / "sft" / "seed0" / "step-000016") != model_name(tmp_path / "rft" / "seed0" / "step-000016")


def test_every_command_reads_device_alike(run_cli, tmp_path):
    import torch

    from deltalens.models import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    code, _, err = run_cli("diff", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "o", "--device", "tpu")
    assert code == 2 and "--device: expected cpu, cuda, cuda:N or auto, got 'tpu'" in err
    if not torch.cuda.is_available():
        code, _, err = run_cli("diff", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "o", "--device", "cuda:1")
        assert code == 2 and "--device cuda:1: torch sees no CUDA device here" in err


COMMANDS = ("lab", "diff", "overlap", "demo", "kernel", "align", "curvature", "sample", "verify", "passk", "support",
            "divergence", "evaluate", "forgetting", "report", "version")
LOADING = ("kernel", "align", "curvature", "sample", "evaluate", "divergence")


def test_one_cli_language(run_cli):
    """Issue 16 §9: help without Python types, -o for every --out, the loading options on every
    command that loads a model, and the earlier spellings hidden."""
    import re

    from deltalens.cli import app
    from deltalens.cli.common import ALIASES

    for command in COMMANDS:
        code, out, err = run_cli(command, "-h")
        assert code == 0, (command, err)
        assert not re.search(r"<(str|int|float|path|bool|list\[)", out, re.IGNORECASE), (command, out)
        if "--out" in out:
            assert re.search(r"-o, --out", out), command
        for option in ("--revision", "--trust-remote-code", "--tokenizer", "--limit"):
            assert (option in out) == (command in LOADING), (command, option)
        for old in ALIASES.get(command, {}):
            assert old not in out, (command, old)
    assert set(ALIASES) <= set(COMMANDS)


def test_earlier_spellings_still_parse():
    """Hidden aliases are rewritten to the current options (``--x=v`` too) and nothing else is."""
    import typer

    from deltalens.cli import app

    group = typer.main.get_command(app)

    def params(command, *args):
        return group.commands[command].make_context(command, [str(a) for a in args]).params

    assert params("diff", "a", "b", "-o", "o", "--top-k", "2", "--top-k=0.5")["top_k"] == [2.0, 0.5]
    assert params("diff", "a", "b", "-o", "o", "--subspace-k", "3")["top_k"] == [3.0]
    new = params("divergence", "a", "b", "-o", "o", "--problems", "p.jsonl", "-n", "2")
    old = params("divergence", "a", "b", "-o", "o", "--prompts", "p.jsonl", "--n-samples", "2")
    assert new == old and str(new["prompts"]) == "p.jsonl" and new["n"] == 2
    assert params("evaluate", "m", "-o", "e.json", "--suite", "s.jsonl", "--verify", "math-verify") == \
        params("evaluate", "m", "-o", "e.json", "--problems", "s.jsonl", "--verifier", "math-verify")
    assert params("verify", "s.jsonl", "--problems", "p", "--method", "x:y")["method"] == "x:y"
    assert params("sample", "m", "--problems", "p", "-o", "s", "--verify", "numeric")["verify"] == "numeric"
    # a value that looks like an old spelling after "--" is an argument, left alone
    assert params("report", "--", "--top-k")["run_dirs"][0].name == "--top-k"


def test_docs_name_only_options_the_commands_have():
    """docs/ and --help agree: every --option written after `deltalens CMD` in README.md or docs/
    (on its line, or on the indented continuation lines of a usage block) is an option of CMD."""
    import re
    from pathlib import Path

    import typer

    from deltalens.cli import app
    from deltalens.cli.common import ALIASES

    group = typer.main.get_command(app)
    known = {name: {o for p in cmd.params for o in p.opts + p.secondary_opts} | set(ALIASES.get(name, {}))
             for name, cmd in group.commands.items()}
    root = Path(__file__).resolve().parents[1]
    wrong, checked = [], 0
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        current = None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if current is not None and not line.startswith((" ", "\t")):
                current = None
            spans = [(m.group(1), m.group(2)) for m in re.finditer(r"deltalens (\w+)((?:[^`|]|\\\|)*)", line)]
            if current is not None and not spans:
                spans = [(current, line)]
            for command, rest in spans:
                if command not in known:
                    continue
                current = command if line.lstrip().startswith("deltalens") or current else None
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                    checked += 1
                    if option not in known[command] | {"--help"}:
                        wrong.append(f"{path.name}:{number}: deltalens {command} {option}")
    assert checked > 100 and wrong == []
