"""Store benchmark: the counter bot (``bots/counter_bot.py``, 64 users, 2 slots) on the memory
store against SQLite, sync and async (``Prefer: respond-async``), rounds interleaved so that a
noisy machine hits every store alike.

    python loadtests/store_bench.py                      # 2 rounds, 5 s per figure
    python loadtests/store_bench.py --isolation process --rounds 3 --duration 10

Prints, per round, each store's 2xx/s at 64 connections (``wrk -t1 -c64``) and the server's CPU
time per request, then SQLite's ratio to memory. Any reply outside 2xx fails the run. Needs
``wrk`` and warmslot installed (release build for figures worth reading).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BOT = os.path.join(HERE, "bots", "counter_bot.py") + ":app"
LUA = os.path.join(HERE, "wrk", "counter.lua")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of `pid` and its live descendants."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{p}/task"):  # children of every thread (slots spawn workers)
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pending.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return total


def start(store: str, isolation: str, tmp: str) -> tuple:
    port = free_port()
    env = dict(os.environ, WARMSLOT_SLOTS="2", WARMSLOT_ISOLATION=isolation)
    if store == "sqlite":
        path = os.path.join(tmp, f"state-{port}.db")
        env["WARMSLOT_STATE"] = f"sqlite:///{path}"
    else:
        env["WARMSLOT_STATE"] = store
    cmd = [sys.executable, "-m", "warmslot", "run", BOT, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode(errors="replace")[-1000:] if proc.stderr else ""
            raise SystemExit(f"warmslot ({store}) did not start: {err}")
        time.sleep(0.05)


def wrk(port: int, duration: float, mode: str) -> dict:
    cmd = [
        "wrk",
        "-t1",
        "-c64",
        f"-d{duration:g}s",
        "-s",
        LUA,
        f"http://127.0.0.1:{port}/hooks/count",
        "--",
        "64",
        mode,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    return json.loads(line[len("WRKJSON ") :])


def measure(store: str, mode: str, isolation: str, duration: float, tmp: str) -> dict:
    proc, port = start(store, isolation, tmp)
    try:
        wrk(port, 1, mode)  # warm-up
        cpu0 = tree_cpu_seconds(proc.pid)
        r = wrk(port, duration, mode)
        cpu = tree_cpu_seconds(proc.pid) - cpu0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if r["bad"]:
        raise SystemExit(f"{store} {mode}: {r['bad']} replies outside 2xx")
    ok = r["requests"] - r["bad"]
    return {"rps": ok / r["seconds"], "cpu_us": cpu * 1e6 / max(ok, 1), "p50_us": r["p50_us"], "p99_us": r["p99_us"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--isolation", choices=["thread", "process"], default="thread")
    ap.add_argument("--stores", default="memory,sqlite")
    ap.add_argument("--modes", default="sync,async")
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found (apt-get install -y wrk)")
    stores, modes = args.stores.split(","), args.modes.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for mode in modes:
                row = {}
                for store in stores:
                    row[store] = measure(store, mode, args.isolation, args.duration, tmp)
                    m = row[store]
                    print(
                        f"round {rnd + 1} {mode:5} {store:7} {m['rps']:9.0f} 2xx/s  {m['cpu_us']:6.1f} µs CPU/req"
                        f"  p50 {m['p50_us'] / 1000:.2f} ms  p99 {m['p99_us'] / 1000:.2f} ms",
                        flush=True,
                    )
                base = row.get("memory")
                for store in stores:
                    if base and store != "memory":
                        print(f"round {rnd + 1} {mode:5} {store} / memory: {row[store]['rps'] / base['rps']:.2f}x")
                results.append({"round": rnd + 1, "mode": mode, "isolation": args.isolation, **row})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
