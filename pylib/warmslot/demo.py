"""`warmslot demo`: serve the bundled bots, drive a short load, print what was measured."""

from __future__ import annotations

import http.client
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import orjson

from .app import App, Server, drain


def _payload(pipeline: str, rng: random.Random) -> bytes:
    user = f"user-{int(rng.paretovariate(1.2)) % 500}"
    if pipeline == "echo":
        return orjson.dumps({"user": user, "text": "hello " * rng.randint(1, 20)})
    if pipeline == "support":
        text = rng.choice(["I want a refund", "forgot my password", "let me talk to a human", "where is my parcel?"])
        return orjson.dumps({"conversation": f"conv-{user}", "user": user, "text": text, "channel": "web"})
    return orjson.dumps({"symbol": rng.choice(["AAPL", "MSFT", "NVDA", "TSLA"]), "price": 100 + rng.random() * 10})


def _client_process(host: str, port: int, pipelines: List[str], seconds: float, clients: int, seed: int) -> dict:
    """Closed-loop load from `clients` threads with keep-alive connections (runs in a child process)."""
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    out: dict = {"ok": 0, "errors": 0, "rtts": {p: [] for p in pipelines}}

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        conn = http.client.HTTPConnection(host, port, timeout=10)
        ok = errors = 0
        local: Dict[str, List[float]] = {p: [] for p in pipelines}
        while time.monotonic() < stop:
            p = pipelines[rng.randrange(len(pipelines))]
            body = _payload(p, rng)
            t0 = time.perf_counter()
            try:
                conn.request("POST", f"/hooks/{p}", body, {"content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=10)
                continue
            local[p].append(time.perf_counter() - t0)
            if resp.status == 200:
                ok += 1
            else:
                errors += 1
        conn.close()
        with lock:
            out["ok"] += ok
            out["errors"] += errors
            for p, v in local.items():
                out["rtts"][p].extend(v)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def drive(
    server: Server, pipelines: List[str], seconds: float, clients: int, stop: Optional[threading.Event] = None
) -> Optional[Tuple[int, int, Dict[str, List[float]]]]:
    """Drives load from two child processes, so the load generator does not share our GIL.
    Returns (ok, errors, round trips per pipeline), or None when `stop` was set first (the load
    generators are then terminated)."""
    procs = []
    per = [clients // 2 + clients % 2, clients // 2]
    for seed, n in enumerate(per):
        if n == 0:
            continue
        cmd = [
            sys.executable,
            "-m",
            "warmslot.demo",
            server.host,
            str(server.port),
            ",".join(pipelines),
            str(seconds),
            str(n),
            str(seed),
        ]
        # Their own session: Ctrl-C in a terminal (SIGINT to the foreground process group) reaches
        # the demo only, which terminates them, instead of a traceback from each.
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, start_new_session=True))
    ok = errors = 0
    rtts: Dict[str, List[float]] = {p: [] for p in pipelines}
    deadline = time.monotonic() + seconds + 60
    try:
        for proc in procs:
            while True:
                try:
                    out, _ = proc.communicate(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if stop is not None and stop.is_set():
                        return None
                    if time.monotonic() >= deadline:
                        raise RuntimeError(f"load generator still running {seconds + 60:.0f}s after it started")
            if proc.returncode != 0:
                raise RuntimeError(f"load generator exited with {proc.returncode}")
            data = orjson.loads(out)
            ok += data["ok"]
            errors += data["errors"]
            for p, v in data["rtts"].items():
                rtts[p].extend(v)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.communicate()
    return ok, errors, rtts


def _pct(values: List[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def report(server: Server, seconds: float, ok: int, errors: int, rtts: Dict[str, List[float]]) -> str:
    lines = [
        f"drove {ok + errors} requests in {seconds:.1f}s: {ok / seconds:,.0f} req/s, {errors} errors",
        "",
        "server-side latency, request read -> state committed (µs); client round trip p50 (µs)",
        f"{'pipeline':<10} {'requests':>9} {'p50':>7} {'p95':>7} {'p99':>7} "
        f"{'queue p50':>10} {'run p50':>8} {'rtt p50':>8}",
    ]
    for s in server.stats():
        total, queue, run = s["latency"]["total"], s["latency"]["queue"], s["latency"]["run"]
        rtt = _pct(rtts.get(s["name"], []), 0.5) * 1e6
        lines.append(
            f"{s['name']:<10} {s['requests']['succeeded']:>9} {total['p50_us']:>7} {total['p95_us']:>7} "
            f"{total['p99_us']:>7} {queue['p50_us']:>10} {run['p50_us']:>8} {rtt:>8.0f}"
        )
    return "\n".join(lines)


def pool_line(server: Server) -> str:
    """One line: per pipeline, its warm slots and what its scaling policy asks for (and why)."""
    loads = server._core.load()
    parts = []
    for rt, snap, load in zip(server.runtimes, server.autoscaler.snapshots(), loads):
        policy = f"{snap['policy']}: {snap['phase']}"
        parts.append(f"{rt.spec.name} {load[2]} warm / target {snap['target_slots']} ({policy})")
    return "pool: " + ", ".join(parts)


def _print_pool_every(server: Server, seconds: float, done: threading.Event) -> None:
    while not done.wait(seconds):
        print(pool_line(server), flush=True)


def admin_hint(url: str) -> str:
    """How to reach the admin routes when an admin token is set (the token itself is not shown)."""
    return (
        "admin routes need the token (WARMSLOT_ADMIN_TOKEN): "
        f'curl -H "Authorization: Bearer $WARMSLOT_ADMIN_TOKEN" {url}/metrics\n'
        "Prometheus scrape config: authorization: {type: Bearer, credentials_file: /path/to/token}"
    )


def run_demo(host: str, port: int, seconds: float, clients: int, keep_serving: bool) -> int:
    """Serves the bundled bots, drives `seconds` of load from `clients` clients and prints what
    was measured; then, with `keep_serving`, serves on. Ctrl-C or SIGTERM, at any point after
    the bots are warm, stops it as it stops ``warmslot run``: it says so and drains
    (`warmslot.app.drain`). Returns 0, or 1 when requests failed."""
    from .examples.bots import app as bots

    app: App = bots
    server = app.start(host, port)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    errors = 0
    try:
        names = list(app.pipelines)
        print(f"warmslot demo: serving {', '.join('/hooks/' + n for n in names)} on {server.url}", flush=True)
        print(f"live dashboard: {server.url}/dashboard (per-second series as JSON: {server.url}/stats)", flush=True)
        print(f"driving {clients} keep-alive clients for {seconds:g}s...", flush=True)
        done = threading.Event()
        printer = threading.Thread(target=_print_pool_every, args=(server, 1.0, done), daemon=True)
        printer.start()
        try:
            driven = drive(server, names, seconds, clients, stop)
        finally:
            done.set()
            printer.join(2.0)
        if driven is not None:
            ok, errors, rtts = driven
            print(report(server, seconds, ok, errors, rtts), flush=True)
            print(pool_line(server), flush=True)
        if keep_serving and not stop.is_set():
            example = f'curl -s -XPOST {server.url}/hooks/echo -d \'{{"user":"me","text":"hi"}}\''
            print(f"\nstill serving on {server.url} (dashboard: {server.url}/dashboard); try: {example}", flush=True)
            if app.admin_token:
                print(admin_hint(server.url), flush=True)
            print("Ctrl-C to stop.", flush=True)
            while not stop.wait(0.5):
                pass
    except KeyboardInterrupt:  # SIGINT outside the main thread's handlers
        stop.set()
    finally:
        if stop.is_set():
            drain(server)
        else:
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    h, port, names, secs, n, seed = sys.argv[1:7]
    result = _client_process(h, int(port), names.split(","), float(secs), int(n), int(seed))
    sys.stdout.buffer.write(orjson.dumps(result))
