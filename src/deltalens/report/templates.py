"""The report's Jinja2 templates (autoescape on): the page and its building blocks.

Kept as strings in this module (loaded with a ``DictLoader``) so an installed wheel needs no
package data. Every value is escaped unless it is :class:`markupsafe.Markup` (HTML this
package built itself, from escaped parts).
"""

from __future__ import annotations

TEMPLATES = {
    "page.html": """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
<main>
<header class="page">
<h1>{{ title }}</h1>
<p class="meta">{{ meta }}</p>
<nav class="toc" aria-label="Sections"><ul>
{%- for s in sections %}<li><a href="#{{ s.id }}">{{ s.title }}</a></li>{% endfor -%}
</ul></nav>
</header>
{% for s in sections %}{{ s.html() }}
{% endfor %}</main>
</body>
</html>
""",
    "section.html": """<section id="{{ s.id }}" class="report-section">
<h2>{{ s.title }}</h2>
{% if s.intro %}<p class="intro">{{ s.intro }}</p>
{% endif %}{% for block in s.blocks %}{{ block }}
{% endfor %}</section>""",
    "table.html": """<div class="table-wrap{% if cls %} {{ cls }}{% endif %}"><table>
{%- if caption %}<caption>{{ caption }}</caption>{% endif -%}
<thead><tr>{% for h in headers %}<th scope="col"{% if loop.index0 >= numeric_from %} class="num"{% endif %}>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in rows %}<tr>{% for cell in row %}{% if loop.first %}<th scope="row"{{ cell.cls }}>{{ cell.text }}</th>{% else %}<td{{ cell.cls }}>{{ cell.text }}</td>{% endif %}{% endfor %}</tr>{% endfor %}</tbody></table></div>""",
    "figure.html": """<figure class="plot"><picture>
{%- if narrow %}<source media="(max-width: {{ narrow_max }}px)" srcset="{{ narrow.data_uri() }}">{% endif -%}
<img src="{{ plot.data_uri() }}" alt="{{ plot.alt }}" title="{{ plot.title }}" decoding="sync" loading="lazy" style="max-width: {{ plot.width_px }}px" data-text-outside="{{ plot.text_outside | length + (narrow.text_outside | length if narrow else 0) }}"></picture>
<figcaption><strong>{{ plot.title }}.</strong> <span class="provenance">Produced by: {{ plot.provenance }}</span></figcaption></figure>""",
    "note.html": """<p class="{{ cls }}"{% if cls == 'absent' %} role="note"{% endif %}>{% if cls == 'absent' %}<strong>Absent:</strong> {% endif %}{{ text }}</p>""",
}
