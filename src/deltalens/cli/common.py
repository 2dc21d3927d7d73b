"""What every command shares: its command class (hidden old spellings, plain help types) and the
options that mean the same in every command (``-o/--out``, ``--limit``, ``--revision``,
``--trust-remote-code``, ``--tokenizer``, ``--device``). Only typer and the standard library here.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

#: Earlier spellings kept working, hidden from --help, for one release (issue 16 §9):
#: command -> {old option: current option}.
ALIASES: dict[str, dict[str, str]] = {
    "divergence": {"--prompts": "--problems", "--n-samples": "--n"},
    "evaluate": {"--suite": "--problems", "--verify": "--verifier"},
    "sample": {"--verify": "--verifier"},
    "verify": {"--method": "--verifier"},
    "diff": {"--top-k": "--subspace-k"},
}

#: Help's names for value types (click's words), instead of Python's (``<list[float]>``).
_TYPE_WORDS = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "bool": "BOOLEAN"}


class _PlainArgument(TyperArgument):
    """An argument shown as its upper-case name only (``BASE``, ``MODELS...``)."""

    @property
    def display_name_raw(self) -> str:
        return self.metavar if self.metavar is not None else self.name.upper()

    def display_type(self, ctx) -> str:
        return ""


class _PlainOption(TyperOption):
    """An option whose value is shown as PATH, TEXT, INTEGER, FLOAT (or its metavar)."""

    def display_type(self, ctx) -> str:
        desc = self.type_descriptor
        if desc.is_path:
            return "PATH"
        annotation = desc.annotation
        args = getattr(annotation, "__args__", None)
        if args and getattr(annotation, "__origin__", None) is list:
            annotation = args[0]
        if getattr(annotation, "__name__", "") in ("Path", "PosixPath"):
            return "PATH"
        return _TYPE_WORDS.get(getattr(annotation, "__name__", ""), "TEXT")


class Command(TyperCommand):
    """Every deltalens command: plain value types in --help, and the earlier option spellings of
    :data:`ALIASES` accepted (hidden) as the current ones."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument:
                param.__class__ = _PlainArgument
            elif type(param) is TyperOption:
                param.__class__ = _PlainOption

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        aliases = ALIASES.get(self.name or "", {})
        rewritten = []
        for i, arg in enumerate(args):
            if arg == "--":
                rewritten += args[i:]
                break
            name, eq, value = arg.partition("=")
            rewritten.append(aliases[name] + eq + value if name in aliases else arg)
        return super().parse_args(ctx, rewritten)


def command(app: typer.Typer, name: str):
    """``app.command(name)`` with :class:`Command`."""
    return app.command(name, cls=Command)


# ---- options with one meaning in every command --------------------------------------------------

Limit = Annotated[Optional[int], typer.Option(
    "--limit", metavar="N", help="Read only the first N problems (probes, lines) of each task; a file without tasks: its first N.")]
Revision = Annotated[Optional[str], typer.Option(
    "--revision", metavar="REV", help="Hub revision (branch, tag or commit) of models given as hub ids owner/name; "
                       "owner/name@REV sets one model's.")]
TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Let transformers run the model's own code from its folder or hub repo.")]
Tokenizer = Annotated[Optional[str], typer.Option(
    "--tokenizer", help="Tokenizer folder or hub id (default: the (base) model folder's own).")]
Device = Annotated[str, typer.Option(
    "--device", help="cpu, cuda, cuda:N, or auto (cuda when torch sees a GPU).")]


def out_option(help: str):
    """``-o/--out`` (required)."""
    return typer.Option(..., "-o", "--out", help=help)


#: The options of every command that loads a model: (parameter, annotated type, default).
LOADING_OPTIONS = (("limit", Limit, None), ("revision", Revision, None), ("trust_remote_code", TrustRemoteCode, False),
                   ("tokenizer", Tokenizer, None))


def with_options(*groups):
    """Declare groups of options once for several commands: the decorated command ends with
    ``**options`` and typer sees the groups' parameters in its place (``__signature__``)."""

    def decorate(fn):
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                 for group in groups for name, annotation, default in group]
        fn.__signature__ = signature.replace(parameters=own + extra)
        return fn

    return decorate


def loading(options: dict) -> dict:
    """Take :data:`LOADING_OPTIONS` out of a command's ``**options``: the keyword arguments the
    library's drivers take for them (checked here, before any model is loaded)."""
    from deltalens.limits import check_limit

    taken = {name: options.pop(name) for name, _, _ in LOADING_OPTIONS}
    check_limit(taken["limit"])
    return taken


def device(value: str) -> str:
    """``--device`` resolved (:func:`deltalens.models.resolve_device`)."""
    from deltalens.models import resolve_device

    return resolve_device(value)

