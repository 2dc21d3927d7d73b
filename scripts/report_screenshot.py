"""Screenshot the top of a deltalens report in headless Chromium and time its load.

    python scripts/report_screenshot.py docs/example-report.html --out docs/example-report-top.png

Uses the DevTools-over-pipe driver of the report's browser tests (``tests/report/browser.py``,
standard library only), blocks every request but the page itself and its ``data:`` images, and
prints the page's size, the time from navigation to the load event at each width, and any console
error. Exits non-zero when the page logged an error or tried to load anything.
"""

from __future__ import annotations

import argparse
import sys
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
    with Chromium(exe) as browser:
        for width, mobile in ((args.width, False), (390, True)):
            times = []
            for _ in range(args.repeat):
                load = browser.load(args.page, width=width, height=args.height, mobile=mobile, full_page=False)
                times.append(load.load_seconds)
                bad = bad or bool(load.errors or load.blocked)
            print(f"width {width} px: load event after {', '.join(f'{t:.2f}' for t in times)} s "
                  f"(min {min(times):.2f} s); errors {load.errors or 'none'}; blocked {load.blocked or 'none'}")
            if width == args.width:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_bytes(load.screenshot)
                print(f"wrote {args.out} ({len(load.screenshot) / 1e3:.0f} kB, {width}×{args.height} px)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
