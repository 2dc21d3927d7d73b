"""A lab ``claims.json`` as rows of text: claims, effects with their intervals, published ranges,
exclusions and gates (one source for the terminal table, the report, the README and
``docs/lab.md``; :mod:`deltalens.lab.tables` splices them into files)."""

from __future__ import annotations

from deltalens.numbers import fmt


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


