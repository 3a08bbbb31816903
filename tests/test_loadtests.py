"""Smoke tests of loadtests/: the locust users against a real warmslot server, the reply checks of
the wrk script against a real server that answers wrong, how the bench reports a system that does
not start, its ratio arithmetic, and a tiny bench run (warmslot vs uvicorn) whose JSON must hold
every field the README promises.

Needs warmslot installed and the load tools present; a missing tool is a failure with the command
that installs it, never a skip:
    python loadtests/bench.py --install-only
(apt wrk nginx redis-server, pip -r loadtests/requirements.txt, cargo oha)
Runtime: about 40 s on 2 cores.
"""

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADTESTS = os.path.join(ROOT, "loadtests")
INSTALL_HINT = "install the load tools with: python loadtests/bench.py --install-only"

sys.path.insert(0, LOADTESTS)
import events  # noqa: E402
from peerbench import context, drivers, processes, rounds, stats  # noqa: E402


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


def _reply_server(make_reply):
    """A real HTTP/1.1 keep-alive server on loopback; ``make_reply(event) -> (status, body)``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, body = make_reply(event)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    "name, make_reply, sample_every, invalid",
    [
        ("right", lambda e: (200, json.dumps({"reply": "echo: " + e["text"], "turn": 3}).encode()), 1, False),
        ("status 500", lambda e: (500, b'{"reply":"echo: x","turn":1}'), 16, True),
        ("no turn", lambda e: (200, json.dumps({"reply": "echo: " + e["text"]}).encode()), 16, True),
        # passes the cheap check, fails only the full one
        (
            "extra member",
            lambda e: (200, json.dumps({"reply": "echo: " + e["text"], "turn": 1, "x": 1}).encode()),
            1,
            True,
        ),
        ("turn 11", lambda e: (200, json.dumps({"reply": "echo: " + e["text"], "turn": 11}).encode()), 1, True),
        ("other text", lambda e: (200, b'{"reply":"echo: something else","turn":1}'), 1, True),
    ],
)
def test_wrk_script_checks_every_reply(tmp_path, name, make_reply, sample_every, invalid):
    wrk = _require_tool("wrk")
    server = _reply_server(make_reply)
    try:
        ctx = context.Ctx(logdir=str(tmp_path), tools={"wrk": wrk}, pg=processes.ProcessGroup())
        bodies = events.write_bodies(str(tmp_path / "bodies.jsonl"), count=50)
        data = drivers.run_wrk(ctx, server.server_address[1], 2, 1, bodies, "check", sample_every, "")
    finally:
        server.shutdown()
        server.server_close()
    assert data["requests"] > 0 and data["checked"] > 0, data
    if sample_every == 1:
        assert data["sampled"] == data["checked"], data
    if invalid:
        assert data["invalid_replies"] > 0, (name, data)
        assert data["first_bad"], (name, data)
    else:
        assert data["invalid_replies"] == 0, (name, data)
        assert data["first_bad"] == "", (name, data)


def test_a_system_that_does_not_start_is_reported_with_its_output(tmp_path):
    def start_broken(ctx, spec, port, workers):
        cmd = [sys.executable, "-c", "import sys; sys.stderr.write('boom: no isolation argument\\n'); sys.exit(3)"]
        return [ctx.pg.start(spec.name, cmd, ctx.logdir)]

    spec = context.SystemSpec("broken", "warmslot", "a server that exits at once", start_broken)
    ctx = context.Ctx(logdir=str(tmp_path), tools={"wrk": _require_tool("wrk")}, pg=processes.ProcessGroup())
    plan = context.Plan(
        duration=1,
        warmup=0,
        fractions=[],
        slo_us=10_000,
        open_connections=4,
        sample_every=16,
        start_timeout=10,
    )
    entry = {"name": "broken", "workers": 1, "cpus": 1, "rounds": []}
    probe = events.make_bodies(1)[0].encode()
    rounds.run_round(spec, ctx, plan, 1, str(tmp_path / "none.jsonl"), probe, True, entry)
    stats.summarize(entry)
    assert entry["status"] == "failed", entry
    assert "exited with code 3" in entry["error"], entry["error"]
    assert "boom: no isolation argument" in entry["error"], entry["error"]
    assert entry["rps_64"] is None and entry["rounds"][0]["valid"] is False
    assert ctx.pg.procs == []


def test_ratios_are_low_medians_of_valid_pairs():
    def runs(*rps, invalid=()):
        return [{"round": i + 1, "valid": i not in invalid, "rps_64": v} for i, v in enumerate(rps)]

    a = {"name": "warmslot-thread", "rounds": runs(150, 300, 120, 200)}
    b = {"name": "uvicorn", "rounds": runs(100, 100, 100, 100, invalid=(1,))}
    r = stats.pair_ratios(a, b, "rps_64")
    # round 2 is invalid on one side: left out; of 1.5, 1.2 and 2.0 the median is 1.5, a real pair
    assert r == {"median": 1.5, "min": 1.2, "max": 2.0, "pairs": 3, "values": [1.5, 1.2, 2.0]}
    # an even count gives the lower middle value, never the mean of two
    assert stats.low_median([1.0, 3.0]) == 1.0
    assert stats.pair_ratios(a, {"name": "x", "rounds": runs(1, invalid=(0,))}, "rps_64") is None


def test_bench_json_holds_every_promised_field(tmp_path):
    _require_module("warmslot")
    for mod in ("uvicorn", "httptools", "uvloop", "orjson"):
        _require_module(mod)
    _require_tool("wrk")
    _require_tool("oha")
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(LOADTESTS, "bench.py"),
            "--systems",
            "warmslot-thread,uvicorn",
            "--quick",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--fractions",
            "0.3,0.6",
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
    report = json.loads(out.read_text())
    names = [s["name"] for s in report["systems"]]
    assert names == ["warmslot-thread", "uvicorn"]
    for s in report["systems"]:
        assert s["status"] == "ok", f"{s['name']}: {s.get('error')}"
        for key in ("workers", "cpus", "rps_64", "p50_c1_us", "p99_c1_us", "cpu_us_per_request"):
            assert isinstance(s[key], (int, float)) and s[key] > 0, (s["name"], key, s[key])
        assert s["invalid_replies"] == 0, s
        assert s["p50_c1_us"] <= s["p99_c1_us"], s
        run = s["rounds"][0]
        assert run["valid"] and run["c64"]["checked"] == run["c64"]["requests"] > 0, run["c64"]
        assert run["c64"]["sampled"] > 0, run["c64"]
        ol = s["open_loop"]
        assert ol["points"], ol
        base = ol["base_rps"]
        for p in ol["points"]:
            assert "error" not in p, (s["name"], p)
            assert p["rate"] == round(base * p["fraction"]), (s["name"], p)
            assert 0 < p["p50_us"] <= p["p95_us"] <= p["p99_us"], (s["name"], p)
            assert p["cpu_us_per_request"] and p["cpu_us_per_request"] > 0, (s["name"], p)
        assert "slo_capacity_rps" in s
        if s["slo_capacity_rps"] is not None:
            assert s["slo_capacity_rps"] in [p["rate"] for p in ol["points"] if p["within_slo"]]
    uvicorn = report["systems"][1]
    assert uvicorn["workers"] == 2 or uvicorn["workers"] == len(os.sched_getaffinity(0)), uvicorn
    assert any("split" in n for n in uvicorn["notes"]) == (uvicorn["workers"] > 1)
    v = report["versions"]
    for key in ("python", "warmslot", "uvicorn", "granian", "fastapi", "celery", "wrk", "oha", "kernel", "cpu_model"):
        assert key in v, key
    assert v["warmslot"] and v["uvicorn"] and v["wrk"] and v["oha"] and v["python"] and v["kernel"], v
    (ratio,) = report["ratios"]
    assert (ratio["system"], ratio["peer"]) == ("warmslot-thread", "uvicorn")
    assert ratio["rps_64_x"]["pairs"] == 1 and ratio["rps_64_x"]["median"] > 0
    assert "| warmslot-thread |" in r.stdout and "| uvicorn |" in r.stdout
    # --quick draws the chart by default, into the logs directory
    assert (tmp_path / "logs" / "bench.png").stat().st_size > 10_000


def test_store_bench_runs_the_counter_bot_on_both_stores_and_checks_every_reply(tmp_path):
    _require_tool("wrk")
    out = tmp_path / "store.json"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(LOADTESTS, "store_bench.py"),
            "--rounds",
            "1",
            "--duration",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(out.read_text())
    assert [row["mode"] for row in rows] == ["sync", "async"]
    for row in rows:
        for store in ("memory", "sqlite"):
            assert row[store]["rps"] > 0 and row[store]["cpu_us"] > 0, row
    assert "sqlite / memory" in r.stdout
