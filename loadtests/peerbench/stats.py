"""The figures: server CPU time per request (from /proc), low medians over rounds, and the
per-round ratios between systems with their min and max."""

from __future__ import annotations

import os
import statistics
from typing import Any, Callable, Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_cpu_ticks(pgids: set) -> int:
    """utime+stime (all threads) plus cutime+cstime (reaped children) of every live process whose
    process group is in ``pgids``, in clock ticks."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:  # exited meanwhile
            continue
        # the command name may hold spaces and parentheses: fields start after the last ")"
        fields = data[data.rindex(b")") + 2 :].split()
        # fields[0] is field 3 (state): pgrp is field 5, utime..cstime are fields 14..17
        if int(fields[2]) in pgids:
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total


def low_median(values: list) -> Any:
    """The low median: with an even count, the lower middle value, so the result is always one of
    the values (two runs of a bimodal system are never blended into a figure neither produced)."""
    values = [v for v in values if v is not None]
    return statistics.median_low(values) if values else None


def measure_cpu(pgids: set, fn: Callable[[], dict]) -> dict:
    before = group_cpu_ticks(pgids)
    data = fn()
    data["server_cpu_us"] = round((group_cpu_ticks(pgids) - before) * 1e6 / CLK_TCK)
    done = data.get("requests") or 0
    data["cpu_us_per_request"] = round(data["server_cpu_us"] / done, 1) if done else None
    return data


def summarize(entry: dict) -> None:
    """The system's figures: low medians over its valid rounds."""
    ok = [r for r in entry["rounds"] if r.get("status") == "ok"]
    valid = [r for r in ok if r.get("valid")]
    entry["invalid_replies"] = sum(r.get("invalid_replies", 0) for r in ok)
    entry["socket_errors"] = sum(r.get("socket_errors", 0) for r in ok)
    entry["valid_rounds"] = len(valid)
    for key in ("rps_64", "cpu_us_per_request", "p50_c1_us", "p95_c1_us", "p99_c1_us"):
        entry[key] = low_median([r.get(key) for r in valid])
    if not ok:
        entry["status"] = "failed"
        entry["error"] = next((r["error"] for r in entry["rounds"] if r.get("error")), "no run")
    elif not valid:
        entry["status"] = "invalid"
        entry["error"] = "every run had invalid replies or socket errors: " + str(
            next((r.get("first_invalid_reply") for r in ok if r.get("first_invalid_reply")), "")
        )
    else:
        entry["status"] = "ok"
    ol = entry.get("open_loop") or {}
    entry["slo_capacity_rps"] = ol.get("slo_capacity_rps")
    entry["open_loop_knee_rps"] = ol.get("knee_rps")
    half = [p for p in ol.get("points", []) if "p99_us" in p and p["fraction"] <= 0.5]
    tail = half[-1] if half else None
    entry["open_loop_half"] = (
        None if tail is None else {k: tail[k] for k in ("fraction", "rate", "p50_us", "p99_us", "p999_us") if k in tail}
    )


def pair_ratios(a: dict, b: dict, key: str) -> Optional[dict]:
    """Per-round ratios a/b of ``key`` over the rounds where both runs are valid."""
    vals = []
    for ra, rb in zip(a["rounds"], b["rounds"]):
        if ra.get("valid") and rb.get("valid") and ra.get(key) and rb.get(key):
            vals.append(ra[key] / rb[key])
    if not vals:
        return None
    return {
        "median": round(low_median(vals), 3),
        "min": round(min(vals), 3),
        "max": round(max(vals), 3),
        "pairs": len(vals),
        "values": [round(v, 3) for v in vals],
    }


def all_ratios(entries: list) -> list:
    out = []
    for a in entries:
        if not a["name"].startswith("warmslot"):
            continue
        for b in entries:
            if b["name"].startswith("warmslot"):
                continue
            r = {"system": a["name"], "peer": b["name"]}
            for key in ("rps_64", "cpu_us_per_request", "p50_c1_us", "p99_c1_us"):
                r[key + "_x"] = pair_ratios(a, b, key)
            if r["rps_64_x"] is not None:
                out.append(r)
    return out
