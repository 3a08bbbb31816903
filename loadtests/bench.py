#!/usr/bin/env python3
"""warmslot load benchmark: warmslot against its peers, same bot, same generator.

For each system: start it on a free 127.0.0.1 port, wait until ready, warm up,
measure, stop it.  Figures (see loadtests/README.md):

  (i)   closed-loop max throughput, ``wrk -t1 -c64`` (POST bodies from a Lua script)
  (ii)  latency at one connection, ``wrk -t1 -c1 --latency``: p50/p95/p99
  (iii) open-loop latency at fixed request rates (25/50/75% of uvicorn's max
        throughput measured in this run), ``oha -q RATE --latency-correction``:
        p50/p95/p99 corrected for coordinated omission

    python loadtests/bench.py                       # full run (~10 min)
    python loadtests/bench.py --quick               # under 2 minutes
    python loadtests/bench.py --systems warmslot,uvicorn --duration 2 --json out.json --plot out.png

Results: a markdown table on stdout, ``--json PATH``, ``--plot PATH`` (PNG).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BOTS = os.path.join(HERE, "bots")
LUA = os.path.join(HERE, "wrk", "post.lua")
REQUIREMENTS = os.path.join(HERE, "requirements.txt")
sys.path.insert(0, HERE)

import events  # noqa: E402  (loadtests/events.py)

OHA_VERSION = "1.16.0"  # pinned: oha's JSON output changes between versions
HOOK_PATH = "/hooks/support"
ALL_SYSTEMS = ["warmslot", "uvicorn", "granian", "fastapi", "celery", "nginx"]
LABELS = {
    "warmslot": "warmslot",
    "uvicorn": "plain ASGI on uvicorn (httptools, uvloop)",
    "granian": "plain ASGI on granian (1 worker)",
    "fastapi": "FastAPI on uvicorn",
    "celery": "FastAPI + Celery + Redis",
    "nginx": "nginx static body (ceiling)",
}
NGINX_BODY = '{"reply":"echo: static","turn":1}'


def log(*args) -> None:
    print("[bench]", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tools / install


def cargo_bin(name: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    cand = os.path.join(os.path.expanduser("~"), ".cargo", "bin", name)
    return cand if os.access(cand, os.X_OK) else None


def _py_has(module: str) -> bool:
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return r.returncode == 0


def _timed(cmd: list, **kw) -> int:
    log("$", " ".join(cmd))
    t0 = time.monotonic()
    rc = subprocess.run(cmd, **kw).returncode
    log(f"  -> rc={rc} in {time.monotonic() - t0:.1f}s")
    return rc


def ensure_tools(systems: list, need_oha: bool, need_plot: bool, install: bool, need_locust: bool = False) -> dict:
    """Install what is missing (apt, pip, cargo); return {tool: path or None}."""
    apt_needed = {"wrk": "wrk"}
    if "nginx" in systems:
        apt_needed["nginx"] = "nginx"
    if "celery" in systems:
        apt_needed["redis-server"] = "redis-server"
    missing_apt = [
        pkg for exe, pkg in apt_needed.items() if not (shutil.which(exe) or os.path.exists(f"/usr/sbin/{exe}"))
    ]
    if missing_apt and install:
        apt = ["apt-get"] if os.geteuid() == 0 else (["sudo", "-n", "apt-get"] if shutil.which("sudo") else None)
        if apt:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            _timed(apt + ["update", "-q"], env=env, stdout=subprocess.DEVNULL)
            _timed(
                apt + ["install", "-y", "-q", "--no-install-recommends"] + missing_apt,
                env=env,
                stdout=subprocess.DEVNULL,
            )
        else:
            log("cannot apt-get install (not root, no sudo):", missing_apt)

    py_modules = ["uvicorn", "httptools", "uvloop"]
    if "granian" in systems:
        py_modules.append("granian")
    if "fastapi" in systems or "celery" in systems:
        py_modules.append("fastapi")
    if "celery" in systems:
        py_modules += ["celery", "redis"]
    if need_plot:
        py_modules.append("matplotlib")
    if need_locust:
        py_modules.append("locust")
    missing_py = [m for m in py_modules if not _py_has(m)]
    if missing_py and install:
        _timed([sys.executable, "-m", "pip", "install", "-q", "-r", REQUIREMENTS])

    if need_oha and not cargo_bin("oha") and install:
        cargo = cargo_bin("cargo")
        if cargo:
            log(f"building oha {OHA_VERSION} from crates.io (several minutes on 2 cores; cached in ~/.cargo/bin)")
            _timed([cargo, "install", "oha", "--locked", "--version", OHA_VERSION])
        else:
            log("oha missing and no cargo to build it: open-loop figures will be errors")

    def which_any(name):
        return shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)

    return {
        "wrk": which_any("wrk"),
        "nginx": which_any("nginx"),
        "redis-server": which_any("redis-server"),
        "oha": cargo_bin("oha"),
    }


def tool_version(cmd: list) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        out = (r.stdout or r.stderr).strip().splitlines()
        return out[0] if out else ""
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc})"


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessGroup:
    """Every server process started by the bench; each runs in its own session
    (process group) so that workers it forks are killed with it."""

    def __init__(self):
        self.procs: list = []

    def start(self, name: str, cmd: list, logdir: str, env=None, cwd=ROOT) -> subprocess.Popen:
        logpath = os.path.join(logdir, f"{name}.log")
        logf = open(logpath, "ab")
        logf.write(("$ " + " ".join(cmd) + "\n").encode())
        logf.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        proc.logpath = logpath  # type: ignore[attr-defined]
        proc.name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    @staticmethod
    def _signal(proc, sig) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def stop_all(self, grace: float = 3.0) -> None:
        procs, self.procs = self.procs[::-1], []
        for p in procs:
            self._signal(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
        for p in procs:  # the group may outlive its leader: always make sure
            self._signal(p, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=2)


def log_tail(path: str, n: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


def http_request(port: int, method: str, path: str, body: Optional[bytes] = None, timeout: float = 2.0) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(port: int, procs: list, timeout: float, probe_body: bytes, check_reply: bool) -> None:
    """Ready = GET /healthz answers 200, then one POST of a real event answers 200."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    stage = "healthz"
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.name} exited with code {p.returncode} before ready:\n" + log_tail(p.logpath))
        try:
            if stage == "healthz":
                status, _ = http_request(port, "GET", "/healthz", timeout=1.0)
                if status == 200:
                    stage = "probe"
                    continue
                last = f"GET /healthz -> {status}"
            else:
                status, data = http_request(port, "POST", HOOK_PATH, probe_body, timeout=5.0)
                if status == 200:
                    if check_reply:
                        reply = json.loads(data)
                        text = json.loads(probe_body)["text"]
                        if reply.get("reply") != "echo: " + text or not isinstance(reply.get("turn"), int):
                            raise RuntimeError(f"wrong reply to probe event: {data[:200]!r}")
                    return
                last = f"POST {HOOK_PATH} -> {status} {data[:200]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    raise RuntimeError(f"not ready after {timeout:.0f}s ({stage}: {last})")


# ---------------------------------------------------------------- systems


@dataclass
class Ctx:
    logdir: str
    tools: dict
    pg: ProcessGroup


def _peer_env(extra=None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = BOTS + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def _uvicorn_cmd(target: str, port: int) -> list:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]


def start_warmslot(ctx: Ctx, port: int) -> list:
    if not _py_has("warmslot"):
        raise RuntimeError(
            "warmslot is not installed (`python -c 'import warmslot'` fails); "
            "build it first, e.g. `maturin develop --release` or `pip install .`"
        )
    exe = os.path.join(os.path.dirname(sys.executable), "warmslot")
    cmd = (
        [exe]
        if os.access(exe, os.X_OK)
        else ([shutil.which("warmslot")] if shutil.which("warmslot") else [sys.executable, "-m", "warmslot"])
    )
    cmd += ["run", "loadtests/bots/warmslot_bot.py:app", "--host", "127.0.0.1", "--port", str(port)]
    return [ctx.pg.start("warmslot", cmd, ctx.logdir)]


def start_uvicorn(ctx: Ctx, port: int) -> list:
    return [ctx.pg.start("uvicorn", _uvicorn_cmd("asgi_bot:app", port), ctx.logdir, env=_peer_env())]


def start_granian(ctx: Ctx, port: int) -> list:
    cmd = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--workers",
        "1",
        "--http",
        "1",
        "--no-ws",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "asgi_bot:app",
    ]
    return [ctx.pg.start("granian", cmd, ctx.logdir, env=_peer_env(), cwd=BOTS)]


def start_fastapi(ctx: Ctx, port: int) -> list:
    return [ctx.pg.start("fastapi", _uvicorn_cmd("fastapi_bot:app", port), ctx.logdir, env=_peer_env())]


def start_celery(ctx: Ctx, port: int) -> list:
    redis_server = ctx.tools.get("redis-server")
    if not redis_server:
        raise RuntimeError("redis-server not found (apt-get install -y redis-server)")
    rport = free_port()
    rdir = tempfile.mkdtemp(prefix="redis-", dir=ctx.logdir)
    redis = ctx.pg.start(
        "redis",
        [
            redis_server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(rport),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            rdir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        ctx.logdir,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", rport), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if redis.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start:\n" + log_tail(redis.logpath))
        time.sleep(0.05)
    env = _peer_env({"CELERY_REDIS_URL": f"redis://127.0.0.1:{rport}/0"})
    worker = ctx.pg.start(
        "celery-worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_tasks",
            "worker",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
            "-n",
            f"bench{port}@%h",
        ],
        ctx.logdir,
        env=env,
        cwd=BOTS,
    )
    front = ctx.pg.start("celery-front", _uvicorn_cmd("celery_bot:app", port), ctx.logdir, env=env)
    return [redis, worker, front]


def start_nginx(ctx: Ctx, port: int) -> list:
    nginx = ctx.tools.get("nginx")
    if not nginx:
        raise RuntimeError("nginx not found (apt-get install -y nginx)")
    prefix = tempfile.mkdtemp(prefix="nginx-", dir=ctx.logdir)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{NGINX_BODY}';
        }}
    }}
}}
""")
    return [ctx.pg.start("nginx", [nginx, "-p", prefix, "-c", conf, "-e", "stderr"], ctx.logdir)]


STARTERS: dict = {
    "warmslot": start_warmslot,
    "uvicorn": start_uvicorn,
    "granian": start_granian,
    "fastapi": start_fastapi,
    "celery": start_celery,
    "nginx": start_nginx,
}


# ---------------------------------------------------------------- generators


class ToolError(RuntimeError):
    pass


def run_wrk(wrk: str, port: int, connections: int, duration: float, bodies: str, logdir: str, tag: str) -> dict:
    secs = max(1, int(round(duration)))
    cmd = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{secs}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        LUA,
        f"http://127.0.0.1:{port}{HOOK_PATH}",
        "--",
        bodies,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 30)
    with open(os.path.join(logdir, f"wrk-{tag}.log"), "a") as f:
        f.write("$ " + " ".join(cmd) + "\n" + r.stdout + r.stderr + "\n")
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if r.returncode != 0 or line is None:
        raise ToolError(f"wrk failed (rc={r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
    data = json.loads(line[len("WRKJSON ") :])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6) if data["duration_us"] else 0.0
    data["error_count"] = sum(data["errors"].values())
    data["connections"] = connections
    return data


def run_oha(
    oha: str, port: int, rate: float, duration: float, connections: int, bodies: str, logdir: str, tag: str
) -> dict:
    secs = max(1, int(round(duration)))
    cmd = [
        oha,
        "--no-tui",
        "--output-format",
        "json",
        "-z",
        f"{secs}s",
        "-q",
        f"{rate:.0f}",
        "-c",
        str(connections),
        "--worker-threads",
        "1",
        "--latency-correction",
        "-w",
        "-t",
        "5s",
        "-m",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-Z",
        bodies,
        f"http://127.0.0.1:{port}{HOOK_PATH}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60)
    with open(os.path.join(logdir, f"oha-{tag}.log"), "a") as f:
        f.write("$ " + " ".join(cmd) + "\n" + r.stderr + "\n")
    try:
        out = json.loads(r.stdout)
    except ValueError:
        raise ToolError(f"oha failed (rc={r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}") from None
    s = out.get("summary", {})
    pct = out.get("latencyPercentiles", {})
    codes = {str(k): v for k, v in (out.get("statusCodeDistribution") or {}).items()}
    errs = out.get("errorDistribution") or {}
    ok = codes.get("200", 0)

    def us(key):
        v = pct.get(key)
        return None if v is None else round(v * 1e6, 1)

    return {
        "rate": round(rate),
        "duration_s": secs,
        "connections": connections,
        "achieved_rps": s.get("requestsPerSec"),
        "ok_responses": ok,
        "status_codes": codes,
        "errors": errs,
        "error_count": sum(v for k, v in codes.items() if k != "200") + sum(errs.values()),
        "p50_us": us("p50"),
        "p90_us": us("p90"),
        "p95_us": us("p95"),
        "p99_us": us("p99"),
        "p999_us": us("p99.9"),
        "max_us": None if s.get("slowest") is None else round(s["slowest"] * 1e6, 1),
    }


# ---------------------------------------------------------------- benchmark


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def bench_system(name: str, ctx: Ctx, args, bodies: str, probe: bytes, shared: dict) -> dict:
    """Measure one system.  ``shared["rate_base"]`` is the base of the open-loop
    rates; the first system measured (uvicorn, run first) sets it if unset."""
    res: dict = {"system": name, "label": LABELS[name], "status": "ok"}
    port = free_port()
    res["port"] = port
    t0 = time.monotonic()
    try:
        procs = STARTERS[name](ctx, port)
        res["commands"] = [" ".join(p.args) for p in procs]
        wait_ready(port, procs, timeout=args.start_timeout, probe_body=probe, check_reply=(name != "nginx"))
        res["startup_s"] = round(time.monotonic() - t0, 2)
        log(f"{name}: ready on 127.0.0.1:{port} after {res['startup_s']}s")
        wrk = ctx.tools["wrk"]
        if not wrk:
            raise ToolError("wrk not found (apt-get install -y wrk)")
        if args.warmup > 0:
            run_wrk(wrk, port, 64, args.warmup, bodies, ctx.logdir, f"{name}-warmup")

        runs = []
        for i in range(args.repeat):
            runs.append(run_wrk(wrk, port, 64, args.duration, bodies, ctx.logdir, f"{name}-c64"))
            log(f"{name}: c64 run {i + 1}: {runs[-1]['rps']:.0f} req/s, errors {runs[-1]['error_count']}")
        res["throughput"] = {
            "rps": median([r["rps"] for r in runs]),
            "errors": sum(r["error_count"] for r in runs),
            "runs": runs,
        }
        if shared.get("rate_base") is None and res["throughput"]["rps"]:
            shared["rate_base"] = {"system": name, "rps": res["throughput"]["rps"]}

        runs = []
        for i in range(args.repeat):
            runs.append(run_wrk(wrk, port, 1, args.duration, bodies, ctx.logdir, f"{name}-c1"))
            lat = runs[-1]["latency_us"]
            log(f"{name}: c1 run {i + 1}: p50 {lat['p50']} us, p99 {lat['p99']} us")
        res["latency_c1"] = {
            "p50_us": median([r["latency_us"]["p50"] for r in runs]),
            "p95_us": median([r["latency_us"]["p95"] for r in runs]),
            "p99_us": median([r["latency_us"]["p99"] for r in runs]),
            "rps": median([r["rps"] for r in runs]),
            "errors": sum(r["error_count"] for r in runs),
            "runs": runs,
        }

        res["open_loop"] = open_loop(name, ctx, args, port, bodies, res, shared.get("rate_base"))
    except ToolError as exc:
        res["status"] = "error"
        res["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001  -- a failing system must not stop the run
        res["status"] = "error"
        res["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for p in ctx.pg.procs:
            if p.poll() is not None and res["status"] == "ok":
                res["status"] = "error"
                res["error"] = f"{p.name} died during the run (rc={p.returncode}):\n{log_tail(p.logpath)}"
        ctx.pg.stop_all()
    if res["status"] != "ok":
        log(f"{name}: ERROR {res['error']}")
    return res


def open_loop(name, ctx, args, port, bodies, res, rate_base) -> list:
    out = []
    if not args.rates:
        return out
    if rate_base is None:
        return [{"pct": p, "error": "no base rate (uvicorn did not run)"} for p in args.rates]
    oha = ctx.tools.get("oha")
    own_max = res["throughput"]["rps"]
    for pct in args.rates:
        rate = rate_base["rps"] * pct / 100.0
        entry = {"pct": pct, "rate": round(rate)}
        if not oha:
            entry["error"] = "oha not found (cargo install oha --locked)"
        elif args.max_overload and own_max and rate > args.max_overload * own_max:
            entry["skipped"] = (
                f"over capacity: {rate:.0f} req/s offered > {args.max_overload:g} x this "
                f"system's closed-loop max ({own_max:.0f} req/s)"
            )
        else:
            # Above the system's own closed-loop max the queue only grows: measure it once. The
            # latencies then say how far behind it fell within the run; requests oha never got to
            # send (all connections busy) are not counted, so `achieved_rps` tells the shortfall.
            over = bool(own_max and rate > own_max)
            entry["over_capacity"] = over
            runs = []
            try:
                for _ in range(1 if over else args.repeat):
                    runs.append(
                        run_oha(
                            oha, port, rate, args.duration, args.open_connections, bodies, ctx.logdir, f"{name}-q{pct}"
                        )
                    )
                    log(
                        f"{name}: open loop {pct}% ({rate:.0f} req/s): p50 {runs[-1]['p50_us']} us, "
                        f"p99 {runs[-1]['p99_us']} us, errors {runs[-1]['error_count']}"
                    )
                for key in ("p50_us", "p95_us", "p99_us", "achieved_rps"):
                    entry[key] = median([r[key] for r in runs])
                entry["errors"] = sum(r["error_count"] for r in runs)
                entry["runs"] = runs
            except (ToolError, subprocess.TimeoutExpired) as exc:
                entry["error"] = str(exc)
        out.append(entry)
    return out


# ---------------------------------------------------------------- report


def fmt_us(us) -> str:
    if us is None:
        return "—"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.2f} ms" if us < 10_000 else f"{us / 1000:.1f} ms"
    return f"{us / 1e6:.2f} s"


def fmt_rps(rps) -> str:
    return "—" if rps is None else f"{rps:,.0f}"


def ratios(results: dict) -> dict:
    out = {}
    base = results.get("uvicorn")
    if not base or base.get("status") != "ok":
        return out
    for name, r in results.items():
        if name == "uvicorn" or r.get("status") != "ok":
            continue
        tp = r["throughput"]["rps"] / base["throughput"]["rps"] if base["throughput"]["rps"] else None
        p50 = r["latency_c1"]["p50_us"] / base["latency_c1"]["p50_us"] if base["latency_c1"]["p50_us"] else None
        out[name] = {"throughput_x": tp, "p50_c1_x": p50}
    return out


def markdown(results: dict, order: list, rates: list, rate_base) -> str:
    rr = ratios(results)
    head = ["system", "req/s @64 conn", "× uvicorn", "p50 @1 conn", "p99 @1 conn"]
    for pct in rates:
        rate = f" ({rate_base['rps'] * pct / 100:,.0f}/s)" if rate_base else ""
        head.append(f"open loop {pct}%{rate} p50 / p95 / p99")
    head.append("errors")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in order:
        r = results[name]
        if r["status"] != "ok" and "throughput" not in r:
            msg = r.get("error", "error").splitlines()[0][:160].replace("|", "\\|")
            lines.append(f"| {name} | **error**: {msg} |" + " |" * (len(head) - 2))
            continue
        tp = r.get("throughput", {})
        c1 = r.get("latency_c1", {})
        x = "1.00×" if name == "uvicorn" else (f"{rr[name]['throughput_x']:.2f}×" if rr.get(name) else "—")
        row = [name, fmt_rps(tp.get("rps")), x, fmt_us(c1.get("p50_us")), fmt_us(c1.get("p99_us"))]
        errors = (tp.get("errors") or 0) + (c1.get("errors") or 0)
        ol = {e["pct"]: e for e in r.get("open_loop", [])}
        for pct in rates:
            e = ol.get(pct)
            if e is None:
                row.append("—")
            elif "skipped" in e:
                row.append("over capacity")
            elif "error" in e:
                row.append("error")
            else:
                cell = f"{fmt_us(e['p50_us'])} / {fmt_us(e['p95_us'])} / {fmt_us(e['p99_us'])}"
                if e.get("over_capacity"):
                    cell += f" (over capacity: {fmt_rps(e.get('achieved_rps'))}/s served)"
                row.append(cell)
                errors += e.get("errors") or 0
        row.append(str(errors) + ("" if r["status"] == "ok" else " (" + r.get("error", "")[:60] + ")"))
        lines.append("| " + " | ".join(row) + " |")
    if "warmslot" in rr:
        w = rr["warmslot"]
        tp = w["throughput_x"]
        p50 = w["p50_c1_x"]
        lines.append("")
        lines.append(
            f"warmslot / uvicorn: throughput {tp:.2f}× (aim ≥ 2×), "
            f"p50 at 1 connection {p50:.2f}× (aim ≤ 1×, lower is better)"
        )
    return "\n".join(lines)


def plot(results: dict, order: list, path: str, rate_base) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [n for n in order if results[n].get("throughput")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    ax = axes[0]
    vals = [results[n]["throughput"]["rps"] for n in ok]
    bars = ax.bar(ok, vals, color=["#d62728" if n == "warmslot" else "#1f77b4" for n in ok])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=8)
    ax.set_title("closed loop, 64 connections (wrk -t1)")
    ax.set_ylabel("requests / s")
    ax.tick_params(axis="x", rotation=30)

    ax = axes[1]
    ok1 = [n for n in ok if results[n].get("latency_c1")]
    xs = range(len(ok1))
    p50 = [results[n]["latency_c1"]["p50_us"] for n in ok1]
    p99 = [results[n]["latency_c1"]["p99_us"] for n in ok1]
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
    ax.set_xticks(list(xs), ok1, rotation=30)
    ax.set_yscale("log")
    ax.set_ylabel("latency, µs (log)")
    ax.set_title("1 connection (wrk -t1 -c1)")
    ax.legend()

    ax = axes[2]
    for n in ok:
        pts = [(e["rate"], e["p99_us"]) for e in results[n].get("open_loop", []) if e.get("p99_us")]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{n} p99")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate, requests / s" + (f" (% of uvicorn max {rate_base['rps']:,.0f})" if rate_base else ""))
    ax.set_ylabel("p99 latency, µs (log), corrected for coordinated omission")
    ax.set_title("open loop (oha -q RATE --latency-correction)")
    if ax.lines:
        ax.legend(fontsize=8)
    errs = [n for n in order if not results[n].get("throughput")]
    if errs:
        fig.text(0.01, 0.01, "errors: " + ", ".join(errs), fontsize=8, color="#d62728")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help=f"comma-separated subset of {','.join(ALL_SYSTEMS)} (default: all)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="whole run under 2 minutes: 2 s per figure, 1 s warm-up, one run each"
    )
    ap.add_argument("--duration", type=float, help="seconds per measurement (default 10, quick 2)")
    ap.add_argument("--warmup", type=float, help="seconds of wrk -c64 warm-up (default 3, quick 1)")
    ap.add_argument("--repeat", type=int, help="runs of each figure (default 2, quick 1)")
    ap.add_argument(
        "--rates", default="25,50,75", help="open-loop rates, %% of uvicorn's max req/s in this run ('' to skip)"
    )
    ap.add_argument(
        "--base-rps", type=float, help="base for --rates when uvicorn is not run (default: first system's max)"
    )
    ap.add_argument("--open-connections", type=int, default=64, help="oha connections (default 64)")
    ap.add_argument(
        "--max-overload",
        type=float,
        default=0.0,
        help="skip open-loop rates above this multiple of the system's own max (default 0: run every rate; "
        "rates above a system's max run once and are marked over capacity)",
    )
    ap.add_argument("--start-timeout", type=float, default=30.0)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--plot", metavar="PATH")
    ap.add_argument("--logs", metavar="DIR", help="keep server/generator logs here (default: a temp dir)")
    ap.add_argument("--no-install", action="store_true", help="do not apt/pip/cargo install missing tools")
    ap.add_argument("--install-only", action="store_true", help="install the tools and exit")
    args = ap.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in ALL_SYSTEMS]
    if unknown:
        ap.error(f"unknown systems {unknown}; choose from {ALL_SYSTEMS}")
    args.rates = [int(float(x)) for x in args.rates.split(",") if x.strip()]
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 2
    return args


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    # Ctrl-C, SIGTERM, SIGHUP: stop every server we started, then exit 130.
    # (SIGINT too: a shell that starts us in the background sets it to "ignore".)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    t_start = time.monotonic()
    if args.install_only:  # everything bench.py, run_locust.py and the tests use
        tools = ensure_tools(ALL_SYSTEMS, need_oha=True, need_plot=True, install=True, need_locust=True)
    else:
        tools = ensure_tools(
            args.systems, need_oha=bool(args.rates), need_plot=bool(args.plot), install=not args.no_install
        )
    if args.install_only:
        print(json.dumps(tools, indent=2))
        return 0 if all(tools.values()) else 1

    logdir = args.logs or tempfile.mkdtemp(prefix="warmslot-bench-")
    os.makedirs(logdir, exist_ok=True)
    bodies = events.write_bodies(os.path.join(logdir, "bodies.jsonl"))
    probe = events.make_bodies(1)[0].encode()
    ctx = Ctx(logdir=logdir, tools=tools, pg=ProcessGroup())
    log(f"logs in {logdir}")

    # uvicorn first: its max throughput sets the open-loop rates of every system.
    run_order = sorted(args.systems, key=lambda s: s != "uvicorn")
    results: dict = {}
    shared = {"rate_base": {"system": "--base-rps", "rps": args.base_rps} if args.base_rps else None}
    interrupted = False
    try:
        for name in run_order:
            log(f"== {name}: {LABELS[name]}")
            results[name] = bench_system(name, ctx, args, bodies, probe, shared)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping servers")
    finally:
        ctx.pg.stop_all()

    rate_base = shared["rate_base"]
    order = [s for s in args.systems if s in results]
    table = markdown(results, order, args.rates, rate_base)
    report = {
        "meta": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "wrk": tool_version([tools["wrk"], "-v"]) if tools["wrk"] else None,
            "oha": tool_version([tools["oha"], "--version"]) if tools["oha"] else None,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeat": args.repeat,
            "rates_pct": args.rates,
            "open_connections": args.open_connections,
            "quick": args.quick,
            "logs": logdir,
            "interrupted": interrupted,
            "elapsed_s": round(time.monotonic() - t_start, 1),
        },
        "rate_base": rate_base,
        "systems": results,
        "ratios_vs_uvicorn": ratios(results),
        "table_markdown": table,
    }
    print(table)
    print(f"\n(elapsed {report['meta']['elapsed_s']} s; logs in {logdir})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"JSON written to {args.json}")
    if args.plot and results:
        try:
            plot(results, order, args.plot, rate_base)
            print(f"plot written to {args.plot}")
        except Exception as exc:  # noqa: BLE001
            print(f"plot failed: {exc}", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
