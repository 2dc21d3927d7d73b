"""HTML building blocks of the report: escaping, number formatting, tables, figures, the page.

The page is one file with its CSS inline and its plots as ``data:`` SVG images; it loads
nothing from anywhere and runs no script. The layout is a single column that reflows from
1280 px down to phone width (390 px): tables scroll sideways inside their own box, images
scale to the column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

from deltalens.numbers import fmt, pct

__all__ = ["Section", "absent", "figure", "figure_or_note", "fmt", "grid", "heading", "html", "missing_notes",
           "page", "paragraph", "pct", "render_template", "table", "verdict_badge"]
from deltalens.report.plotting import Plot, draw_both

def _env():
    import jinja2

    from deltalens.report.templates import TEMPLATES

    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True,
                                  undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    return _ENV


_ENV = None


def render_template(name: str, **context) -> Markup:
    """Render one of :data:`deltalens.report.templates.TEMPLATES` (autoescaped) to Markup."""
    return Markup(_env().get_template(name).render(**context))


def html(template: str, *args, **kwargs) -> Markup:
    """A small HTML fragment: ``template`` is trusted markup, every argument is escaped
    (``html("<code>{}</code>", name)``)."""
    return Markup(template).format(*args, **kwargs)


@dataclass
class Section:
    """One top-level section of the page; ``blocks`` are HTML fragments (Markup) in order.
    ``intro`` is text (escaped) or Markup."""

    id: str
    title: str
    intro: str = ""
    blocks: list[Markup] = field(default_factory=list)

    def add(self, fragment) -> None:
        if fragment:
            self.blocks.append(fragment if isinstance(fragment, Markup) else escape(fragment))

    def html(self) -> Markup:
        return render_template("section.html", s=self)


def heading(text: str, level: int = 3) -> Markup:
    return html(f"<h{int(level)}>{{}}</h{int(level)}>", text)


def paragraph(text: str, cls: str = "") -> Markup:
    """A paragraph of ``text`` (escaped unless it is Markup)."""
    return render_template("note.html", text=text, cls=cls or "")


def absent(text: str) -> Markup:
    """A notice that some input is absent or unreadable (text escaped unless it is Markup)."""
    return render_template("note.html", text=text, cls="absent")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, caption: str = "",
          numeric_from: int = 1, cls: str = "") -> Markup:
    """A table; cells are escaped unless they are Markup. Columns from ``numeric_from`` right-align
    when short; long text cells may wrap."""
    out = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            short = isinstance(cell, Markup) or len(str(cell)) <= 14
            klass = ' class="num"' if i >= numeric_from and short else ("" if short else ' class="text"')
            cells.append({"text": cell if isinstance(cell, Markup) else str(cell), "cls": Markup(klass)})
        out.append(cells)
    return render_template("table.html", headers=list(headers), rows=out, caption=caption,
                           numeric_from=numeric_from, cls=cls)


#: Screens at most this wide (CSS px) get the narrow, one-column version of each plot.
NARROW_MAX_PX = 700


def figure(plot: Plot, narrow: Plot | None = None) -> Markup:
    """A figure with its caption; with ``narrow``, phones get that one-column version instead."""
    return render_template("figure.html", plot=plot, narrow=narrow, narrow_max=NARROW_MAX_PX)


def grid(fragments: Iterable[Markup]) -> Markup:
    """Figures side by side on wide screens (two per row), one per row on phones."""
    items = [f for f in fragments if f]
    return html("<div class=\"fig-grid\">{}</div>", Markup("\n").join(items)) if items else Markup("")


def verdict_badge(verdict: object) -> Markup:
    text = str(verdict)
    cls = {"holds": "v-holds", "contradicted": "v-fails", "does not hold": "v-fails",
           "inconclusive": "v-inconclusive"}.get(text, "v-other")
    return html('<span class="verdict {}">{}</span>', cls, text)


def figure_or_note(make, *args) -> Markup:
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
main { max-width: 1500px; margin: 0 auto; padding: 16px 20px 48px; }
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
thead th { background: var(--panel); }

td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
thead th.num { white-space: normal; overflow-wrap: anywhere; min-width: 4.5em; }
figure.plot { margin: 12px 0 24px; }
figure.plot img { display: block; width: 100%; height: auto; border: 1px solid var(--line);
                  border-radius: 6px; background: #fff; }
figcaption { font-size: 0.88rem; color: var(--muted); margin-top: 6px; max-width: 1000px; }
th[scope=row] { min-width: 11em; }
.fig-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 480px), 1fr)); gap: 0 24px; }
.answer-grid { display: grid; grid-template-columns: minmax(0, 1fr); gap: 0 20px; }
.answer-claims th[scope=row] { min-width: 8em; }
.answer-claims td { min-width: 4.5em; }
@media (min-width: 1100px) {
  .answer-grid { grid-template-columns: minmax(0, 1.5fr) minmax(0, 1fr); align-items: start; }
}
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


#: Figures decoded before the load event: the first ones, which a 1280×1000 window shows without
#: scrolling. The rest load lazily, as they come near the window (and all of them before printing):
#: decoding every figure first made a cold open of the default lab's page take 2.2 s (median)
#: instead of 0.6 s on a loaded 2-core machine (docs/report.md).
EAGER_FIGURES = 2


def page(*, title: str, meta: str, sections: list[Section]) -> str:
    text = str(render_template("page.html", title=title, meta=meta, sections=sections, css=Markup(CSS)))
    # only figure.html writes this attribute (in page order); alt and title text are escaped, so no quote matches
    return text.replace('loading="lazy"', 'loading="eager"', EAGER_FIGURES)


def missing_notes(section: Section, pairs: list, name: str, what: str, command: str) -> None:
    """One notice when no pair has input ``name`` (which pairs lack it is said once, in the Pairs
    table), and one naming the pairs whose ``name`` exists but is unreadable."""
    if not any(name in p.data for p in pairs):
        section.add(absent(html("no input has <code>{}</code>, so the {} are absent; produce them with <code>{}</code>.",
                                name, what, command)))
    bad = [f"{p.label}: {p.unreadable[name]}" for p in pairs if name in p.unreadable]
    if bad:
        section.add(absent(html("<code>{}</code> unreadable for {}.", name, "; ".join(bad))))
