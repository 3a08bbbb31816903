"""The ``warmslot`` command: ``run`` an app, or try the bundled ``demo``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys
from typing import List, Optional

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


class _NoTraceback(logging.Formatter):
    """Log lines without tracebacks (they appear with --log-level debug)."""

    def format(self, record: logging.LogRecord) -> str:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return super().format(record)


class _QuietWarmUp(logging.Filter):
    """Drops warm-up failure lines while the server starts: `StartupError` reports them, one line
    per pipeline."""

    starting = True

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.starting and "failed to warm up" in record.getMessage())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="warmslot", description="Serve Python bot pipelines behind webhooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    levels = ["debug", "info", "warning", "error"]

    run = sub.add_parser("run", help="serve an app: warmslot run examples/echo.py:app")
    run.add_argument("target", help="PATH.py[:APP] or MODULE[:APP] (APP defaults to 'app')")
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", default="8000", help="port to listen on, 0-65535 (default 8000; 0 picks a free one)")
    run.add_argument(
        "--log-level", default="warning", choices=levels, help="debug also prints tracebacks (default warning)"
    )
    run.add_argument(
        "--isolation",
        choices=["thread", "process"],
        help="default isolation of the app's pipelines: thread slots in this interpreter, or warm worker "
        "processes (every core; a crash or hang costs one execution). A pipeline's own isolation= wins.",
    )

    demo = sub.add_parser(
        "demo", help="serve the bundled example bots, drive a short load at them and print the live dashboard's URL"
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", default="8000")
    demo.add_argument("--seconds", type=float, default=5.0)
    demo.add_argument("--clients", type=int, default=8)
    demo.add_argument("--exit", action="store_true", help="stop after the report instead of serving until Ctrl-C")
    demo.add_argument("--log-level", default="warning", choices=levels)

    args = parser.parse_args(argv)
    problem = _check_host(args.host) or _check_port(args.port)
    if problem:
        print(f"warmslot: {problem}", file=sys.stderr)
        return 2
    port = int(args.port)
    host = args.host[1:-1] if args.host.startswith("[") and args.host.endswith("]") else args.host
    debug = args.log_level == "debug"
    handler = logging.StreamHandler()
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt) if debug else _NoTraceback(fmt))
    quiet = _QuietWarmUp()
    if not debug:
        handler.addFilter(quiet)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    try:
        if args.command == "run":
            from .app import StartupError

            app = load_app(args.target)
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
        print(f"warmslot: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"warmslot: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
