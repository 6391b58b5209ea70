#!/usr/bin/env python3
"""The landing and debug pages in a real headless browser (Debian's `chromium`).

Starts `balena-exporter --demo` on a free loopback port and, as a newcomer would, lets
Chromium load `/` once the demo's own first probes are in (it probes every target at start):
the first page load must tell each fleet's story. Then probes a fleet again (cached) and loads
`/` and the failing probe's debug page. It checks what a person sees -- the DOM after the
browser parsed it, not the server's text:

- every configured target has a row with its last result in words on the first load, and each
  demo fleet tells its own story: shop-screens a rollout, kiosks a crashed proxy,
  warehouse-sensors a failed newest build, partner-all's cameras an update stuck for days; a
  success that needs attention is coloured as a warning, not as all well;
- the revoked token's row says `failure (unauthorized)` and names the auth to fix, the missing
  fleet's says `not_found`;
- a cached answer is marked `cached, N s old` (never a bare `0.000s`), a fetched one `fetched in`;
- no Rust debug text (`Fetched`, `Some(`, `Err(`), no "1 fleets";
- the debug page names the auth and says what to do.

Screenshots of both pages are written to target/screenshots/ (path printed) for a person to
look at; CI keeps them as an artifact.

Run: python3 tests/e2e/browser.py target/debug/balena-exporter   (needs chromium on PATH)
"""

import html.parser
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHOTS = os.path.join(ROOT, "target", "screenshots")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read().decode()


class Tables(html.parser.HTMLParser):
    """Every table row's cells as text, by the heading before the table."""

    def __init__(self):
        super().__init__()
        self.heading, self.in_heading, self.tables = None, False, {}
        self.row, self.cell = None, None

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self.in_heading, self.heading = True, ""
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = ""
        elif tag == "br" and self.cell is not None:
            self.cell += " | "

    def handle_endtag(self, tag):
        if tag == "h2":
            self.in_heading = False
        elif tag in ("td", "th") and self.cell is not None:
            self.row.append(" ".join(self.cell.split()))
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.tables.setdefault(self.heading, []).append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.in_heading:
            self.heading += data
        elif self.cell is not None:
            self.cell += data


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("browser.py: no chromium on PATH (apt-get install chromium)")


def browse(browser, profile, *args):
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           f"--user-data-dir={profile}", "--hide-scrollbars", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        sys.exit(f"browser.py: {' '.join(cmd)} failed: {r.stderr[-2000:]}")
    return r.stdout


def check(cond, what):
    if not cond:
        sys.exit(f"browser.py: FAILED: {what}")
    print(f"ok: {what}")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "balena-exporter")
    browser = chromium()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([binary, "--demo", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=log)
    profile = tempfile.mkdtemp(prefix="balena-exporter-chromium-")
    try:
        deadline = time.time() + 30
        while True:
            try:
                if get(f"{base}/-/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                log.seek(0)
                sys.exit(f"browser.py: the exporter did not start: {log.read().decode()[-2000:]}")
            time.sleep(0.1)
        demo_targets = ("shop-screens", "kiosks", "warehouse-sensors", "partner-all", "acme-everything",
                        "broken-token", "no-such-fleet")
        deadline = time.time() + 60
        while "not probed yet" in get(f"{base}/")[1]:
            if time.time() > deadline:
                sys.exit("browser.py: the demo's first probes did not all land within 60 s")
            time.sleep(0.2)

        dom = browse(browser, profile, "--dump-dom", f"{base}/")
        parser = Tables()
        parser.feed(dom)
        targets = {row[0]: row for row in parser.tables.get("Targets", [])[1:]}
        check(set(demo_targets) <= set(targets), f"every demo target has a row: {sorted(targets)}")
        first = {t: " ".join(targets[t]) for t in demo_targets}
        check(all("not probed yet" not in v for v in first.values()),
              "the first page load shows every target's last result")
        # Each story by a pattern of its own: a rollout under way for minutes, a crashed proxy,
        # a failed newest build, an update stuck for days.
        stories = {
            "shop-screens": r"devices updating \(the longest for \d+ min\), \d+ of 48 on the target release",
            "kiosks": r"service proxy (exited|restarting) on \d+ devices?",
            "warehouse-sensors": r"the newest build 1\.3\.0 failed",
            "partner-all": r"cameras: \d+ devices updating \(the longest for 3 days\)",
        }
        for target, story in stories.items():
            check(re.search(story, first[target]), f"{target} tells its story: {first[target]}")
            others = [p for t, p in stories.items() if t != target]
            check(not any(re.search(p, first[target]) for p in others),
                  f"{target} tells no other fleet's story")
            check(not re.search(r"service \w+ (exited|Dead|restarting)", first[target]) or target == "kiosks",
                  f"{target}: no crashed service but kiosks' proxy")
        check("devices online" in first["acme-everything"], f"the counts-only target counts online devices: {first['acme-everything']}")
        rows = dict(re.findall(r'<tr><td>([a-z-]+)</td>.*?<td class="(ok|warning|failed|none)"', dom, re.S))
        check(all(rows.get(t) == "warning" for t in stories),
              f"successes that need attention are marked as warnings: {rows}")
        broken = first["broken-token"]
        check("failure (unauthorized)" in broken and 'auth "revoked"' in broken,
              f"the revoked token's last result says why and names the auth: {broken}")
        check("not_found" in first["no-such-fleet"], "the missing fleet's last result says not_found")
        check("success: 1 fleet, " in first["kiosks"], "a fleet's last result in words (1 fleet)")

        get(f"{base}/probe?target=kiosks")
        dom = browse(browser, profile, "--dump-dom", f"{base}/")
        parser = Tables()
        parser.feed(dom)
        targets = {row[0]: row for row in parser.tables.get("Targets", [])[1:]}
        recent = parser.tables.get("Recent probes", [])[1:]
        check(any(c.startswith("cached, ") and c.endswith(" s old") for c in targets["kiosks"]),
              f"the cached answer is marked cached: {targets['kiosks']}")
        check(len(recent) == len(demo_targets) + 1, f"the demo's first probes and one more: {len(recent)}")
        check(sum(any(c.startswith("cached, ") for c in r) for r in recent) == 1
              and sum(any(c.startswith("fetched in ") for c in r) for r in recent) == len(demo_targets),
              "recent probes: one cached, the first ones fetched with their duration")
        text = " ".join(" ".join(r) for rows in parser.tables.values() for r in rows)
        for bad in ("Fetched", "Some(", "Err(", "Ok(", "1 fleets", "0.000"):
            check(bad not in text, f"no {bad!r} on the page")

        debug = browse(browser, profile, "--dump-dom", f"{base}/probe?target=broken-token&debug=true")
        check('What to do: check the token of auth "revoked"' in html.unescape(debug),
              "the debug page names the auth and says what to do")

        os.makedirs(SHOTS, exist_ok=True)
        for name, url in (("landing.png", f"{base}/"),
                          ("debug-broken-token.png", f"{base}/probe?target=broken-token&debug=true")):
            path = os.path.join(SHOTS, name)
            if os.path.exists(path):
                os.remove(path)
            browse(browser, profile, f"--screenshot={path}", "--window-size=1400,1100", url)
            with open(path, "rb") as f:
                png = f.read()
            check(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000,
                  f"screenshot {os.path.relpath(path, ROOT)} ({len(png)} bytes, 1400x1100): look at it")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)
    print("browser.py: all checks passed")


if __name__ == "__main__":
    main()
