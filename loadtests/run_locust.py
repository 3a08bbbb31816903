#!/usr/bin/env python3
"""Run loadtests/locustfile.py headless for N seconds and judge the result.

    python loadtests/run_locust.py --host http://127.0.0.1:8000 --seconds 10 --users 20 --p99-ms 50

Prints p50/p95/p99, throughput and failures (overall and per request name)
and exits non-zero when there is any failure, when no request was made, or
when the overall p99 is above ``--p99-ms``.  ``--json PATH`` writes the
summary.  Pass-through env for the locustfile: WARMSLOT_PIPELINE,
WARMSLOT_ASYNC_SHARE, ... (see the locustfile's docstring).
"""

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LOCUSTFILE = os.path.join(HERE, "locustfile.py")


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def read_stats(prefix: str) -> dict:
    rows = {}
    with open(prefix + "_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = "Aggregated" if row["Name"] == "Aggregated" else f"{row['Type']} {row['Name']}".strip()
            rows[name] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p50_ms": _num(row.get("50%")),
                "p95_ms": _num(row.get("95%")),
                "p99_ms": _num(row.get("99%")),
                "max_ms": _num(row.get("Max Response Time")),
                "rps": _num(row.get("Requests/s")),
            }
    return rows


def read_failures(prefix: str) -> list:
    path = prefix + "_failures.csv"
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [
            {"method": r["Method"], "name": r["Name"], "error": r["Error"], "count": int(r["Occurrences"])}
            for r in csv.DictReader(f)
        ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--spawn-rate", type=float, help="users started per second (default: all in 1 s)")
    ap.add_argument("--p99-ms", type=float, help="fail when the overall p99 is above this")
    ap.add_argument("--locustfile", default=LOCUSTFILE)
    ap.add_argument("--json", metavar="PATH", help="write the summary as JSON")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="locust-") as tmp:
        prefix = os.path.join(tmp, "run")
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            args.locustfile,
            "--headless",
            "--host",
            args.host,
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate or args.users),
            "-t",
            f"{max(1, round(args.seconds))}s",
            "--stop-timeout",
            "5",
            "--csv",
            prefix,
            "--only-summary",
            "--loglevel",
            "WARNING",
            "--exit-code-on-error",
            "0",
        ]
        print("$", " ".join(cmd), flush=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=args.seconds + 60)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        if proc.returncode not in (0, 1) or not os.path.exists(prefix + "_stats.csv"):
            print(out)
            print(f"locust did not complete (rc={proc.returncode})", file=sys.stderr)
            return 2
        stats = read_stats(prefix)
        failures = read_failures(prefix)

    agg = stats.get("Aggregated", {"requests": 0, "failures": 0})
    print(f"{'request':48} {'reqs':>8} {'fails':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>9}")
    for name, s in stats.items():

        def f(v):
            return "-" if v is None else f"{v:.0f}"

        print(
            f"{name[:48]:48} {s['requests']:>8} {s['failures']:>6} {f(s['p50_ms']):>8} {f(s['p95_ms']):>8} "
            f"{f(s['p99_ms']):>8} {s['rps'] or 0:>9.1f}"
        )
    for fl in failures:
        print(f"FAILURE x{fl['count']}: {fl['method']} {fl['name']}: {fl['error']}")

    problems = []
    if agg["requests"] == 0:
        problems.append("no request was made")
    if agg["failures"]:
        problems.append(f"{agg['failures']} failed requests")
    if args.p99_ms is not None and (agg.get("p99_ms") is None or agg["p99_ms"] > args.p99_ms):
        problems.append(f"p99 {agg.get('p99_ms')} ms > {args.p99_ms} ms")
    print(
        f"\nsummary: requests={agg['requests']} failures={agg['failures']} "
        f"throughput={agg.get('rps') or 0:.1f} req/s p50={agg.get('p50_ms')} ms "
        f"p95={agg.get('p95_ms')} ms p99={agg.get('p99_ms')} ms"
    )
    summary = {
        "host": args.host,
        "seconds": args.seconds,
        "users": args.users,
        "p99_ms_limit": args.p99_ms,
        "aggregated": agg,
        "by_name": stats,
        "failures": failures,
        "problems": problems,
        "ok": not problems,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    if problems:
        print("FAIL: " + "; ".join(problems))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
