#!/usr/bin/env python3
"""Writes the generated parts of README.md and the docs from committed data, between markers.

    python scripts/gen_docs.py            # rewrite the blocks
    python scripts/gen_docs.py --check    # exit 1 (and print a diff) when a block is not current

Blocks (each between ``<!-- BEGIN generated:NAME ... -->`` and ``<!-- END generated:NAME -->``):

- ``bench-summary`` in README.md and ``bench-full`` in docs/performance.md: the benchmark run of
  ``docs/bench.json`` (written by ``python loadtests/bench.py --json docs/bench.json --plot
  docs/bench.png``): its command, date, commit, machine and versions, the figures per system and
  the ratios of each warmslot variant to its peers, median of the per-round ratios with min and max;
- ``dashboard-caption`` in docs/metrics.md: the caption of ``docs/dashboard.png`` from
  ``docs/dashboard.json`` (both written by ``WARMSLOT_WRITE_SCREENSHOT=1 python -m pytest
  tests/test_dashboard.py``).

Nothing here is typed by hand: change the data (rerun the benchmark or the test), then rerun this.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "loadtests"))
# The figures read as in the benchmark's own table.
from peerbench.report import fmt_rps, fmt_us  # noqa: E402

BENCH_JSON = os.path.join(ROOT, "docs", "bench.json")
DASHBOARD_JSON = os.path.join(ROOT, "docs", "dashboard.json")
#: The peer every warmslot variant is compared with in the README.
BASELINE = "uvicorn"
#: Peers' versions named in the header, in this order.
VERSIONS = ("uvicorn", "granian", "fastapi", "celery", "nginx", "redis", "wrk", "oha")
METRICS = (
    ("rps_64_x", "req/s, 64 conn"),
    ("cpu_us_per_request_x", "CPU per request"),
    ("p50_c1_us_x", "p50, 1 conn"),
    ("p99_c1_us_x", "p99, 1 conn"),
)


def begin(name: str) -> str:
    return f"<!-- BEGIN generated:{name} (scripts/gen_docs.py writes this block; do not edit it by hand) -->"


def end(name: str) -> str:
    return f"<!-- END generated:{name} -->"


# --- formatting -------------------------------------------------------------------------------


def fmt_cpu(us: Optional[float]) -> str:
    return "—" if us is None else f"{us:,.0f}"


def fmt_ratio(r: Optional[dict]) -> str:
    """``0.76× (0.31–0.90)``: median of the per-round ratios, then min–max."""
    if not r:
        return "—"
    if r["pairs"] == 1:
        return f"{r['median']:.2f}× (1 round)"
    return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"


def version_number(text: Optional[str]) -> str:
    """``nginx version: nginx/1.22.1`` → ``1.22.1``; the text itself when it holds no number."""
    if not text:
        return "?"
    m = re.search(r"\d+\.\d+(?:\.\d+)?", str(text))
    return m.group(0) if m else str(text)


def utc(stamp: str) -> str:
    """``2026-12-02T04:28:05+0000`` → ``2026-12-02 04:28 UTC``."""
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            t = datetime.strptime(stamp.replace("Z", "+0000"), fmt)
            return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        except ValueError:
            continue
    return stamp


def short(commit: Optional[str]) -> str:
    if not commit:
        return "unknown"
    dirty = commit.endswith("-dirty")
    return commit[:7] + (" with uncommitted changes" if dirty else "")


# --- the benchmark ----------------------------------------------------------------------------


def ratio(data: dict, system: str, peer: str) -> Optional[dict]:
    return next((r for r in data["ratios"] if r["system"] == system and r["peer"] == peer), None)


def round_spread(data: dict) -> Tuple[float, str]:
    """The largest max/min of one system's req/s over its valid rounds, and that system."""
    worst = (1.0, "")
    for s in data["systems"]:
        vals = [r["rps_64"] for r in s.get("rounds", []) if r.get("rps_64") and r.get("valid", True)]
        if len(vals) > 1 and min(vals) > 0 and max(vals) / min(vals) > worst[0]:
            worst = (max(vals) / min(vals), s["name"])
    return worst


def bench_header(data: dict, brief: bool = False) -> List[str]:
    meta, v = data["meta"], data["versions"]
    bot = (
        f"the CPU-bound support bot (`--cpu-us {meta['cpu_us']:g}`, {meta['cpu_iters']:,} loop iterations per event)"
        if meta.get("cpu_us")
        else "the light support bot (≈350-byte event, the last 10 messages of its conversation as state)"
    )
    mode = "quick mode" if meta.get("quick") else "full mode"
    pin = "each server pinned to one core" if meta.get("pinned") else f"{meta['server_cores']} server cores"
    versions = ", ".join(f"{name} {version_number(v.get(name))}" for name in VERSIONS if v.get(name))
    lines = [
        f"**Run of {utc(meta['time'])}** (when it ended), commit `{short(meta.get('commit'))}`:",
        "",
        "```sh",
        meta.get("command") or "python loadtests/bench.py",
        "```",
        "",
        f"{bot.capitalize()}; {mode}: {meta['rounds']} interleaved rounds, {meta['duration_s']:g} s per figure "
        f"after {meta['warmup_s']:g} s of warm-up; {pin}, the load generators on the same machine. "
        f'Machine, as the JSON records it: {v.get("cpus", "?")} CPUs, CPU model "{v.get("cpu_model", "?")}", '
        f"Linux {v.get('kernel', '?')}, CPython {v.get('python', '?')}, warmslot {v.get('warmslot', '?')}; "
        f"{versions}.",
    ]
    if meta.get("recorded_later") and brief:
        lines += ["", "This run did not record its command and commit; both were filled in later from the git history."]
    elif meta.get("recorded_later"):
        lines += ["", f"(The JSON says: {meta['recorded_later']}.)"]
    spread, who = round_spread(data)
    if spread >= 1.5:
        lines += [
            "",
            f"The machine was noisy during this run: one system's rounds differ by up to {spread:.1f}× "
            f"({who}). Read each ratio with its min and max.",
        ]
    return lines


def workers(s: dict) -> str:
    if s["name"] == "warmslot-process":
        return f"1 process, {s['workers']} worker processes"
    if s["name"].startswith("warmslot"):
        return "1 process"
    return str(s["workers"])


def bench_summary(data: dict) -> str:
    """README.md: one table, each warmslot variant against `BASELINE`."""
    lines = bench_header(data, brief=True)
    lines += [
        "",
        f"| system | processes | req/s, 64 conn | server CPU µs/req | p50 / p99, 1 conn "
        f"| ÷ {BASELINE}: req/s | ÷ {BASELINE}: CPU/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in data["systems"]:
        r = ratio(data, s["name"], BASELINE)
        cpu = s.get("cpu_us_per_request")
        lines.append(
            f"| {s['name']} | {workers(s)} | {fmt_rps(s.get('rps_64'))} | {fmt_cpu(cpu)} "
            f"| {fmt_us(s.get('p50_c1_us'))} / {fmt_us(s.get('p99_c1_us'))} "
            + (
                "| 1 (the baseline) | 1 (the baseline) |"
                if s["name"] == BASELINE
                else f"| {fmt_ratio(r and r['rps_64_x'])} | {fmt_ratio(r and r['cpu_us_per_request_x'])} |"
            )
        )
    lines += [
        "",
        "Figures: each system's low median over its rounds. Ratios: median of the per-round ratios, "
        "(min–max) over the rounds. All systems and ratios: [Performance](docs/performance.md).",
    ]
    return "\n".join(lines)


def bench_full(data: dict) -> str:
    """docs/performance.md: every system, every ratio, the chart."""
    meta = data["meta"]
    lines = bench_header(data)
    lines += [
        "",
        "| system | what runs | processes | req/s, 64 conn | server CPU µs/req | p50 / p99, 1 conn "
        f"| SLO capacity (p99 < {meta['slo_p99_ms']:g} ms) | valid rounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in data["systems"]:
        cpu = s.get("cpu_us_per_request")
        slo = s.get("slo_capacity_rps")
        lines.append(
            f"| {s['name']} | {s.get('label', '')} | {workers(s)} | {fmt_rps(s.get('rps_64'))} "
            f"| {fmt_cpu(cpu)} | {fmt_us(s.get('p50_c1_us'))} / {fmt_us(s.get('p99_c1_us'))} "
            f"| {'none' if slo is None else fmt_rps(slo) + '/s'} | {s.get('valid_rounds', '?')} of {meta['rounds']} |"
        )
    systems = list(dict.fromkeys(r["system"] for r in data["ratios"]))
    for system in systems:
        lines += [
            "",
            f"**{system}** against each peer: median of the per-round ratios (min–max); above 1 favours "
            f"{system} for req/s, below 1 for the others.",
            "",
            "| peer | " + " | ".join(label for _, label in METRICS) + " |",
            "|---|" + "---|" * len(METRICS),
        ]
        for r in data["ratios"]:
            if r["system"] == system:
                lines.append(f"| {r['peer']} | " + " | ".join(fmt_ratio(r.get(k)) for k, _ in METRICS) + " |")
    notes: Dict[str, List[str]] = {}
    for s in data["systems"]:
        for n in s.get("notes", []):
            if "split" in n:  # the others repeat the label
                notes.setdefault(n, []).append(s["name"])
    if notes:
        lines += ["", "Notes the benchmark records:", ""] + [f"- {', '.join(who)}: {n}" for n, who in notes.items()]
    lines += [
        "",
        "![the benchmark's chart of this run](bench.png)",
        "",
        f"*`docs/bench.png`: the chart this run drew ({utc(meta['time'])}, commit "
        f"`{short(meta.get('commit'))}`): req/s at 64 connections, server CPU per request, "
        "one-connection p50/p99, and the open-loop p99 at fractions of each system's own maximum.*",
    ]
    return "\n".join(lines)


# --- the dashboard screenshot -----------------------------------------------------------------


def dashboard_caption(meta: dict) -> str:
    return (
        "![the dashboard, drawn by headless Chromium](dashboard.png)\n\n"
        f"*`docs/dashboard.png`, written {utc(meta['time'])} from commit `{short(meta.get('commit'))}` by "
        f"`{meta['command']}`: {meta['what']}.*"
    )


# --- blocks -----------------------------------------------------------------------------------


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def blocks() -> Dict[str, Tuple[str, Callable[[], str]]]:
    """Block name → (the file it lives in, relative to the root; what it holds)."""
    return {
        "bench-summary": ("README.md", lambda: bench_summary(load(BENCH_JSON))),
        "bench-full": ("docs/performance.md", lambda: bench_full(load(BENCH_JSON))),
        "dashboard-caption": ("docs/metrics.md", lambda: dashboard_caption(load(DASHBOARD_JSON))),
    }


def render(text: str, name: str, body: str) -> str:
    """`text` with the block `name` replaced by `body`; a ValueError when its markers are missing."""
    b, e = begin(name), end(name)
    pattern = re.compile(re.escape(b) + r"\n(?:.*?\n)?" + re.escape(e), re.S)
    if not pattern.search(text):
        raise ValueError(f"no block {name!r}: the file needs the lines\n{b}\n{e}")
    return pattern.sub(lambda _: f"{b}\n{body}\n{e}", text, count=1)


def expected(path: str) -> str:
    """The file at `path` (relative to the root) with every block it holds as generated now."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    for name, (where, make) in blocks().items():
        if where == path:
            text = render(text, name, make())
    return text


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is not current")
    args = ap.parse_args(argv)
    stale = []
    for path in dict.fromkeys(where for where, _ in blocks().values()):
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            now = f.read()
        want = expected(path)
        if want == now:
            continue
        stale.append(path)
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(now.splitlines(True), want.splitlines(True), path, path))
        else:
            with open(os.path.join(ROOT, path), "w", encoding="utf-8") as f:
                f.write(want)
            print(f"rewrote the generated blocks of {path}")
    if args.check and stale:
        print(f"\nnot current: {', '.join(stale)}; run python scripts/gen_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
