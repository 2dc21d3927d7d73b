"""The ``deltalens`` command line: one typer app, thin.

Each area registers its commands from its own module (``cli/diff.py``, ``cli/behavior.py``,
...). Those modules import only typer and the standard library at import time; torch,
transformers and TRL are imported inside the command bodies so ``deltalens --help`` and
argument errors answer in well under a second.
"""

from __future__ import annotations

import importlib
import sys

import typer

from deltalens.cli.common import Command
from deltalens.errors import DeltalensError

app = typer.Typer(
    name="deltalens",
    help="What did this fine-tune actually change? Weight-, kernel- and behaviour-level diffs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Areas whose modules define ``register(app)``; order is the order in --help.
COMMAND_MODULES = ("lab", "diff", "kernel", "curvature", "behavior", "report")


def _print_version(value: bool) -> None:
    if value:
        from deltalens import __version__

        print(f"deltalens {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                 help="Print the deltalens version and exit."),
) -> None:
    """What did this fine-tune actually change? Weight-, kernel- and behaviour-level diffs."""


@app.command(cls=Command)
def version() -> None:
    """Print the deltalens version."""
    _print_version(True)


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"deltalens.cli.{_name}")
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script; ``argv`` lets tests call it in-process."""
    try:
        app(args=argv, prog_name="deltalens")
    except DeltalensError as exc:
        print(f"deltalens: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        _say_interrupted()
        raise SystemExit(130) from None
    except SystemExit as exc:  # typer turns Ctrl-C into a silent exit 130 (KeyboardInterrupt -> Exit(130))
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            _say_interrupted()
            raise SystemExit(130) from None
        raise


def _say_interrupted() -> None:
    print("deltalens: interrupted; finished work is kept and a re-run resumes from it", file=sys.stderr)
