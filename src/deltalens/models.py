"""Loading a causal language model for measurement: one loader for every area (:func:`load_model`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from deltalens.errors import DeltalensError


def load_model(source, tokenizer=None, *, device: str | None = None, dtype: str | None = None,
               need_tokenizer: bool = True, revision: str | None = None, trust_remote_code: bool = False):
    """``(model, tokenizer, name)`` from a Hugging Face model folder, a hub id or an already-loaded
    module: the one model loader of every command.

    A folder, or a hub id ``owner/name[@revision]`` (``revision``: for an id without ``@``; a local
    folder has none, so a revision with one is an error), loads with ``AutoModelForCausalLM``
    (in ``dtype``, e.g. ``"float32"``, else the stored dtype; ``trust_remote_code`` as in
    transformers). ``tokenizer``: a tokenizer object, a folder or hub id to read one from
    (``--tokenizer``), or ``None`` for the model folder's own; a missing ``config.json`` or
    tokenizer is a :class:`DeltalensError`. A loaded module is used as is (moved only when
    ``device`` is given); it needs ``tokenizer=`` unless ``need_tokenizer=False`` (a generic
    ``nn.Module`` fed ready-made batches). The model is put in eval mode; a tokenizer without a
    pad token pads with its eos token. ``name``: :func:`model_name` of the folder, the hub id, or
    the module's ``name_or_path``.
    """
    import torch

    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    if isinstance(source, (str, os.PathLike)):
        path = resolve_source(source, revision)
        check_model_folder(path)
        from transformers import AutoModelForCausalLM

        kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
        try:
            model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError, RuntimeError, ... for bad folders
            raise DeltalensError(f"{path}: cannot load as a causal language model ({_first_line(exc)})") from None
        if tokenizer is None:
            tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, hint=True)
        name = model_name(path) if path == Path(source).expanduser() else str(source)
    else:
        if revision is not None:
            raise DeltalensError(f"--revision {revision}: applies to hub ids, not to an already-loaded model")
        model = source
        if tokenizer is None and need_tokenizer:
            raise DeltalensError("an already-loaded model needs tokenizer=...")
        config = getattr(model, "config", None)
        name = str(getattr(config, "name_or_path", "") or "") or type(model).__name__
        name = Path(name).name or name
    if device:
        model = model.to(device)
    model.eval()
    if tokenizer is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, name


def resolve_source(source, revision: str | None = None):
    """The local folder of a model source: a path as given, or a hub id ``owner/name[@rev]``
    (``revision`` for an id without ``@``) downloaded or found in the hub cache; a loaded module
    is returned as it is. A revision for a local folder, or two revisions, is one
    :class:`DeltalensError` line."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    from deltalens.checkpoints.sources import MODEL_FOLDER_PATTERNS, looks_like_hub_id, resolve_hub

    text = str(source)
    path = Path(text).expanduser()
    if path.exists() or not looks_like_hub_id(text):
        if revision is not None:
            raise DeltalensError(f"--revision {revision}: {text} is a local path, which has no revisions "
                                 "(--revision applies to hub ids such as owner/name)")
        return path
    if revision is not None and "@" in text:
        raise DeltalensError(f"{text}: two revisions (@ in the id and --revision {revision}); give one")
    return resolve_hub(text if revision is None else f"{text}@{revision}", patterns=MODEL_FOLDER_PATTERNS)


def load_tokenizer(source, *, trust_remote_code: bool = False, hint: bool = False):
    """A tokenizer from a folder or a hub id ``owner/name[@rev]`` (``--tokenizer``); one
    :class:`DeltalensError` line naming the folder when there is none (``hint``: it is the model
    folder's own, so say what to add there)."""
    from transformers import AutoTokenizer

    path = resolve_source(source)
    if not hint and not path.exists():
        raise DeltalensError(f"--tokenizer {source}: no such folder (expected a tokenizer folder or a hub id owner/name)")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        what = ("no usable tokenizer in the model folder (expected tokenizer.json or tokenizer_config.json with its "
                "vocabulary; save the tokenizer of the model it was trained from there, or name a folder that has "
                "one with --tokenizer" if hint else
                "no usable tokenizer (expected tokenizer.json or tokenizer_config.json with its vocabulary")
        raise DeltalensError(f"{path}: {what}; {_first_line(exc)})") from None


#: folder names that say which checkpoint, not which model (``step-000016``, ``checkpoint-500``, ``seed0``, ``final``)
_GENERIC = re.compile(r"^(?:(?:checkpoint|step|global_step|iter|epoch|seed|run)[-_]?\d+|final|latest|best|last|master|"
                      r"release|model|hf|merged)$", re.IGNORECASE)


def model_name(path: str | os.PathLike) -> str:
    """The name a model folder is recorded under: its folder name, with parent folders prefixed
    while the name so far is only a checkpoint's (``runs/sft/seed0/step-000016`` →
    ``sft/seed0/step-000016``), so two runs' final checkpoints do not share a name."""
    parts = Path(path).resolve().parts
    name = [parts[-1]]
    for parent in reversed(parts[:-1]):
        if not all(_GENERIC.match(p) for p in name) or parent == Path(parent).anchor:
            break
        name.insert(0, parent)
    return "/".join(name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def check_model_folder(path: Path) -> None:
    """Check, before anything is loaded, that ``path`` is a model folder whose weights can be read:
    a ``config.json`` holding a JSON object, and safetensors weights whose headers and sizes are
    intact (through :func:`deltalens.checkpoints.open_checkpoint`, which names the bad file). A
    folder holding only pickle weights is left to ``from_pretrained`` (``weights_only`` loading).
    Raises one :class:`DeltalensError` line naming the file and what was expected.
    """
    import json

    from deltalens.checkpoints.sources import PICKLE_SUFFIXES, open_checkpoint

    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file"
        raise DeltalensError(f"{path}: expected a model folder (config.json and weights), but it {what}")
    config = path / "config.json"
    if not config.is_file():
        raise DeltalensError(f"{path}: not a model folder (config.json not found)")
    try:
        parsed = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeltalensError(f"{config}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(parsed, dict):
        raise DeltalensError(f"{config}: expected a model config (a JSON object), got {type(parsed).__name__}")
    if not any(path.glob("*.safetensors")) and any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir()):
        return
    if not any(path.glob("*.safetensors")):
        raise DeltalensError(f"{path}: config.json but no weights (expected model.safetensors, or "
                             "model.safetensors.index.json and its shards)")
    open_checkpoint(path)  # headers and file sizes: a truncated or corrupted file fails here, by name


def vocabulary_size(model) -> int | None:
    """Rows of the output layer (the logits' last dimension), else ``config.vocab_size``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def check_same_vocabulary(base, tuned, base_label: str, tuned_label: str) -> None:
    """Two models scored on one tokenizer's tokens must have the same output vocabulary; one
    :class:`DeltalensError` line naming both sizes otherwise."""
    v0, v1 = vocabulary_size(base), vocabulary_size(tuned)
    if v0 is not None and v1 is not None and v0 != v1:
        raise DeltalensError(f"{tuned_label}: the two models have different vocabularies ({v1} tokens; the base "
                             f"{base_label} has {v0}); both must share one tokenizer")


def resolve_device(device: str) -> str:
    """The ``--device`` of every command: ``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``;
    ``cpu``/``cuda`` are checked (``cuda`` without a GPU is an error, not a silent CPU run)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise DeltalensError(f"--device: expected cpu, cuda, cuda:N or auto, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeltalensError(f"--device {device}: torch sees no CUDA device here")
    return device
