"""Paths and constants every part of the benchmark shares, and its log line."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # loadtests/
ROOT = os.path.dirname(HERE)
BOTS = os.path.join(HERE, "bots")
LUA = os.path.join(HERE, "wrk", "post.lua")
REQUIREMENTS = os.path.join(HERE, "requirements.txt")

OHA_VERSION = "1.16.0"  # pinned: oha's JSON output changes between versions
HOOK_PATH = "/hooks/support"
NGINX_TEXT = "static"
NGINX_BODY = '{"reply":"echo: ' + NGINX_TEXT + '","turn":1}'
HISTORY_LEN = 10  # botlogic.HISTORY_LEN: a reply's "turn" is in 1..10


def log(*args: object) -> None:
    print("[bench]", *args, file=sys.stderr, flush=True)
