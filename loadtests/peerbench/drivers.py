"""The load generators: wrk (closed loop) and oha (open loop), run and their output parsed."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from typing import Optional

from .common import HOOK_PATH, LUA
from .context import Ctx


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

    def us(key: str) -> Optional[float]:
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
