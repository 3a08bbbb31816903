"""One system's run in one round (start, warm up, closed loop at 64 and 1 connections, stop),
and its open-loop sweep on the last round."""

from __future__ import annotations

import functools
import subprocess
import time

from .common import NGINX_TEXT, log
from .context import Ctx, Plan, SystemSpec
from .drivers import ToolError, run_oha, run_wrk
from .probes import check_probe, wait_ready
from .processes import free_port, log_tail
from .stats import measure_cpu, summarize


def run_round(
    spec: SystemSpec, ctx: Ctx, plan: Plan, workers: int, bodies: str, probe: bytes, last: bool, entry: dict
) -> None:
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
        c64 = measure_cpu(
            pgids,
            lambda: run_wrk(ctx, port, 64, plan.duration, bodies, f"{spec.name}-c64", plan.sample_every, extra_text),
        )
        c1 = measure_cpu(
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


def open_loop_sweep(
    spec: SystemSpec, ctx: Ctx, plan: Plan, port: int, bodies: str, probe: bytes, pgids: set, own_max: float
) -> dict:
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
            run = measure_cpu(
                pgids,
                functools.partial(
                    run_oha, ctx, port, rate, plan.duration, plan.open_connections, bodies, f"{spec.name}-q{frac:g}"
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
