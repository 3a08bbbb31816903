"""The ``warmslot`` command: ``run`` an app, or try the bundled ``demo``."""

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
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--seconds", type=float, default=5.0)
    demo.add_argument("--clients", type=int, default=8)
    demo.add_argument("--exit", action="store_true", help="stop after the report instead of serving until Ctrl-C")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "warning").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "run":
            app = load_app(args.target)
            app.target = args.target  # worker processes import the app the same way
            if args.isolation:
                app.isolation = args.isolation
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


if __name__ == "__main__":
    sys.exit(main())
