"""The results: the markdown table with the ratios, and the JSON report."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import List, Optional

from .common import ROOT


def fmt_us(us: Optional[float]) -> str:
    if us is None:
        return "—"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.2f} ms" if us < 10_000 else f"{us / 1000:.1f} ms"
    return f"{us / 1e6:.2f} s"


def fmt_rps(rps: Optional[float]) -> str:
    return "—" if rps is None else f"{rps:,.0f}"


def fmt_x(r: Optional[dict]) -> str:
    if not r:
        return "—"
    if r["pairs"] == 1:
        return f"{r['median']:.2f}×"
    return f"{r['median']:.2f}× (min {r['min']:.2f}, max {r['max']:.2f})"


def markdown(entries: list, ratios: list, slo_ms: float) -> str:
    head = [
        "system",
        "workers",
        "cpus",
        "req/s @64 conn",
        "CPU µs/req",
        "p50 @1 conn",
        "p99 @1 conn",
        f"SLO capacity (p99 < {slo_ms:g} ms)",
        "open loop ≤50% p50 / p99 / p99.9",
        "invalid replies",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        if e["status"] == "failed":
            lines_ = [ln.strip() for ln in e.get("error", "error").splitlines() if ln.strip()]
            msg = lines_[0].rstrip(":") + (f" … {lines_[-1]}" if len(lines_) > 1 else "")
            msg = msg[:240].replace("|", "\\|")
            lines.append(f"| {e['name']} | {e['workers']} | {e['cpus']} | **failed**: {msg} |" + " |" * (len(head) - 4))
            continue
        half = e.get("open_loop_half")
        ol = "—"
        if half:
            ol = (
                f"{fmt_us(half.get('p50_us'))} / {fmt_us(half.get('p99_us'))} / {fmt_us(half.get('p999_us'))}"
                f" at {fmt_rps(half['rate'])}/s"
            )
        cap = e.get("slo_capacity_rps")
        olerr = (e.get("open_loop") or {}).get("error")
        row = [
            e["name"],
            str(e["workers"]),
            str(e["cpus"]),
            fmt_rps(e.get("rps_64")),
            "—" if e.get("cpu_us_per_request") is None else f"{e['cpu_us_per_request']:.0f}",
            fmt_us(e.get("p50_c1_us")),
            fmt_us(e.get("p99_c1_us")),
            ("error" if olerr else "none" if (e.get("open_loop") or {}).get("points") else "—")
            if cap is None
            else f"{cap:,}/s",
            ol,
            str(e.get("invalid_replies", 0)) + ("" if e["status"] == "ok" else " (**invalid**)"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    if ratios:
        lines.append("")
        lines.append(
            "Ratios, median of the per-round ratios (min, max over rounds); req/s above 1 and the others "
            "below 1 favour the first system:"
        )
        lines.append("")
        for r in ratios:
            lines.append(
                f"- {r['system']} / {r['peer']}: req/s @64 {fmt_x(r['rps_64_x'])}, "
                f"CPU per request {fmt_x(r['cpu_us_per_request_x'])}, "
                f"p50 @1 {fmt_x(r['p50_c1_us_x'])}, p99 @1 {fmt_x(r['p99_c1_us_x'])}"
            )
    notes = [f"- {e['name']}: {n}" for e in entries for n in e.get("notes", []) if "split" in n]
    if notes:
        lines += ["", "Notes:", ""] + notes
    return "\n".join(lines)


def git_commit() -> Optional[str]:
    """The checkout's commit (with ``-dirty`` when tracked files differ from it), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command_line(argv: Optional[List[str]] = None) -> str:
    """How this run was started, as a shell line (``python loadtests/bench.py ...``)."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", os.path.relpath(os.path.join(ROOT, "loadtests", "bench.py"), ROOT), *args])


def run_meta(
    args: argparse.Namespace, logdir: str, interrupted: bool, elapsed_s: float, argv: Optional[List[str]] = None
) -> dict:
    """The report's ``meta``: when (``time``, the end of the run), where, from which commit, with
    which command and options the benchmark ran."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(argv),
        "commit": git_commit(),
        "cpu_us": args.cpu_us,
        "cpu_iters": int(os.environ.get("BOT_CPU_ITERS", "0")) if args.cpu_us > 0 else 0,
        "host": platform.node(),
        "pinned": args.pin,
        "server_cores": args.server_cores,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "fractions": args.fractions,
        "slo_p99_ms": args.slo_ms,
        "open_connections": args.open_connections,
        "sample_every": args.sample_every,
        "quick": args.quick,
        "logs": logdir,
        "interrupted": interrupted,
        "elapsed_s": elapsed_s,
    }


def json_report(meta: dict, versions: dict, entries: list, ratios: list, table: str) -> dict:
    """What ``--json`` writes."""
    return {
        "meta": meta,
        "versions": versions,
        "systems": entries,
        "ratios": ratios,
        "table_markdown": table,
    }
