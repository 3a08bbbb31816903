"""Smoke tests of loadtests/: the locust users against a real warmslot server,
and a tiny bench run (warmslot vs uvicorn) that must produce complete JSON.

Needs warmslot installed and the load tools present; a missing tool is a
failure with the command that installs it, never a skip:
    python loadtests/bench.py --install-only
(apt wrk nginx redis-server, pip -r loadtests/requirements.txt, cargo oha)
Runtime: about 25-35 s on 2 cores.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADTESTS = os.path.join(ROOT, "loadtests")
INSTALL_HINT = "install the load tools with: python loadtests/bench.py --install-only"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require_module(name: str) -> None:
    r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(
            f"python module {name!r} is missing ({r.stderr.strip().splitlines()[-1:]}); "
            + ("build/install warmslot first (maturin develop --release)" if name == "warmslot" else INSTALL_HINT)
        )


def _require_tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (os.path.expanduser(f"~/.cargo/bin/{name}"), f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if not path:
        pytest.fail(f"tool {name!r} is not installed; {INSTALL_HINT}")
    return path


def _warmslot_cmd() -> list:
    exe = os.path.join(os.path.dirname(sys.executable), "warmslot")
    if os.access(exe, os.X_OK):
        return [exe]
    return [shutil.which("warmslot")] if shutil.which("warmslot") else [sys.executable, "-m", "warmslot"]


@pytest.fixture
def warmslot_server(tmp_path):
    _require_module("warmslot")
    port = _free_port()
    log = open(tmp_path / "warmslot.log", "wb")
    proc = subprocess.Popen(
        _warmslot_cmd() + ["run", "loadtests/bots/warmslot_bot.py:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"warmslot exited with {proc.returncode}:\n"
                    + (tmp_path / "warmslot.log").read_text(errors="replace")[-2000:]
                )
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    "warmslot did not answer GET /healthz within 20 s:\n"
                    + (tmp_path / "warmslot.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.05)
        yield url
    finally:
        for sig in (15, 9):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=5)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def test_locust_users_against_warmslot(warmslot_server, tmp_path):
    _require_module("locust")
    out = tmp_path / "locust.json"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(LOADTESTS, "run_locust.py"),
            "--host",
            warmslot_server,
            "--seconds",
            "4",
            "--users",
            "20",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.exists(), f"run_locust.py wrote no summary (rc={r.returncode}):\n{r.stdout}\n{r.stderr}"
    summary = json.loads(out.read_text())
    agg = summary["aggregated"]
    assert agg["requests"] > 0, r.stdout
    assert agg["failures"] == 0, f"{summary['failures']}\n{r.stdout}"
    assert r.returncode == 0, r.stdout + r.stderr
    # both kinds of users ran: sync replies and async executions polled to the end
    names = set(summary["by_name"])
    assert "POST /hooks/support" in names, names
    assert "ASYNC support end-to-end" in names, names
    # signed webhooks were delivered (HMAC checked in Rust) and forged ones refused with 401
    assert "POST /hooks/github" in names, names


def test_bench_warmslot_vs_uvicorn_json(tmp_path):
    _require_module("warmslot")
    for mod in ("uvicorn", "httptools", "uvloop"):
        _require_module(mod)
    _require_tool("wrk")
    _require_tool("oha")
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(LOADTESTS, "bench.py"),
            "--systems",
            "warmslot,uvicorn",
            "--quick",
            "--duration",
            "1",
            "--no-install",
            "--json",
            str(out),
            "--logs",
            str(tmp_path / "logs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.exists(), r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert set(report["systems"]) == {"warmslot", "uvicorn"}
    for name, res in report["systems"].items():
        assert res["status"] == "ok", f"{name}: {res.get('error')}"
        assert res["throughput"]["rps"] > 0, name
        c1 = res["latency_c1"]
        for key in ("p50_us", "p95_us", "p99_us"):
            assert c1[key] and c1[key] > 0, (name, key, c1)
        assert c1["errors"] == 0, (name, c1["runs"])
        measured = [e for e in res["open_loop"] if "p99_us" in e]
        assert measured, (name, res["open_loop"])
        for e in res["open_loop"]:
            assert "error" not in e, (name, e)
            if "skipped" not in e:
                assert all(e[k] and e[k] > 0 for k in ("p50_us", "p95_us", "p99_us")), (name, e)
                assert e["p50_us"] <= e["p95_us"] <= e["p99_us"], (name, e)
    assert report["rate_base"]["system"] == "uvicorn"
    assert "warmslot" in report["ratios_vs_uvicorn"]
    assert "| warmslot |" in r.stdout and "| uvicorn |" in r.stdout
