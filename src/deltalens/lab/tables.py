"""The claims and gates of a ``claims.json`` as rows of text: one source for the terminal table,
the README and ``docs/lab.md``.

``python -m deltalens.lab.tables OUT/claims.json`` prints the gates and claims as Markdown;
``... --into README.md --marker lab-quick --title "one line"`` replaces the text between
``<!-- lab-quick:begin -->`` and ``<!-- lab-quick:end -->`` in that file with the title and the
tables, so the published tables come from a run's output, never from typing.
"""

from __future__ import annotations

import sys

from deltalens.results import read_json


def fmt(x) -> str:
    if x is None:
        return "—"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def effect_text(e: dict) -> str:
    lo, hi = e.get("ci") or [None, None]
    return f"{fmt(e.get('estimate'))} [{fmt(lo)}, {fmt(hi)}] {e.get('unit') or ''}".strip()


def published_text(p: dict | None) -> str:
    if not p:
        return "—"
    parts = []
    for key, value in p.items():
        if key in ("source", "unit"):
            continue
        if isinstance(value, list):
            parts.append(f"{key} {fmt(value[0])}–{fmt(value[1])}")
        elif isinstance(value, dict):
            parts.append(f"{key} " + ", ".join(f"{k} {v}" for k, v in value.items()))
    return "; ".join(parts) + (f" ({p['source']})" if p.get("source") else "")


def excluded_text(ex: dict) -> str:
    out = []
    for metric, per_arm in (ex or {}).items():
        for arm, rec in per_arm.items():
            out.append(f"{arm} {metric}: " + ", ".join(f"{n} {reason}" for reason, n in rec["total"].items()))
    return "; ".join(out) or "—"


def claim_rows(doc: dict) -> list[list[str]]:
    """[claim, verdict, effect (95% CI), parts, published, excluded, note] per claim."""
    rows = []
    for c in doc["claims"]:
        verdict = c["verdict"] + (f" ({c['finding']})" if c.get("finding") else "")
        parts = "; ".join(f"{p['label']}: {effect_text(p)} → {p['verdict']}" for p in c.get("parts", [])[1:])
        second = "; ".join(f"{p['label']}: {effect_text(p)}" for p in c.get("secondary") or [])
        rows.append([c["claim"], verdict, effect_text(c["effect"]), "; ".join(x for x in (parts, second) if x) or "—",
                     published_text(c.get("published")), excluded_text(c.get("excluded")), c.get("note") or "—"])
    return rows


CLAIM_HEADER = ["claim", "verdict", "effect [95% CI]", "other parts", "published (SPEC §8)", "excluded", "note"]


def gate_rows(doc: dict) -> list[list[str]]:
    rows = []
    for arm, per_seed in (doc.get("gates") or {}).items():
        for seed, g in sorted(per_seed.items()):
            extra = f"; format {g['format_share']:.2f}" if g.get("format_share") is not None else ""
            rows.append([arm, str(seed), "passed" if g["passed"] else "FAILED", g["metric"], fmt(g.get("before")),
                         fmt(g.get("after")), f"[{fmt(g['ci'][0])}, {fmt(g['ci'][1])}]{extra}"])
    return rows


GATE_HEADER = ["arm", "seed", "gate", "metric", "before", "after", "after − before [95% CI]"]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    def cell(x: str) -> str:
        return x.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


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
