"""HTML building blocks of the report: escaping, number formatting, tables, figures, the page.

The page is one file with its CSS inline and its plots as ``data:`` SVG images; it loads
nothing from anywhere and runs no script. The layout is a single column that reflows from
1280 px down to phone width (390 px): tables scroll sideways inside their own box, images
scale to the column.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from deltalens.report.inputs import LAB_LEVEL_FILES
from deltalens.report.plotting import Plot, draw_both


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 3) -> str:
    """A number for a table cell: 3 significant digits, '—' for missing or non-finite values."""
    if value is None or isinstance(value, bool):
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—" if math.isnan(value) else ("∞" if value > 0 else "−∞")
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def pct(value: object) -> str:
    """A fraction shown as a percentage ('—' when missing)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{100 * value:.2f}%"
    return "—"


@dataclass
class Section:
    """One top-level section of the page; ``blocks`` are HTML fragments in order."""

    id: str
    title: str
    intro: str = ""
    blocks: list[str] = field(default_factory=list)

    def add(self, fragment: str) -> None:
        self.blocks.append(fragment)

    def html(self) -> str:
        intro = f'<p class="intro">{self.intro}</p>' if self.intro else ""
        body = "\n".join(self.blocks)
        return f'<section id="{esc(self.id)}" class="report-section">\n<h2>{esc(self.title)}</h2>\n{intro}\n{body}\n</section>'


def heading(text: str, level: int = 3) -> str:
    return f"<h{level}>{esc(text)}</h{level}>"


def paragraph(text: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f"<p{klass}>{text}</p>"


def absent(text: str) -> str:
    """A notice that some input is absent or unreadable (already-escaped HTML allowed)."""
    return f'<p class="absent" role="note"><strong>Absent:</strong> {text}</p>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, caption: str = "",
          numeric_from: int = 1) -> str:
    """A table; cells are escaped unless they are :class:`Raw`. Columns from ``numeric_from`` right-align."""
    num = ' class="num"'
    head = "".join(f'<th scope="col"{num if i >= numeric_from else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = cell.html if isinstance(cell, Raw) else esc(cell)
            tag = "th scope=\"row\"" if i == 0 else "td"
            # short numbers right-align on one line; long text (method names, lists) may wrap
            short = isinstance(cell, Raw) or len(str(cell)) <= 14
            cls = ' class="num"' if i >= numeric_from and short else ("" if short else ' class="text"')
            cells.append(f"<{tag}{cls}>{text}</{tag.split()[0]}>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


@dataclass(frozen=True)
class Raw:
    """A table cell that is already HTML."""

    html: str


#: Screens at most this wide (CSS px) get the narrow, one-column version of each plot.
NARROW_MAX_PX = 700


def figure(plot: Plot, narrow: Plot | None = None) -> str:
    """A figure with its caption; with ``narrow``, phones get that one-column version instead."""
    source = (f'<source media="(max-width: {NARROW_MAX_PX}px)" srcset="{narrow.data_uri()}">' if narrow else "")
    return (f'<figure class="plot"><picture>{source}<img src="{plot.data_uri()}" alt="{esc(plot.alt)}" '
            f'title="{esc(plot.title)}" decoding="sync" style="max-width: {plot.width_px}px"></picture>'
            f'<figcaption><strong>{esc(plot.title)}.</strong> '
            f'<span class="provenance">Produced by: {esc(plot.provenance)}</span></figcaption></figure>')


def verdict_badge(verdict: object) -> Raw:
    text = str(verdict)
    cls = {"holds": "v-holds", "contradicted": "v-fails", "does not hold": "v-fails",
           "inconclusive": "v-inconclusive"}.get(text, "v-other")
    return Raw(f'<span class="verdict {cls}">{esc(text)}</span>')


def missing_notes(section: Section, runs: list, name: str, what: str, command: str) -> None:
    """Add a notice naming the runs where input file ``name`` is missing or unreadable.

    Per-arm files are not expected in a folder that holds only lab-level files (claims.json).
    """
    if name not in LAB_LEVEL_FILES:
        runs = [r for r in runs if not r.lab_only] or runs
    lacking = [r for r in runs if name not in r.data]
    if not lacking:
        return
    unreadable = [f"{esc(r.label)}: {esc(r.unreadable[name])}" for r in lacking if name in r.unreadable]
    missing = [esc(r.label) for r in lacking if name not in r.unreadable]
    parts = []
    if missing:
        if len(missing) == len(runs):
            parts.append(f"no run has <code>{name}</code>, so the {what} are absent; "
                         f"produce them with <code>{esc(command)}</code>.")
        else:
            parts.append(f"<code>{name}</code> not found for {', '.join(missing)}.")
    if unreadable:
        parts.append(f"<code>{name}</code> unreadable for " + "; ".join(unreadable) + ".")
    section.add(absent(" ".join(parts)))



def figure_or_note(make, *args) -> str:
    """Draw ``make(*args)`` wide and narrow, or say what the input lacked if drawing failed."""
    try:
        return figure(*draw_both(make, *args))
    except (KeyError, TypeError, ValueError) as exc:
        return absent(f"plot skipped: an input lacks a field it needs ({type(exc).__name__}: {exc}).")


CSS = """
:root { --fg:#1b1f24; --muted:#57606a; --line:#d0d7de; --bg:#ffffff; --panel:#f6f8fa; --warn:#9a6700; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin:0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width: 1200px; margin: 0 auto; padding: 16px 20px 48px; }
header.page { border-bottom: 1px solid var(--line); margin-bottom: 16px; }
h1 { font-size: 1.7rem; margin: 0.4em 0 0.2em; }
h2 { font-size: 1.35rem; margin-top: 2em; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 1.1rem; margin-top: 1.5em; }
p.intro, .meta { color: var(--muted); }
nav.toc ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 6px 16px; }
nav.toc a { color: #0969da; text-decoration: none; }
.table-wrap { overflow-x: auto; margin: 8px 0 16px; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
caption { text-align: left; padding: 6px 8px; color: var(--muted); caption-side: top; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--panel); white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure.plot { margin: 12px 0 24px; }
figure.plot img { display: block; width: 100%; height: auto; border: 1px solid var(--line);
                  border-radius: 6px; background: #fff; }
figcaption { font-size: 0.88rem; color: var(--muted); margin-top: 6px; max-width: 1000px; }
th[scope=row] { min-width: 7em; }
td.text { min-width: 9em; overflow-wrap: anywhere; }
.provenance { overflow-wrap: anywhere; }
p.absent, p.warning { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 12px; color: #4d2d00; }
.verdict { display: inline-block; padding: 1px 8px; border-radius: 12px; font-weight: 600; white-space: nowrap; }
.v-holds { background: #dafbe1; color: #116329; }
.v-fails { background: #ffebe9; color: #a40e26; }
.v-inconclusive { background: #eaeef2; color: #424a53; }
.v-other { background: #fff8c5; color: #4d2d00; }
code { font-size: 0.9em; background: var(--panel); padding: 0 3px; border-radius: 3px; overflow-wrap: anywhere; }
@media (max-width: 600px) {
  main { padding: 8px 10px 32px; }
  h1 { font-size: 1.3rem; }
  h2 { font-size: 1.15rem; }
  table { font-size: 0.8rem; }
  th, td { padding: 3px 5px; }
}
"""


def page(*, title: str, meta: str, sections: list[Section]) -> str:
    toc = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>' for s in sections)
    body = "\n".join(s.html() for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header class="page">
<h1>{esc(title)}</h1>
<p class="meta">{meta}</p>
<nav class="toc" aria-label="Sections"><ul>{toc}</ul></nav>
</header>
{body}
</main>
</body>
</html>
"""
