#!/usr/bin/env python3
"""warmslot load benchmark: warmslot against its peers at equal CPU, same bot, same generators.

Every system serves the same support bot. The peers run as many worker processes as the server
has cores (2 on a 2-core machine; ``--workers``), so that no system gets more CPU than another;
with ``--pin`` every server is pinned to one core (``taskset -c 1``, peers with 1 worker) and the
generators to the other (``taskset -c 0``).

Closed loop, in interleaved rounds: round 1 runs every system once (start, warm up, measure, stop),
then round 2, ... (A/B/A/B...). In each run:

  (i)   ``wrk -t1 -c64``: closed-loop maximum throughput (``rps_64``), and the server's CPU time
        per request (``cpu_us_per_request``: utime+stime of every process of the server's process
        groups, from /proc, read before and after the run, divided by the completed requests);
  (ii)  ``wrk -t1 -c1 --latency``: latency of one request alone (p50/p95/p99).

wrk's Lua script checks every reply (status, a cheap body check) and every 16th in full; a run
with any invalid reply or socket error is marked invalid and left out of the ratios. A system's
figure is the low median of its valid runs (always a figure one run produced, never a blend of
two); a ratio is the low median of the per-round ratios, with their min and max.

Open loop, per system, at the end of its last round: ``oha -q RATE --latency-correction`` at
fractions of that system's own closed-loop maximum, up to its knee (p99 over the SLO, an error,
or the offered rate not served); ``slo_capacity_rps`` is the highest rate whose p99 stayed under
the SLO (10 ms).

    python loadtests/bench.py                       # full: 3 rounds, 10 s per figure
    python loadtests/bench.py --quick               # 1 round, 2 s per figure, 3 open-loop points
    python loadtests/bench.py --pin                 # one server core, generators on the other
    python loadtests/bench.py --systems warmslot-thread,uvicorn --duration 2 --json out.json

Results: a markdown table and the ratios on stdout, ``--json PATH``, and a chart (PNG), written
to ``--plot PATH`` or by default to ``bench.png`` in the logs directory (``--no-plot``: none).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BOTS = os.path.join(HERE, "bots")
LUA = os.path.join(HERE, "wrk", "post.lua")
REQUIREMENTS = os.path.join(HERE, "requirements.txt")
sys.path.insert(0, HERE)

import events  # noqa: E402  (loadtests/events.py)

OHA_VERSION = "1.16.0"  # pinned: oha's JSON output changes between versions
HOOK_PATH = "/hooks/support"
NGINX_TEXT = "static"
NGINX_BODY = '{"reply":"echo: ' + NGINX_TEXT + '","turn":1}'
CLK_TCK = os.sysconf("SC_CLK_TCK")
HISTORY_LEN = 10  # botlogic.HISTORY_LEN: a reply's "turn" is in 1..10


def log(*args) -> None:
    print("[bench]", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tools / install


def cargo_bin(name: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    cand = os.path.join(os.path.expanduser("~"), ".cargo", "bin", name)
    return cand if os.access(cand, os.X_OK) else None


def which_any(name: str) -> Optional[str]:
    return shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)


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
    kinds = {SYSTEMS[s].kind for s in systems}
    apt_needed = {"wrk": "wrk", "taskset": "util-linux"}
    if "nginx" in kinds:
        apt_needed["nginx"] = "nginx"
    if "celery" in kinds:
        apt_needed["redis-server"] = "redis-server"
    missing_apt = [pkg for exe, pkg in apt_needed.items() if not which_any(exe)]
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

    py_modules = ["uvicorn", "httptools", "uvloop", "orjson"]
    if "granian" in kinds:
        py_modules.append("granian")
    if any(SYSTEMS[s].target in ("fastapi_bot:app", "celery_bot:app") for s in systems):
        py_modules.append("fastapi")
    if "celery" in kinds:
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

    return {
        "wrk": which_any("wrk"),
        "taskset": which_any("taskset"),
        "nginx": which_any("nginx"),
        "redis-server": which_any("redis-server"),
        "oha": cargo_bin("oha"),
    }


def tool_version(cmd: list) -> Optional[str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (r.stdout.strip() or r.stderr.strip()).splitlines()
    return out[0] if out else None


def cpu_model() -> Optional[str]:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or None


def versions(tools: dict) -> dict:
    """Versions of everything measured or measuring, for the JSON."""
    out = {
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
    }
    for dist in ("warmslot", "uvicorn", "granian", "fastapi", "celery", "httptools", "uvloop", "orjson", "pydantic"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["wrk"] = tool_version([tools["wrk"], "-v"]) if tools.get("wrk") else None
    out["oha"] = tool_version([tools["oha"], "--version"]) if tools.get("oha") else None
    out["nginx"] = tool_version([tools["nginx"], "-v"]) if tools.get("nginx") else None
    out["redis"] = tool_version([tools["redis-server"], "--version"]) if tools.get("redis-server") else None
    return out


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessGroup:
    """Every server process started by the bench; each runs in its own session (process group),
    so that the workers it forks are measured (CPU time) and killed with it."""

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


def reply_problem(body: bytes, text: str) -> Optional[str]:
    """Full check of one reply to an event whose text is ``text``; None when it is right."""
    try:
        reply = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if not isinstance(reply, dict) or set(reply) != {"reply", "turn"}:
        return f"not {{reply, turn}}: {body[:200]!r}"
    if reply["reply"] != "echo: " + text:
        return f"reply does not echo {text!r}: {body[:200]!r}"
    if not isinstance(reply["turn"], int) or not 1 <= reply["turn"] <= HISTORY_LEN:
        return f"turn not an int in 1..{HISTORY_LEN}: {body[:200]!r}"
    return None


def check_probe(port: int, probe_body: bytes, nginx: bool) -> None:
    """POST one real event and check the whole reply; raises RuntimeError when it is wrong."""
    status, data = http_request(port, "POST", HOOK_PATH, probe_body, timeout=5.0)
    if status != 200:
        raise RuntimeError(f"POST {HOOK_PATH} -> {status} {data[:200]!r}")
    problem = reply_problem(data, NGINX_TEXT if nginx else json.loads(probe_body)["text"])
    if problem:
        raise RuntimeError("wrong reply to a probe event: " + problem)


def wait_ready(port: int, procs: list, timeout: float, probe_body: bytes, nginx: bool) -> None:
    """Ready = GET /healthz answers 200, then one POST of a real event gets a right reply."""
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
                check_probe(port, probe_body, nginx)
                return
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, RuntimeError) and "wrong reply" in str(exc):
                raise
        time.sleep(0.05)
    tails = "\n".join(f"--- {p.name}:\n{log_tail(p.logpath)}" for p in procs)
    raise RuntimeError(f"not ready after {timeout:.0f}s ({stage}: {last})\n{tails}")


# ---------------------------------------------------------------- systems


@dataclass
class Ctx:
    logdir: str
    tools: dict
    pg: ProcessGroup
    server_prefix: list = field(default_factory=list)  # ["taskset", "-c", "1"] with --pin
    client_prefix: list = field(default_factory=list)  # ["taskset", "-c", "0"] with --pin


@dataclass(frozen=True)
class SystemSpec:
    """One system of the benchmark. ``start(ctx, spec, port, workers)`` starts its processes."""

    name: str
    kind: str  # warmslot | uvicorn | granian | celery | nginx
    label: str
    start: Callable
    target: str = ""  # ASGI app for uvicorn/granian
    env: tuple = ()  # extra environment, (name, value) pairs
    multi_worker: bool = True  # runs `workers` processes (else one, whatever --workers says)
    split_state: bool = False  # in-process state, so split across worker processes


def _peer_env(extra=None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = BOTS + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def _uvicorn_cmd(target: str, port: int, workers: int) -> list:
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
        str(workers),
        "--log-level",
        "warning",
    ]


def _warmslot_cmd() -> list:
    exe = os.path.join(os.path.dirname(sys.executable), "warmslot")
    if os.access(exe, os.X_OK):
        return [exe]
    return [shutil.which("warmslot")] if shutil.which("warmslot") else [sys.executable, "-m", "warmslot"]


def start_warmslot(ctx: Ctx, spec: SystemSpec, port: int, workers: int) -> list:
    if not _py_has("warmslot"):
        raise RuntimeError(
            "warmslot is not installed (`python -c 'import warmslot'` fails); "
            "build it first, e.g. `maturin develop --release` or `pip install .`"
        )
    env = dict(os.environ, **dict(spec.env))
    if spec.multi_worker:  # process slots: one slot process per worker
        env["WARMSLOT_SLOTS"] = str(workers)
    cmd = _warmslot_cmd() + ["run", "loadtests/bots/warmslot_bot.py:app", "--host", "127.0.0.1", "--port", str(port)]
    return [ctx.pg.start(spec.name, ctx.server_prefix + cmd, ctx.logdir, env=env)]


def start_uvicorn(ctx: Ctx, spec: SystemSpec, port: int, workers: int) -> list:
    cmd = ctx.server_prefix + _uvicorn_cmd(spec.target, port, workers)
    return [ctx.pg.start(spec.name, cmd, ctx.logdir, env=_peer_env(dict(spec.env)))]


def start_granian(ctx: Ctx, spec: SystemSpec, port: int, workers: int) -> list:
    cmd = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--workers",
        str(workers),
        "--http",
        "1",
        "--no-ws",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    cmd += [arg for pair in spec.env for arg in pair]  # extra CLI options, e.g. --runtime-threads 2
    cmd.append(spec.target)
    return [ctx.pg.start(spec.name, ctx.server_prefix + cmd, ctx.logdir, env=_peer_env(), cwd=BOTS)]


def start_celery(ctx: Ctx, spec: SystemSpec, port: int, workers: int) -> list:
    redis_server = ctx.tools.get("redis-server")
    if not redis_server:
        raise RuntimeError("redis-server not found (apt-get install -y redis-server)")
    rport = free_port()
    rdir = tempfile.mkdtemp(prefix="redis-", dir=ctx.logdir)
    redis_cmd = [
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
    ]
    redis = ctx.pg.start("celery-redis", ctx.server_prefix + redis_cmd, ctx.logdir)
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
    worker_cmd = [
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
    ]
    worker = ctx.pg.start("celery-worker", ctx.server_prefix + worker_cmd, ctx.logdir, env=env, cwd=BOTS)
    front_cmd = ctx.server_prefix + _uvicorn_cmd(spec.target, port, 1)
    front = ctx.pg.start("celery-front", front_cmd, ctx.logdir, env=env)
    return [redis, worker, front]


def start_nginx(ctx: Ctx, spec: SystemSpec, port: int, workers: int) -> list:
    nginx = ctx.tools.get("nginx")
    if not nginx:
        raise RuntimeError("nginx not found (apt-get install -y nginx)")
    prefix = tempfile.mkdtemp(prefix="nginx-", dir=ctx.logdir)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off;
master_process on;
worker_processes {workers};
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
    cmd = ctx.server_prefix + [nginx, "-p", prefix, "-c", conf, "-e", "stderr"]
    return [ctx.pg.start(spec.name, cmd, ctx.logdir)]


def _specs() -> dict:
    specs = [
        SystemSpec(
            "warmslot-thread",
            "warmslot",
            "warmslot, thread slots (1 process: I/O, scheduler and slot threads)",
            start_warmslot,
            multi_worker=False,
        ),
        SystemSpec(
            "warmslot-process",
            "warmslot",
            "warmslot, process slots (one slot process per worker)",
            start_warmslot,
            env=(("WARMSLOT_ISOLATION", "process"),),
        ),
        SystemSpec(
            "warmslot-process-other",
            "warmslot",
            "warmslot, process slots under the default scheduling policy (sched_batch=False)",
            start_warmslot,
            env=(("WARMSLOT_ISOLATION", "process"), ("WARMSLOT_SCHED_BATCH", "0")),
        ),
        SystemSpec(
            "warmslot-spin0",
            "warmslot",
            "warmslot, thread slots, spin_us=0 (idle threads park at once)",
            start_warmslot,
            env=(("WARMSLOT_SPIN_US", "0"),),
            multi_worker=False,
        ),
        SystemSpec(
            "uvicorn",
            "uvicorn",
            "plain ASGI on uvicorn (httptools, uvloop, orjson)",
            start_uvicorn,
            target="asgi_bot:app",
            split_state=True,
        ),
        SystemSpec(
            "granian",
            "granian",
            "plain ASGI on granian (orjson)",
            start_granian,
            target="asgi_bot:app",
            split_state=True,
        ),
        SystemSpec(
            "granian-rt2",
            "granian",
            "plain ASGI on granian, --runtime-threads 2 (orjson)",
            start_granian,
            target="asgi_bot:app",
            env=(("--runtime-threads", "2"),),
            split_state=True,
        ),
        SystemSpec(
            "fastapi",
            "uvicorn",
            "FastAPI on uvicorn (pydantic in, pydantic-core JSON out)",
            start_uvicorn,
            target="fastapi_bot:app",
            split_state=True,
        ),
        SystemSpec(
            "celery",
            "celery",
            "FastAPI front (128 threads) + Celery solo worker + Redis",
            start_celery,
            target="celery_bot:app",
            multi_worker=False,
        ),
        SystemSpec("nginx", "nginx", "nginx, static body, no bot logic (the HTTP ceiling)", start_nginx),
    ]
    return {s.name: s for s in specs}


SYSTEMS = _specs()
ALL_SYSTEMS = list(SYSTEMS)


def system_notes(spec: SystemSpec, workers: int) -> list:
    notes = []
    if spec.split_state and workers > 1:
        notes.append(
            f"conversation state is split across its {workers} worker processes (each keeps its own "
            "botlogic.STATES): a conversation's turn counts only the events that reached that worker"
        )
    if spec.name == "celery":
        notes.append("one Celery worker process (--pool=solo) holds all conversation state; JSON via kombu (stdlib)")
    if spec.name == "nginx":
        notes.append("answers a static body: the HTTP stack alone, for scale")
    if spec.kind == "warmslot":
        notes.append("conversation state kept by warmslot (one store for the whole server)")
    return notes


# ---------------------------------------------------------------- generators


class ToolError(RuntimeError):
    pass


def _children_cpu_us() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1e6


def run_wrk(
    ctx: Ctx, port: int, connections: int, duration: float, bodies: str, tag: str, sample_every: int, extra_text: str
) -> dict:
    secs = max(1, int(round(duration)))
    cmd = ctx.client_prefix + [
        ctx.tools["wrk"],
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
        str(sample_every),
        extra_text,
    ]
    client0 = _children_cpu_us()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 30)
    client_cpu = _children_cpu_us() - client0
    with open(os.path.join(ctx.logdir, f"wrk-{tag}.log"), "a") as f:
        f.write("$ " + " ".join(cmd) + "\n" + r.stdout + r.stderr + "\n")
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if r.returncode != 0 or line is None:
        raise ToolError(f"wrk failed (rc={r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
    data = json.loads(line[len("WRKJSON ") :])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6) if data["duration_us"] else 0.0
    data["socket_errors"] = sum(v for k, v in data["errors"].items() if k != "status")
    data["invalid_replies"] = data["bad_status"] + data["bad_body"]
    data["connections"] = connections
    data["client_cpu_us"] = round(client_cpu)
    return data


def run_oha(ctx: Ctx, port: int, rate: float, duration: float, connections: int, bodies: str, tag: str) -> dict:
    secs = max(1, int(round(duration)))
    cmd = ctx.client_prefix + [
        ctx.tools["oha"],
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
    with open(os.path.join(ctx.logdir, f"oha-{tag}.log"), "a") as f:
        f.write("$ " + " ".join(cmd) + "\n" + r.stderr + "\n")
    try:
        out = json.loads(r.stdout)
    except ValueError:
        raise ToolError(f"oha failed (rc={r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}") from None
    s = out.get("summary", {})
    pct = out.get("latencyPercentiles", {})
    codes = {str(k): v for k, v in (out.get("statusCodeDistribution") or {}).items()}
    errs = out.get("errorDistribution") or {}

    def us(key):
        v = pct.get(key)
        return None if v is None else round(v * 1e6, 1)

    return {
        "rate": round(rate),
        "duration_s": secs,
        "connections": connections,
        "achieved_rps": s.get("requestsPerSec"),
        "requests": sum(codes.values()),
        "ok_responses": codes.get("200", 0),
        "status_codes": codes,
        "errors": errs,
        "invalid_replies": sum(v for k, v in codes.items() if not k.startswith("2")),
        "socket_errors": sum(errs.values()),
        "p50_us": us("p50"),
        "p90_us": us("p90"),
        "p95_us": us("p95"),
        "p99_us": us("p99"),
        "p999_us": us("p99.9"),
        "max_us": None if s.get("slowest") is None else round(s["slowest"] * 1e6, 1),
    }


# ---------------------------------------------------------------- benchmark


def low_median(values: list):
    """The low median: with an even count, the lower middle value, so the result is always one of
    the values (two runs of a bimodal system are never blended into a figure neither produced)."""
    values = [v for v in values if v is not None]
    return statistics.median_low(values) if values else None


def _measure_cpu(pgids: set, fn: Callable[[], dict]) -> dict:
    before = group_cpu_ticks(pgids)
    data = fn()
    data["server_cpu_us"] = round((group_cpu_ticks(pgids) - before) * 1e6 / CLK_TCK)
    done = data.get("requests") or 0
    data["cpu_us_per_request"] = round(data["server_cpu_us"] / done, 1) if done else None
    return data


@dataclass
class Plan:
    """What each run does; from the command line."""

    duration: float
    warmup: float
    fractions: list
    slo_us: float
    open_connections: int
    sample_every: int
    start_timeout: float


def run_round(spec: SystemSpec, ctx: Ctx, plan: Plan, workers: int, bodies: str, probe: bytes, last: bool, entry):
    """One closed-loop run of one system (start, warm up, c64, c1, stop); on the system's last round
    also its open-loop sweep. Appends to ``entry["rounds"]``; a failure is recorded, never raised."""
    i = len(entry["rounds"]) + 1
    run: dict = {"round": i, "status": "ok"}
    entry["rounds"].append(run)
    port = free_port()
    nginx = spec.kind == "nginx"
    extra_text = NGINX_TEXT if nginx else ""
    t0 = time.monotonic()
    try:
        procs = spec.start(ctx, spec, port, workers)
        entry["commands"] = [" ".join(p.args) for p in procs]
        pgids = {p.pid for p in procs}
        wait_ready(port, procs, timeout=plan.start_timeout, probe_body=probe, nginx=nginx)
        run["startup_s"] = round(time.monotonic() - t0, 2)
        if not ctx.tools.get("wrk"):
            raise ToolError("wrk not found (apt-get install -y wrk)")
        warm = {"invalid_replies": 0, "socket_errors": 0}
        if plan.warmup > 0:  # its replies are checked too
            warm = run_wrk(ctx, port, 64, plan.warmup, bodies, f"{spec.name}-warmup", plan.sample_every, extra_text)
        c64 = _measure_cpu(
            pgids,
            lambda: run_wrk(ctx, port, 64, plan.duration, bodies, f"{spec.name}-c64", plan.sample_every, extra_text),
        )
        c1 = _measure_cpu(
            pgids,
            lambda: run_wrk(ctx, port, 1, plan.duration, bodies, f"{spec.name}-c1", plan.sample_every, extra_text),
        )
        check_probe(port, probe, nginx)  # still answering right after the load
        run["c64"], run["c1"] = c64, c1
        run["rps_64"] = round(c64["rps"], 1)
        run["cpu_us_per_request"] = c64["cpu_us_per_request"]
        run["p50_c1_us"] = c1["latency_us"]["p50"]
        run["p95_c1_us"] = c1["latency_us"]["p95"]
        run["p99_c1_us"] = c1["latency_us"]["p99"]
        run["invalid_replies"] = warm["invalid_replies"] + c64["invalid_replies"] + c1["invalid_replies"]
        run["socket_errors"] = warm["socket_errors"] + c64["socket_errors"] + c1["socket_errors"]
        run["valid"] = run["invalid_replies"] == 0 and run["socket_errors"] == 0
        first_bad = warm.get("first_bad") or c64.get("first_bad") or c1.get("first_bad")
        if first_bad:
            run["first_invalid_reply"] = first_bad
        log(
            f"{spec.name} round {i}: {run['rps_64']:,.0f} req/s @64, {run['cpu_us_per_request']} µs CPU/req, "
            f"p50/p99 @1 {run['p50_c1_us']}/{run['p99_c1_us']} µs, invalid {run['invalid_replies']}, "
            f"socket errors {run['socket_errors']}"
        )
        if last:
            summarize(entry)
            if entry["rps_64"]:
                entry["open_loop"] = open_loop_sweep(spec, ctx, plan, port, bodies, probe, pgids, entry["rps_64"])
    except ToolError as exc:
        run["status"], run["error"] = "error", str(exc)
    except Exception as exc:  # noqa: BLE001  -- a failing system must not stop the run
        run["status"], run["error"] = "error", f"{type(exc).__name__}: {exc}"
    finally:
        for p in ctx.pg.procs:
            if p.poll() is not None and run["status"] == "ok":
                run["status"] = "error"
                run["error"] = f"{p.name} died during the run (rc={p.returncode}):\n{log_tail(p.logpath)}"
        ctx.pg.stop_all()
    if run["status"] != "ok":
        run["valid"] = False
        log(f"{spec.name} round {i}: FAILED {run['error']}")


def open_loop_sweep(spec, ctx, plan: Plan, port, bodies, probe, pgids, own_max: float) -> dict:
    """oha at fractions of the system's own closed-loop max, up to its knee."""
    out: dict = {"base_rps": round(own_max, 1), "points": [], "slo_capacity_rps": None, "knee_rps": None}
    if not plan.fractions:
        return out
    if not ctx.tools.get("oha"):
        out["error"] = "oha not found (cargo install oha --locked)"
        return out
    for frac in plan.fractions:
        rate = own_max * frac
        point: dict = {"fraction": frac, "rate": round(rate)}
        out["points"].append(point)
        try:
            run = _measure_cpu(
                pgids,
                lambda rate=rate, tag=f"{spec.name}-q{frac:g}": run_oha(
                    ctx, port, rate, plan.duration, plan.open_connections, bodies, tag
                ),
            )
            check_probe(port, probe, spec.kind == "nginx")
        except (ToolError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            point["error"] = f"{type(exc).__name__}: {exc}"
            out["knee_rps"] = round(rate)
            break
        point.update(
            {k: run[k] for k in ("achieved_rps", "p50_us", "p95_us", "p99_us", "p999_us", "max_us", "status_codes")}
        )
        point["invalid_replies"] = run["invalid_replies"]
        point["socket_errors"] = run["socket_errors"]
        point["cpu_us_per_request"] = run.get("cpu_us_per_request")
        served = (run["achieved_rps"] or 0) >= 0.95 * rate
        point["within_slo"] = bool(
            run["p99_us"] is not None
            and run["p99_us"] < plan.slo_us
            and served
            and run["invalid_replies"] == 0
            and run["socket_errors"] == 0
        )
        log(
            f"{spec.name} open loop {frac:g} x {own_max:,.0f} = {rate:,.0f} req/s: p50 {run['p50_us']} µs, "
            f"p99 {run['p99_us']} µs, served {run['achieved_rps'] or 0:,.0f}/s, "
            f"invalid {run['invalid_replies']}, socket errors {run['socket_errors']}"
        )
        if point["within_slo"]:
            out["slo_capacity_rps"] = round(rate)
        else:
            out["knee_rps"] = round(rate)  # past the knee: higher rates only queue more
            break
    return out


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


def plot(entries: list, path: str, slo_us: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [e for e in entries if e.get("rps_64")]
    names = [e["name"] for e in ok]
    colors = ["#d62728" if n.startswith("warmslot") else "#1f77b4" for n in names]
    fig, axes = plt.subplots(1, 4, figsize=(22, 5.5))

    ax = axes[0]
    vals = [e["rps_64"] for e in ok]
    bars = ax.bar(names, vals, color=colors)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=7)
    ax.set_title("closed loop, 64 connections (wrk -t1)")
    ax.set_ylabel("requests / s")
    ax.tick_params(axis="x", rotation=40)

    ax = axes[1]
    vals = [e.get("cpu_us_per_request") or 0.1 for e in ok]
    bars = ax.bar(names, vals, color=colors)
    ax.bar_label(bars, labels=[f"{v:.0f}" for v in vals], fontsize=7)
    ax.set_title("server CPU time per request, 64 connections")
    ax.set_yscale("log")
    ax.set_ylabel("µs of CPU / request (log)")
    ax.tick_params(axis="x", rotation=40)

    ax = axes[2]
    xs = range(len(ok))
    ax.bar([x - 0.2 for x in xs], [e.get("p50_c1_us") or 0 for e in ok], width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [e.get("p99_c1_us") or 0 for e in ok], width=0.4, label="p99")
    ax.set_xticks(list(xs), names, rotation=40)
    ax.set_yscale("log")
    ax.set_ylabel("latency, µs (log)")
    ax.set_title("1 connection (wrk -t1 -c1)")
    ax.legend()

    ax = axes[3]
    for e in ok:
        pts = [(p["rate"], p["p99_us"]) for p in (e.get("open_loop") or {}).get("points", []) if p.get("p99_us")]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=e["name"])
    ax.axhline(slo_us, color="grey", linestyle="--", linewidth=1, label=f"SLO {slo_us / 1000:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate, req/s (fractions of each system's own max)")
    ax.set_ylabel("p99, µs (log), corrected for coordinated omission")
    ax.set_title("open loop (oha -q RATE --latency-correction)")
    ax.legend(fontsize=7)
    failed = [e["name"] for e in entries if not e.get("rps_64")]
    if failed:
        fig.text(0.01, 0.01, "failed or invalid: " + ", ".join(failed), fontsize=8, color="#d62728")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
        "--quick",
        action="store_true",
        help="1 round, 2 s per figure, 1 s warm-up, open loop at 0.5, 0.8 and 1.0 of each system's max",
    )
    ap.add_argument("--duration", type=float, help="seconds per measurement (default 10, quick 2)")
    ap.add_argument("--warmup", type=float, help="seconds of wrk -c64 warm-up before each run (default 3, quick 1)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds, i.e. runs per system (default 3, quick 1)")
    ap.add_argument(
        "--fractions",
        help="open-loop rates as fractions of each system's own closed-loop max, swept in order until the "
        "knee (default 0.2,0.4,0.6,0.7,0.8,0.9,1.0; quick 0.5,0.8,1.0; '' skips the open loop)",
    )
    ap.add_argument("--slo-ms", type=float, default=10.0, help="open-loop p99 SLO in ms (default 10)")
    ap.add_argument("--open-connections", type=int, default=64, help="oha connections (default 64)")
    ap.add_argument(
        "--sample-every", type=int, default=16, help="wrk checks every Nth reply in full (default 16; 1: all)"
    )
    ap.add_argument(
        "--workers",
        type=int,
        help="worker processes of the multi-worker systems (default: the server's cores, 2 on 2 cores; 1 with --pin)",
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="one server core: servers on core 1 (taskset -c 1), generators on core 0 (needs 2+ cores)",
    )
    ap.add_argument(
        "--cpu-us",
        type=float,
        default=0.0,
        help="make the bot CPU-bound: every system burns about this many µs of pure Python per event "
        "(a fixed loop count, calibrated once here, so every system does the same work; default 0)",
    )
    ap.add_argument(
        "--cpu-iters",
        type=int,
        default=0,
        help="with --cpu-us: use this loop count instead of calibrating (the calibration follows the "
        "machine's speed at that moment; a fixed count keeps the work the same across runs)",
    )
    ap.add_argument("--start-timeout", type=float, default=30.0)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--plot", metavar="PATH", help="chart (PNG) path (default: bench.png in the logs directory)")
    ap.add_argument("--no-plot", action="store_true", help="draw no chart")
    ap.add_argument("--logs", metavar="DIR", help="keep server/generator logs here (default: a temp dir)")
    ap.add_argument("--no-install", action="store_true", help="do not apt/pip/cargo install missing tools")
    ap.add_argument("--install-only", action="store_true", help="install the tools and exit")
    args = ap.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems {unknown}; choose from {ALL_SYSTEMS}")
    if args.fractions is None:
        args.fractions = "0.5,0.8,1.0" if args.quick else "0.2,0.4,0.6,0.7,0.8,0.9,1.0"
    args.fractions = [float(x) for x in args.fractions.split(",") if x.strip()]
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.pin and (os.cpu_count() or 1) < 2:
        ap.error("--pin needs at least 2 cores (server on core 1, generators on core 0)")
    server_cores = 1 if args.pin else len(os.sched_getaffinity(0))
    args.server_cores = server_cores
    if args.workers is None:
        args.workers = server_cores
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
    want_plot = not args.no_plot
    if args.install_only:  # everything bench.py, run_locust.py and the tests use
        tools = ensure_tools(ALL_SYSTEMS, need_oha=True, need_plot=True, install=True, need_locust=True)
        print(json.dumps(tools, indent=2))
        return 0 if all(tools.values()) else 1
    tools = ensure_tools(args.systems, need_oha=bool(args.fractions), need_plot=want_plot, install=not args.no_install)
    if args.pin and not tools["taskset"]:
        log("--pin needs taskset (util-linux)")
        return 2

    if args.cpu_us > 0:
        sys.path.insert(0, BOTS)
        import botlogic

        os.environ["BOT_CPU_ITERS"] = str(args.cpu_iters or botlogic.calibrate(args.cpu_us))
        how = "given by --cpu-iters" if args.cpu_iters else f"~{args.cpu_us:.0f} µs here"
        log(f"CPU-bound bot: {os.environ['BOT_CPU_ITERS']} loop iterations per event ({how})")
    elif args.cpu_iters:
        log("--cpu-iters needs --cpu-us")
        return 2
    logdir = args.logs or tempfile.mkdtemp(prefix="warmslot-bench-")
    os.makedirs(logdir, exist_ok=True)
    bodies = events.write_bodies(os.path.join(logdir, "bodies.jsonl"))
    probe = json.dumps(events.make_event(0) | {"conversation": "bench-probe"}, separators=(",", ":")).encode()
    ctx = Ctx(logdir=logdir, tools=tools, pg=ProcessGroup())
    if args.pin:
        ctx.server_prefix = [tools["taskset"], "-c", "1"]
        ctx.client_prefix = [tools["taskset"], "-c", "0"]
    plan = Plan(
        duration=args.duration,
        warmup=args.warmup,
        fractions=args.fractions,
        slo_us=args.slo_ms * 1000,
        open_connections=args.open_connections,
        sample_every=args.sample_every,
        start_timeout=args.start_timeout,
    )
    log(f"logs in {logdir}")

    entries = []
    for name in args.systems:
        spec = SYSTEMS[name]
        workers = args.workers if spec.multi_worker else 1
        entries.append(
            {
                "name": name,
                "label": spec.label,
                "workers": workers,
                "cpus": args.server_cores,
                "status": "not run",
                "notes": system_notes(spec, workers),
                "rounds": [],
            }
        )
    interrupted = False
    try:
        for rnd in range(args.rounds):
            for entry in entries:
                spec = SYSTEMS[entry["name"]]
                log(f"== round {rnd + 1}/{args.rounds}: {spec.name} ({spec.label}, {entry['workers']} worker(s))")
                run_round(spec, ctx, plan, entry["workers"], bodies, probe, rnd == args.rounds - 1, entry)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping servers")
    finally:
        ctx.pg.stop_all()
    for entry in entries:
        summarize(entry)

    ratios = all_ratios(entries)
    table = markdown(entries, ratios, args.slo_ms)
    report = {
        "meta": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
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
            "elapsed_s": round(time.monotonic() - t_start, 1),
        },
        "versions": versions(tools),
        "systems": entries,
        "ratios": ratios,
        "table_markdown": table,
    }
    print(table)
    print(f"\n(elapsed {report['meta']['elapsed_s']} s; logs in {logdir})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"JSON written to {args.json}")
    if want_plot:
        path = args.plot or os.path.join(logdir, "bench.png")
        try:
            plot(entries, path, plan.slo_us)
            print(f"chart written to {path}")
        except Exception as exc:  # noqa: BLE001  -- the figures are out already
            print(f"chart failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
