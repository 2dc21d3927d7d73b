"""The claims and gates of a ``claims.json`` as rows of text: one source for the terminal table,
the README and ``docs/lab.md``.

``python -m deltalens.lab.tables OUT/claims.json`` prints the gates and claims as Markdown;
``... --into README.md --marker lab-quick --title "one line"`` replaces the text between
``<!-- lab-quick:begin -->`` and ``<!-- lab-quick:end -->`` in that file with the title and the
tables, so the published tables come from a run's output, never from typing.
"""

from __future__ import annotations

import sys

from deltalens.numbers import fmt
from deltalens.report.claims_text import (  # noqa: F401 (re-exported: the CLI and the experiments' tables read them here)
    CLAIM_HEADER,
    GATE_HEADER,
    claim_rows,
    effect_text,
    excluded_text,
    gate_rows,
    markdown,
    published_text,
)
from deltalens.results import read_json

__all__ = ["CLAIM_HEADER", "GATE_HEADER", "claim_rows", "document", "effect_text", "excluded_text", "gate_rows",
           "main", "markdown", "published_text", "splice"]


def document(doc: dict, title: str = "") -> str:
    tuning = doc.get("tuning") or {}
    chosen = "; ".join(f"{obj} lr {rec['chosen']['learning_rate']:g}" for obj, rec in tuning.items()
                       if isinstance(rec, dict) and rec.get("chosen"))
    fixed = any(isinstance(r, dict) and r.get("source") for r in tuning.values())
    how = "fixed: an earlier result of the tuning rule" if fixed else "chosen on the dev split by each objective's own metric"
    base = {}
    for c in doc.get("claims", []):
        for metric, per_arm in (c.get("numbers") or {}).items():
            if isinstance(per_arm, dict) and per_arm.get("base") and metric in ("pass_at_1", "pass_at_kmax"):
                base[metric] = per_arm["base"][0]
    base_text = ", ".join(f"{'pass@1' if m == 'pass_at_1' else 'pass@n'} {fmt(v)}" for m, v in sorted(base.items()))
    head = (title + "\n\n" if title else "") + (f"Learning rates ({how}): {chosen}. " if chosen else "") + (
        f"The base: {base_text}.\n\n" if base_text else "\n\n" if chosen else "")
    return head + markdown(GATE_HEADER, gate_rows(doc)) + "\n\n" + markdown(CLAIM_HEADER, claim_rows(doc)) + "\n"


def splice(path: str, marker: str, text: str) -> None:
    from pathlib import Path

    file = Path(path)
    body = file.read_text()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if begin not in body or end not in body:
        raise SystemExit(f"{path}: markers {begin} / {end} not found")
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    file.write_text(head + begin + "\n" + text + end + tail)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m deltalens.lab.tables")
    ap.add_argument("claims")
    ap.add_argument("--into")
    ap.add_argument("--marker")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    text = document(read_json(args.claims), args.title)
    if args.into:
        splice(args.into, args.marker, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
