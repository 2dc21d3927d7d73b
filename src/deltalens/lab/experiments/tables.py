"""One short Markdown table over several experiments' ``claims.json``: experiment, claim, verdict,
effect [95% CI], note (e.g. a failed gate), and the run it came from (date, seeds, machine, load, time). Rows come from
:func:`deltalens.lab.tables.claim_rows`, the same as the terminal and the report.

``python -m deltalens.lab.experiments.tables A/claims.json B/claims.json ... --into README.md
--marker lab-experiments`` replaces the text between ``<!-- lab-experiments:begin -->`` and
``<!-- lab-experiments:end -->``; without ``--into`` it prints. A combined ``--experiment all``
document is expanded into its experiments.
"""

from __future__ import annotations

import sys

from deltalens.lab.tables import claim_rows, markdown, splice
from deltalens.results import read_json

HEADER = ["experiment", "claim", "verdict", "effect [95% CI]", "note", "run"]


def run_text(doc: dict) -> str:
    m = doc.get("machine") or {}
    seeds = doc.get("seeds_used") or list(range(doc.get("seeds", 0)))
    return (f"{m.get('date', '?')}, seeds {seeds[0]}–{seeds[-1]}, {m.get('cpus', '?')} CPUs (load "
            f"{m.get('load_1min_start', '?')}→{m.get('load_1min_end', '?')}), {doc.get('seconds', '?')} s"
            + (", quick" if doc.get("quick") else ""))


def summary(docs: list[dict]) -> str:
    rows = []
    for doc in docs:
        for c, row in zip(doc["claims"], claim_rows(doc)):
            rows.append([doc["experiment"], row[0], row[1], row[2], row[6], run_text(doc)])
    return markdown(HEADER, rows) + "\n"


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m deltalens.lab.experiments.tables")
    ap.add_argument("claims", nargs="+")
    ap.add_argument("--into")
    ap.add_argument("--marker", default="lab-experiments")
    args = ap.parse_args(argv)
    text = summary([read_json(p) for p in args.claims])
    if args.into:
        splice(args.into, args.marker, text)
        return 0
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
