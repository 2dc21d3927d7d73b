"""The report as a user sees it: opened in headless Chromium at desktop and phone width.

Checks, at 1280 px and 390 px: no console errors, exceptions or error log entries; no request
other than the page itself and its inline ``data:`` images (the DevTools ``Fetch`` domain fails
anything else and the test fails if anything tried); every image decoded with non-zero size;
every section present, the answer first; every figure no wider than its column, with no text
drawn past its edge and no absolute path in its title; no sideways scrolling of the page.
Screenshots are written to the test's tmp dir, or to ``$DELTALENS_SCREENSHOT_DIR`` when set, for a person to look at.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from deltalens.report import SECTION_IDS, build_report
from deltalens.report.html import EAGER_FIGURES
from tests.report.browser import Chromium, find_chromium
from tests.report.fixtures import passk_doc, write_json

MEASURE = """(async () => {
  // every figure, the lazily loaded ones too: load and decode it before measuring
  const atLoad = [...document.images].map(i => ({loading: i.getAttribute('loading'), complete: i.complete}));
  await Promise.all([...document.images].map(i => { i.loading = 'eager'; return i.decode().catch(() => null); }));
  const imgs = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    const col = (i.closest('figure') || i.parentElement).parentElement.getBoundingClientRect();
    return {alt: i.alt, title: i.title, complete: i.complete, nw: i.naturalWidth, nh: i.naturalHeight,
            w: r.width, h: r.height, scheme: i.src.split(':')[0], colW: col.width,
            outside: i.dataset.textOutside};
  });
  const sections = [...document.querySelectorAll('section.report-section')].map(s => {
    const r = s.getBoundingClientRect();
    return {id: s.id, h: r.height, heading: (s.querySelector('h2') || {}).textContent};
  });
  const captions = [...document.querySelectorAll('figure.plot figcaption')].map(c => c.textContent);
  const wide = [...document.querySelectorAll('main *')].filter(e => {
    if (e.closest('.table-wrap')) return false;
    const r = e.getBoundingClientRect();
    return r.right > document.documentElement.clientWidth + 1;
  }).map(e => e.tagName + '.' + e.className);
  const fonts = [...document.querySelectorAll('p, td, th, figcaption')].map(e => parseFloat(getComputedStyle(e).fontSize));
  return {imgs, atLoad, sections, captions, wide, minFont: Math.min(...fonts),
          scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
          absent: document.querySelectorAll('p.absent').length, title: document.title};
})()"""


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs Debian's package)")
    with Chromium(exe) as browser:
        yield browser


@pytest.fixture(scope="module")
def full_report(lab_report) -> Path:
    return lab_report[1]


def _shot_dir(tmp: Path) -> Path:
    out = Path(os.environ.get("DELTALENS_SCREENSHOT_DIR", tmp))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_clean_load(load, page: Path) -> None:
    assert load.errors == [], load.errors
    assert load.blocked == [], f"the page tried to load {load.blocked}"
    outside = [u for u in load.requests if u != page.resolve().as_uri() and not u.startswith("data:")]
    assert outside == [], outside
    assert load.failed == [], load.failed


@pytest.mark.parametrize("width,mobile", [(1280, False), (390, True)])
def test_full_report_renders_cleanly(chromium, full_report, tmp_path, width, mobile):
    load = chromium.load(full_report, width=width, mobile=mobile, measure_js=MEASURE)
    shot = _shot_dir(tmp_path) / f"report-{width}.png"
    shot.write_bytes(load.screenshot)
    _check_clean_load(load, full_report)
    m = load.measurements
    assert [s["id"] for s in m["sections"]] == list(SECTION_IDS)
    assert all(s["h"] > 0 and s["heading"] for s in m["sections"])
    # every plot: decoded (natural size) and laid out (rendered size), with alt text and a data: source
    assert len(m["imgs"]) >= 10
    # the first figures count in the load event, the rest load lazily (a cold open stays under 2 s)
    assert [i["loading"] for i in m["atLoad"]] == ["eager"] * EAGER_FIGURES + ["lazy"] * (len(m["imgs"]) - EAGER_FIGURES)
    assert all(i["complete"] for i in m["atLoad"][:EAGER_FIGURES])
    for img in m["imgs"]:
        assert img["complete"] and img["nw"] > 0 and img["nh"] > 0, img["title"]
        assert img["w"] > 0 and img["h"] > 0, img["title"]
        assert img["w"] <= m["clientWidth"], img["title"]
        assert len(img["alt"]) > 40 and img["title"], img
        assert img["scheme"] == "data"
        # no figure wider than its column, no text drawn past the figure's edge, no machine paths in titles
        assert img["w"] <= img["colW"] + 0.5, img["title"]
        assert img["outside"] == "0", img["title"]
        assert not re.search(r"(^|\s)/[\w.-]+/", img["title"]), img["title"]
    assert m["sections"][0]["id"] == "answer"
    assert all("Produced by:" in c for c in m["captions"]) and len(m["captions"]) == len(m["imgs"])
    # readable at this width: no sideways page scroll (wide tables scroll inside their own box)
    assert m["scrollWidth"] <= m["clientWidth"], m["wide"]
    assert m["wide"] == []
    assert m["minFont"] >= 11
    assert len(load.screenshot) > 10_000 and load.screenshot[:8] == b"\x89PNG\r\n\x1a\n"


def test_partial_report_says_what_is_absent(chromium, tmp_path):
    run = tmp_path / "only-passk"
    write_json(run / "passk.json", passk_doc("rl"))
    page = build_report([run], tmp_path / "partial.html")
    load = chromium.load(page, width=390, mobile=True, measure_js=MEASURE)
    (_shot_dir(tmp_path) / "partial-390.png").write_bytes(load.screenshot)
    _check_clean_load(load, page)
    m = load.measurements
    assert [s["id"] for s in m["sections"]] == list(SECTION_IDS)
    assert m["absent"] >= 6  # answer (no claims), diff, support, divergence, kernel, tracking, claims
    assert len(m["imgs"]) == 3 and all(i["nw"] > 0 for i in m["imgs"])  # pass@k and pass@1 gain first, then pass@k


def test_an_outside_request_would_be_caught(chromium, tmp_path):
    """The harness can fail: a page that references the network is blocked and reported."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body>'
                    '<img src="http://example.invalid/a.png" alt="x"><script>console.error("boom")</script></body></html>')
    load = chromium.load(page, width=390, measure_js="({})")
    assert "http://example.invalid/a.png" in load.blocked
    assert any("boom" in e for e in load.errors)
