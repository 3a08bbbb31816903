"""The ``warmslot`` command: ``run`` an app, try the bundled ``demo``, or ``simulate`` scaling
policies against arrival traces."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from .loader import LoadError, load_app


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="warmslot", description="Serve Python bot pipelines behind webhooks.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve an app: warmslot run examples/echo.py:app")
    run.add_argument("target", help="PATH.py[:APP] or MODULE[:APP] (APP defaults to 'app')")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])

    demo = sub.add_parser("demo", help="serve the bundled example bots and drive a short load at them")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--seconds", type=float, default=5.0)
    demo.add_argument("--clients", type=int, default=8)
    demo.add_argument("--exit", action="store_true", help="stop after the report instead of serving until Ctrl-C")

    sim = sub.add_parser(
        "simulate",
        help="replay arrival traces against a model of a pipeline's pool and score the scaling policies",
        description="Replays arrival traces against a model of one pipeline's pool (no server) and prints, per "
        "trace and overall, each policy's cold-start rate (events that waited for a slot to warm up), idle "
        "slot-seconds (warm slots running nothing) and p50/p99 wait.",
    )
    sim.add_argument(
        "--trace",
        action="append",
        metavar="NAME|FILE.csv",
        help="built-in trace (poisson, diurnal, bursts, flash, onoff; default: all) or a CSV of arrival "
        "timestamps in seconds, or of per-minute counts (Azure Functions 2019 format); repeatable",
    )
    sim.add_argument(
        "--policy",
        action="append",
        choices=["static", "reactive", "predictive"],
        help="policy to score (default: all three); repeatable",
    )
    sim.add_argument("--seed", type=int, default=0, help="random seed for traces and service times (default 0)")
    sim.add_argument("--warmup", type=float, default=1.0, help="seconds a slot takes to warm up (default 1.0)")
    sim.add_argument("--service", type=float, default=0.2, help="mean service time in seconds (default 0.2)")
    sim.add_argument("--min-slots", type=int, default=1, help="slots kept warm at least (default 1)")
    sim.add_argument("--max-slots", type=int, default=32, help="slots the pool may grow to (default 32)")
    sim.add_argument("--concurrency", type=int, default=1, help="events one slot runs at once (default 1)")
    sim.add_argument("--json", action="store_true", help="print the scores as JSON")
    sim.add_argument("--plot", metavar="FILE.png", help="draw arrivals, forecast, target and warm slots (matplotlib)")

    args = parser.parse_args(argv)
    if args.command == "simulate":
        return _simulate(args)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "warning").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "run":
            app = load_app(args.target)
            app.serve(args.host, args.port)
            return 0
        from .demo import run_demo

        return run_demo(args.host, args.port, args.seconds, args.clients, keep_serving=not args.exit)
    except LoadError as exc:
        print(f"warmslot: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"warmslot: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _simulate(args: argparse.Namespace) -> int:
    import json

    from .simulate import BUILTIN, POLICIES, PoolModel, format_table, plot, simulate

    if args.min_slots < 1 or args.max_slots < args.min_slots:
        print(
            f"warmslot: need 1 <= --min-slots <= --max-slots (got {args.min_slots}, {args.max_slots})", file=sys.stderr
        )
        return 2
    if args.warmup < 0 or args.service <= 0 or args.concurrency < 1:
        print("warmslot: --warmup must be >= 0, --service > 0 and --concurrency >= 1", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "warmslot: --plot needs matplotlib: pip install 'warmslot[plot]' (or pip install matplotlib)",
                file=sys.stderr,
            )
            return 2
    model = PoolModel(
        warmup_s=args.warmup,
        service_s=args.service,
        min_slots=args.min_slots,
        max_slots=args.max_slots,
        concurrency=args.concurrency,
    )
    policies = list(dict.fromkeys(args.policy)) if args.policy else list(POLICIES)
    try:
        report, results = simulate(args.trace or list(BUILTIN), policies, args.seed, model)
    except (ValueError, OSError) as exc:
        print(f"warmslot: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    if args.plot:
        plot(results, args.plot)
        if not args.json:
            print(f"chart written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
