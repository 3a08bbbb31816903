"""`GET /dashboard` in a real browser: headless Chromium loads the page while load runs, and every
pipeline's charts hold drawn SVG polylines whose data moves between two loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from html.parser import HTMLParser
from typing import Dict, List, Optional

import pytest
import warmslot
from conftest import Client

CHARTS = ("latency", "throughput", "slots", "cold_starts", "queue")
PIPELINES = ("echo", "support")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: ``WARMSLOT_WRITE_SCREENSHOT=1`` makes this test write the docs' screenshot and its caption's data
#: (``docs/dashboard.json``: when, from which commit, how); ``WARMSLOT_SCREENSHOT=PATH`` writes a
#: screenshot to PATH only. Without either, the test writes nothing outside its temp dir.
DOCS_SHOT = os.path.join(ROOT, "docs", "dashboard.png")
SCREENSHOT_AFTER_S = 30.0
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs Debian's chromium)")


def screenshot_path() -> Optional[str]:
    if os.environ.get("WARMSLOT_WRITE_SCREENSHOT") == "1":
        return DOCS_SHOT
    return os.environ.get("WARMSLOT_SCREENSHOT") or None


def write_screenshot_meta() -> None:
    """``docs/dashboard.json``, which ``scripts/gen_docs.py`` turns into the screenshot's caption."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "rust", "pylib"], cwd=ROOT).returncode == 1
    meta = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": head.stdout.strip() + ("-dirty" if dirty else "") if head.returncode == 0 else None,
        "command": "WARMSLOT_WRITE_SCREENSHOT=1 python -m pytest tests/test_dashboard.py",
        "what": (
            f"the test's two pipelines under one client's steady load, {SCREENSHOT_AFTER_S:.0f} s after the test's "
            "checks: echo (2 slots, keyed by user) and support (1-4 slots, sleeps 0-4 ms, every 17th event "
            "raises, so its errors line is not flat)"
        ),
    }
    with open(os.path.join(ROOT, "docs", "dashboard.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


class Dashboard(HTMLParser):
    """What the rendered DOM holds: per pipeline, its section's data attributes and, per chart,
    the point lists of its polylines."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: Dict[str, Dict[str, str]] = {}
        self.charts: Dict[str, Dict[str, Dict[str, List[List[float]]]]] = {}
        self.zero_y: Dict[str, Dict[str, float]] = {}
        self.pipeline = self.chart = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-pipeline" in a:
            self.pipeline = a["data-pipeline"]
            self.sections[self.pipeline] = a
            self.charts[self.pipeline] = {}
        elif tag == "figure" and "data-chart" in a and self.pipeline:
            self.chart = a["data-chart"]
            self.charts[self.pipeline][self.chart] = {}
        elif tag == "line" and a.get("class") == "grid" and self.pipeline and self.chart:
            # The first grid line of a chart is its zero.
            self.zero_y.setdefault(self.pipeline, {}).setdefault(self.chart, float(a["y1"]))
        elif tag == "polyline" and self.pipeline and self.chart:
            points = [[float(v) for v in p.split(",")] for p in (a.get("points") or "").split()]
            self.charts[self.pipeline][self.chart][a.get("data-series", "")] = points


def load_dashboard(url: str, tmp_path, name: str) -> Dashboard:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / name}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = Dashboard()
    page.feed(proc.stdout)
    return page


def test_dashboard_draws_every_pipeline_in_headless_chromium(serve, tmp_path):
    app = warmslot.App()

    @app.pipeline("echo", key="user", slots=2)
    def echo(event, ctx):
        return {"reply": event["text"]}

    @app.pipeline("support", min_slots=1, max_slots=4)
    def support(event, ctx):
        time.sleep(0.001 * (event["i"] % 5))
        if event["i"] % 17 == 0:
            raise ValueError("an error for the errors chart")
        return {}

    server, c = serve(app)
    stop = threading.Event()

    def drive() -> None:
        with Client(server.host, server.port) as own:
            i = 0
            while not stop.is_set():
                i += 1
                for p in PIPELINES:
                    own.post(p, {"user": f"u{i % 5}", "text": "hi", "i": i})
                time.sleep(0.002)

    def seconds_with_completions() -> Dict[str, int]:
        stats = c.get("/stats")[2]["pipelines"]
        return {p: sum(1 for s in stats[p]["series"] if s["completed"]) for p in PIPELINES}

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        deadline = time.monotonic() + 20
        while min(seconds_with_completions().values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert min(seconds_with_completions().values()) >= 2

        first = load_dashboard(f"{server.url}/dashboard", tmp_path, "first")
        assert set(first.sections) == set(PIPELINES)
        for p in PIPELINES:
            assert int(first.sections[p]["data-samples"]) >= 2
            assert int(first.sections[p]["data-completed"]) > 0
            assert set(first.charts[p]) == set(CHARTS), first.charts[p].keys()
            for chart, series in first.charts[p].items():
                assert series, f"{p}/{chart} has no polyline"
                for key, points in series.items():
                    assert len(points) >= 2, f"{p}/{chart}/{key}: {points}"
            latency = first.charts[p]["latency"]
            assert set(latency) == {"p50_ms", "p95_ms", "p99_ms"}
            # Drawn from data, not flat at zero: some p99 point sits above the zero line.
            assert any(y < first.zero_y[p]["latency"] for _, y in latency["p99_ms"])

        # Wait for a newer second, then load again: the page shows the new data.
        last = max(int(first.sections[p]["data-last-t"]) for p in PIPELINES)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = c.get(f"/stats?since={last}")[2]["pipelines"]
            if all(any(s["completed"] for s in stats[p]["series"]) for p in PIPELINES):
                break
            time.sleep(0.1)
        second = load_dashboard(f"{server.url}/dashboard", tmp_path, "second")
        for p in PIPELINES:
            assert int(second.sections[p]["data-last-t"]) > int(first.sections[p]["data-last-t"])
            assert second.sections[p]["data-completed"] != first.sections[p]["data-completed"]
            assert second.charts[p]["throughput"]["completed"] != first.charts[p]["throughput"]["completed"]
        shot = screenshot_path()
        if shot:
            time.sleep(SCREENSHOT_AFTER_S)  # the load goes on: the charts fill up
            subprocess.run(
                [
                    CHROMIUM,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'shot'}",
                    "--window-size=1400,1000",
                    "--virtual-time-budget=5000",
                    f"--screenshot={shot}",
                    f"{server.url}/dashboard",
                ],
                capture_output=True,
                timeout=90,
                check=True,
            )
            if shot == DOCS_SHOT:
                write_screenshot_meta()
    finally:
        stop.set()
        driver.join()
