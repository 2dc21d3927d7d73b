"""Screenshot the top of a deltalens report in headless Chromium and time its load.

    python scripts/report_screenshot.py docs/example-report.html --out docs/example-report-top.png

Uses the DevTools-over-pipe driver of the report's browser tests (``tests/report/browser.py``,
standard library only), blocks every request but the page itself and its ``data:`` images, and
prints the page's size, the time from navigation to the load event at each width, and any console
error. Exits non-zero when the page logged an error or tried to load anything. With ``--cold`` each
timed load is a first open: a new browser with a fresh profile (empty caches) per load, and the
time from starting the browser to the load event is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.report.browser import Chromium, find_chromium  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path, help="the report HTML file")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write (the top of the page)")
    ap.add_argument("--width", type=int, default=1280, help="viewport width in CSS px (default 1280)")
    ap.add_argument("--height", type=int, default=1000, help="viewport height, the part shot (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="loads timed per width (default 3)")
    ap.add_argument("--cold", action="store_true", help="a new browser and profile for every timed load")
    args = ap.parse_args(argv)
    exe = find_chromium()
    if exe is None:
        print("report_screenshot: chromium is not installed (scripts/install-system-deps.sh)", file=sys.stderr)
        return 2
    if not args.page.is_file():
        print(f"report_screenshot: {args.page}: not a file", file=sys.stderr)
        return 2
    print(f"{args.page}: {args.page.stat().st_size / 1e6:.2f} MB")
    bad = False
    warm = None if args.cold else Chromium(exe)
    try:
        for width, mobile in ((args.width, False), (390, True)):
            times, starts = [], []
            for _ in range(args.repeat):
                started = time.monotonic()
                browser = warm or Chromium(exe)
                try:
                    load = browser.load(args.page, width=width, height=args.height, mobile=mobile, full_page=False)
                finally:
                    if warm is None:
                        browser.close()
                times.append(load.load_seconds)
                starts.append(load.navigated_at + load.load_seconds - started)
                bad = bad or bool(load.errors or load.blocked)
            cold = f"; from browser start {', '.join(f'{t:.2f}' for t in starts)} s" if args.cold else ""
            print(f"width {width} px{' (cold)' if args.cold else ''}: load event after "
                  f"{', '.join(f'{t:.2f}' for t in times)} s (median {statistics.median(times):.2f} s){cold}; "
                  f"errors {load.errors or 'none'}; blocked {load.blocked or 'none'}")
            if width == args.width:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_bytes(load.screenshot)
                print(f"wrote {args.out} ({len(load.screenshot) / 1e3:.0f} kB, {width}×{args.height} px)")
    finally:
        if warm is not None:
            warm.close()
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
