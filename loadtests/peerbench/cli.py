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
import json
import os
import signal
import sys
import tempfile
import time
from types import FrameType
from typing import List, Optional

import events  # loadtests/events.py

from .chart import plot
from .common import BOTS, log
from .context import Ctx, Plan, SystemSpec
from .processes import ProcessGroup
from .report import json_report, markdown, run_meta
from .rounds import run_round
from .stats import all_ratios, summarize
from .systems import ALL_SYSTEMS, SYSTEMS, system_notes
from .tools import ensure_tools, versions


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
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


def _on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C, SIGTERM, SIGHUP: stop every server we started, then exit 130.
    (SIGINT too: a shell that starts us in the background sets it to "ignore".)"""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)


def _install_only() -> int:
    """Everything bench.py, run_locust.py and the tests use; prints where each tool is."""
    tools = ensure_tools(list(SYSTEMS.values()), need_oha=True, need_plot=True, install=True, need_locust=True)
    print(json.dumps(tools, indent=2))
    return 0 if all(tools.values()) else 1


def _make_bot_cpu_bound(cpu_us: float, cpu_iters: int) -> None:
    """Every system's bot reads ``BOT_CPU_ITERS``: the loop count, calibrated here unless given."""
    sys.path.insert(0, BOTS)
    import botlogic

    os.environ["BOT_CPU_ITERS"] = str(cpu_iters or botlogic.calibrate(cpu_us))
    how = "given by --cpu-iters" if cpu_iters else f"~{cpu_us:.0f} µs here"
    log(f"CPU-bound bot: {os.environ['BOT_CPU_ITERS']} loop iterations per event ({how})")


def _plan(args: argparse.Namespace) -> Plan:
    return Plan(
        duration=args.duration,
        warmup=args.warmup,
        fractions=args.fractions,
        slo_us=args.slo_ms * 1000,
        open_connections=args.open_connections,
        sample_every=args.sample_every,
        start_timeout=args.start_timeout,
    )


def _new_entry(spec: SystemSpec, args: argparse.Namespace) -> dict:
    """A system's record in the report, before its first round."""
    workers = args.workers if spec.multi_worker else 1
    return {
        "name": spec.name,
        "label": spec.label,
        "workers": workers,
        "cpus": args.server_cores,
        "status": "not run",
        "notes": system_notes(spec, workers),
        "rounds": [],
    }


def _run_rounds(args: argparse.Namespace, ctx: Ctx, plan: Plan, entries: list, bodies: str, probe: bytes) -> bool:
    """Interleaved rounds: each round runs every system once. Returns whether it was interrupted."""
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
    return interrupted


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    _stop_on_signals()
    t_start = time.monotonic()
    want_plot = not args.no_plot
    if args.install_only:
        return _install_only()
    specs = [SYSTEMS[name] for name in args.systems]
    tools = ensure_tools(specs, need_oha=bool(args.fractions), need_plot=want_plot, install=not args.no_install)
    if args.pin and not tools["taskset"]:
        log("--pin needs taskset (util-linux)")
        return 2
    if args.cpu_us > 0:
        _make_bot_cpu_bound(args.cpu_us, args.cpu_iters)
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
    plan = _plan(args)
    log(f"logs in {logdir}")

    entries = [_new_entry(spec, args) for spec in specs]
    interrupted = _run_rounds(args, ctx, plan, entries, bodies, probe)
    for entry in entries:
        summarize(entry)

    ratios = all_ratios(entries)
    table = markdown(entries, ratios, args.slo_ms)
    meta = run_meta(args, logdir, interrupted, elapsed_s=round(time.monotonic() - t_start, 1), argv=argv)
    report = json_report(meta, versions(tools), entries, ratios, table)
    print(table)
    print(f"\n(elapsed {meta['elapsed_s']} s; logs in {logdir})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"JSON written to {args.json}")
    if want_plot:
        path = args.plot or os.path.join(logdir, "bench.png")
        try:
            note = f"{meta['time']} · commit {(meta['commit'] or 'unknown')[:12]} · {meta['command']}"
            plot(entries, path, plan.slo_us, note)
            print(f"chart written to {path}")
        except Exception as exc:  # noqa: BLE001  -- the figures are out already
            print(f"chart failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 130 if interrupted else 0
