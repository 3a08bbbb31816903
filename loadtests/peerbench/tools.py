"""The load tools and peers: finding them, installing what is missing, and their versions."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import List, Optional

from .common import OHA_VERSION, REQUIREMENTS, log
from .context import SystemSpec


def cargo_bin(name: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    cand = os.path.join(os.path.expanduser("~"), ".cargo", "bin", name)
    return cand if os.access(cand, os.X_OK) else None


def which_any(name: str) -> Optional[str]:
    return shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)


def py_has(module: str) -> bool:
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return r.returncode == 0


def _timed(cmd: list, **kw) -> int:
    log("$", " ".join(cmd))
    t0 = time.monotonic()
    rc = subprocess.run(cmd, **kw).returncode
    log(f"  -> rc={rc} in {time.monotonic() - t0:.1f}s")
    return rc


def ensure_tools(
    specs: List[SystemSpec], need_oha: bool, need_plot: bool, install: bool, need_locust: bool = False
) -> dict:
    """Install what the systems ``specs`` and the options need and is missing (apt, pip, cargo);
    return {tool: path or None}."""
    kinds = {spec.kind for spec in specs}
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
    if any(spec.target in ("fastapi_bot:app", "celery_bot:app") for spec in specs):
        py_modules.append("fastapi")
    if "celery" in kinds:
        py_modules += ["celery", "redis"]
    if need_plot:
        py_modules.append("matplotlib")
    if need_locust:
        py_modules.append("locust")
    missing_py = [m for m in py_modules if not py_has(m)]
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
