"""``report.html`` in a real browser: headless Chromium (Debian's ``chromium``, which ``.ci/run``
installs) renders it with no console message, every figure and table is in the rendered page, and
the screenshot is not blank. Skipped where no Chromium is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from moesim.bench.html import manifest
from moesim.bench.report import build_report
from sweep_helpers import format_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]
# Chromium logs every console message (log, warning, error, an uncaught exception) on stderr as
# "...:CONSOLE:<line>] "<message>", source: <url>"; the report has no script, so there must be none.
CONSOLE = re.compile(r":CONSOLE(?:\(|:)\d+\)?\]")


def chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # a fresh profile per run
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE.search(line)]


def test_the_console_check_sees_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                   '<script>console.error("boom"); notDefined();</script></body></html>')
    done = chromium(bad, tmp_path, "--dump-dom")
    found = console_messages(done.stderr)
    assert any("boom" in m for m in found) and any("notDefined" in m for m in found), done.stderr[-2000:]


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    res = build_report(format_sweep(tmp_path / "sweep"), tmp_path / "out", curves=False)
    page = res["html"]
    want = manifest(res["sections"])
    assert len(want["figures"]) >= 3 and len(want["tables"]) >= 3

    dom = chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not console_messages(dom.stderr), console_messages(dom.stderr)
    for fig_id in want["figures"]:  # each figure is in the page, with its drawing inline
        m = re.search(rf'<figure id="{fig_id}">(.*?)</figure>', dom.stdout, re.S)
        assert m and "<svg" in m.group(1) and "<path" in m.group(1), fig_id
    for table_id in want["tables"]:
        m = re.search(rf'<table[^>]*id="{table_id}"[^>]*>(.*?)</table>', dom.stdout, re.S)
        assert m and m.group(1).count("<tr") >= 2, table_id

    shot = tmp_path / "shot.png"
    done = chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    assert not console_messages(done.stderr)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, lines and markers, not a blank page
