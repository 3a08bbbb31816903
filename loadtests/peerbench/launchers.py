"""Starting each system: warmslot (thread or process slots), uvicorn, granian, Celery, nginx.

Each ``start_*(ctx, spec, port, workers)`` starts the system's processes in ``ctx.pg`` and
returns them; ready checks are the caller's (``probes.wait_ready``)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Optional

from .common import BOTS, NGINX_BODY
from .context import Ctx, SystemSpec
from .processes import free_port, log_tail
from .tools import py_has


def _peer_env(extra: Optional[dict] = None) -> dict:
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
    if not py_has("warmslot"):
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
            raise RuntimeError("redis-server did not start:\n" + log_tail(redis.logpath))  # type: ignore[attr-defined]
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
