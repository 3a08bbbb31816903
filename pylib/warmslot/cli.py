"""The ``warmslot`` command: ``run`` an app, try the bundled ``demo``, or ``simulate`` scaling
policies against arrival traces."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys
import textwrap
from typing import List, Optional

from . import logs
from .loader import LoadError, load_app

#: A DNS host name (RFC 1123 labels); IP addresses are checked with `ipaddress`.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


def _check_host(host: str) -> Optional[str]:
    """Why `host` cannot be listened on, or None."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return None
    except ValueError:
        pass
    if _HOSTNAME.match(host):
        return None
    return f"--host {host!r} is not an IP address or a host name (try 127.0.0.1, 0.0.0.0 or localhost)"


def _check_port(port: str) -> Optional[str]:
    if not re.fullmatch(r"\d{1,5}", port.strip()) or int(port) > 65535:
        return f"--port {port!r} is not a port number from 0 to 65535 (0 picks a free port)"
    return None


#: The HTTP routes, as `warmslot run --help` and `warmslot demo --help` list them.
ROUTES = """\
routes:
  POST /hooks/<pipeline>   a webhook: runs the pipeline on the JSON body, answers its reply
  GET  /healthz            200 once every pipeline has its minimum of warm slots
  GET  /dashboard          live charts; /stats: the same per-second series as JSON
  GET  /metrics            Prometheus metrics
  GET  /executions         finished executions, newest first; without ?status= only the
                           failed ones. ?status=succeeded|failed|timed_out, ?pipeline=<name>,
                           ?limit=<n> (default 100)
  GET  /executions/<id>    one execution (id from the x-warmslot-execution-id header)
/metrics, /stats, /dashboard and /executions* need "Authorization: Bearer <token>" when an admin
token is set (App(admin_token=...) or WARMSLOT_ADMIN_TOKEN); /dashboard also takes ?token=<token>.
"""


class _QuietWarmUp(logging.Filter):
    """Drops warm-up failure lines while the server starts: `StartupError` reports them, one line
    per pipeline."""

    starting = True

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.starting and "failed to warm up" in record.getMessage())


def main(argv: Optional[List[str]] = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="warmslot", description="Serve Python bot pipelines behind webhooks.")
    parser.add_argument("--version", action="version", version=f"warmslot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    levels = list(logs.LEVELS)
    log_format_help = (
        "text (the default) or json: one object a line with time, level, logger, message and, where "
        "they apply, pipeline, execution_id and key"
    )

    run = sub.add_parser(
        "run",
        help="serve an app: warmslot run examples/echo.py:app",
        description=textwrap.fill(
            "Serves the App that TARGET names until Ctrl-C or SIGTERM, then drains: webhooks get 503 while "
            "accepted executions finish (up to the App's drain_timeout, 10 s by default)."
        ),
        epilog=ROUTES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("target", help="PATH.py[:APP] or MODULE[:APP] (APP defaults to 'app')")
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", default="8000", help="port to listen on, 0-65535 (default 8000; 0 picks a free one)")
    run.add_argument(
        "--log-level", default="warning", choices=levels, help="debug also prints tracebacks (default warning)"
    )
    run.add_argument("--log-format", default="text", choices=logs.FORMATS, help=log_format_help)
    run.add_argument(
        "--isolation",
        choices=["thread", "process"],
        help="default isolation of the app's pipelines: thread slots in this interpreter, or warm worker "
        "processes (every core; a crash or hang costs one execution). A pipeline's own isolation= wins.",
    )

    demo = sub.add_parser(
        "demo",
        help="serve the bundled example bots, drive a short load at them and print the live dashboard's URL",
        description=textwrap.fill(
            "Serves the bundled example bots, drives --seconds of load at them from --clients keep-alive clients, "
            "prints the latencies, then serves on until Ctrl-C or SIGTERM (or stops, with --exit), draining as "
            "`warmslot run` does."
        ),
        epilog=ROUTES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument("--port", default="8000", help="port to listen on, 0-65535 (default 8000; 0 picks a free one)")
    demo.add_argument("--seconds", type=float, default=5.0, help="seconds of load to drive (default 5)")
    demo.add_argument("--clients", type=int, default=8, help="keep-alive clients driving it (default 8)")
    demo.add_argument("--exit", action="store_true", help="stop after the report instead of serving until Ctrl-C")
    demo.add_argument("--log-level", default="warning", choices=levels)
    demo.add_argument("--log-format", default="text", choices=logs.FORMATS, help=log_format_help)

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
    sim.add_argument(
        "--min-slots",
        type=int,
        default=1,
        help="slots kept warm at least (default 1); the static policy keeps exactly this many, so with 1 it "
        "queues whatever one slot cannot keep up with",
    )
    sim.add_argument("--max-slots", type=int, default=32, help="slots the pool may grow to (default 32)")
    sim.add_argument("--concurrency", type=int, default=1, help="events one slot runs at once (default 1)")
    sim.add_argument("--json", action="store_true", help="print the scores as JSON")
    sim.add_argument("--plot", metavar="FILE.png", help="draw arrivals, forecast, target and warm slots (matplotlib)")

    args = parser.parse_args(argv)
    if args.command == "simulate":
        return _simulate(args)
    problem = _check_host(args.host) or _check_port(args.port)
    if problem:
        print(f"warmslot: {problem}", file=sys.stderr)
        return 2
    port = int(args.port)
    host = args.host[1:-1] if args.host.startswith("[") and args.host.endswith("]") else args.host
    # Before the app is loaded: the Rust core's messages follow this configuration too.
    handler = logs.configure(args.log_level, args.log_format)
    quiet = _QuietWarmUp()
    if args.log_level != "debug":
        handler.addFilter(quiet)
    try:
        if args.command == "run":
            from .app import StartupError

            app = load_app(args.target)
            if not app.pipelines:
                raise LoadError(
                    f'{args.target} has no pipelines: declare one with @app.pipeline("name") above a function'
                )
            app.target = args.target  # worker processes import the app the same way
            if args.isolation:
                app.isolation = args.isolation
            try:
                app._on_serving = lambda: setattr(quiet, "starting", False)
                app.serve(host, port)
            except StartupError as exc:
                for line in exc.failures.values():  # "slot N of pipeline 'x' failed to warm up: Exc: msg"
                    print(f"warmslot: {line}", file=sys.stderr)
                return 1
            return 0
        from .demo import run_demo

        return run_demo(host, port, args.seconds, args.clients, keep_serving=not args.exit)
    except LoadError as exc:
        cause = exc.__cause__
        hint = ""
        if isinstance(cause, Exception) and not isinstance(cause, SyntaxError):
            if args.log_level == "debug":
                logging.getLogger("warmslot").debug("loading %s failed", args.target, exc_info=cause)
            else:
                hint = " (--log-level debug prints the traceback)"
        print(f"warmslot: {exc}{hint}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"warmslot: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _simulate(args: argparse.Namespace) -> int:
    import json

    from .simulate import BUILTIN, POLICIES, PoolModel, format_table, plot, simulate, static_note

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
        note = static_note(report, results, model)
        if note:
            print("\n" + textwrap.fill(note, 100))
    if args.plot:
        plot(results, args.plot)
        if not args.json:
            print(f"chart written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
