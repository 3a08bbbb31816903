"""The `warmslot` command, run as a user would: a subprocess serving a file on a free port."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest
from conftest import free_port, wait_for, wait_healthy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def run_cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "warmslot", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_a_file_anywhere_and_stop_cleanly(tmp_path, sig):
    bot = tmp_path / "mybot.py"
    helper = tmp_path / "helper_mod.py"
    helper.write_text("PREFIX = 'bot: '\n")
    bot.write_text(
        textwrap.dedent(
            """
            import warmslot
            from helper_mod import PREFIX  # a neighbour module of the bot file

            bots = warmslot.App()

            @bots.pipeline("hi", key="user")
            def hi(event, ctx):
                ctx.state["n"] = ctx.state.get("n", 0) + 1
                return {"text": PREFIX + event["text"], "n": ctx.state["n"]}
            """
        )
    )
    port = free_port()
    proc = run_cli("run", f"{bot}:bots", "--port", str(port), cwd=str(tmp_path.parent))
    try:
        wait_healthy(port, proc)
        assert post(port, "/hooks/hi", {"user": "a", "text": "x"}) == {"text": "bot: x", "n": 1}
        assert post(port, "/hooks/hi", {"user": "a", "text": "y"}) == {"text": "bot: y", "n": 2}
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "serving /hooks/hi" in out
    assert out.splitlines()[-1] == "warmslot: stopping (draining in-flight executions)..."
    assert "Traceback" not in err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_run_an_importable_module():
    port = free_port()
    proc = run_cli("run", "warmslot.examples.bots:app", "--port", str(port))
    try:
        wait_healthy(port, proc)
        assert post(port, "/hooks/echo", {"user": "u", "text": "hey"}) == {"reply": "echo: hey", "count": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_examples_directory_apps_serve():
    port = free_port()
    proc = run_cli("run", os.path.join(ROOT, "examples", "echo.py") + ":app", "--port", str(port))
    try:
        wait_healthy(port, proc)
        assert post(port, "/hooks/echo", {"user": "u", "text": "a"}) == {"reply": "echo: a", "count": 1}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_clear_errors_for_missing_file_attribute_and_port_in_use(tmp_path):
    proc = run_cli("run", str(tmp_path / "nope.py") + ":app")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "no such file" in err and "nope.py" in err

    bot = tmp_path / "b.py"
    bot.write_text("import warmslot\nmy_app = warmslot.App()\n\n@my_app.pipeline('x')\ndef x(e, c):\n    return e\n")
    proc = run_cli("run", f"{bot}:app")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "no attribute 'app'" in err and "my_app" in err

    proc = run_cli("run", "no_such_module_here:app")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "no module named" in err

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("run", f"{bot}:my_app", "--port", str(port))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "already in use" in err and str(port) in err
    assert "Traceback" not in err


def test_demo_serves_drives_load_and_reports(tmp_path):
    proc = run_cli("demo", "--seconds", "1.5", "--exit", "--port", str(free_port()), "--clients", "4")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "req/s, 0 errors" in out
    assert re.search(r"live dashboard: http://127\.0\.0\.1:\d+/dashboard", out), out
    for name in ("echo", "support", "signals"):
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        requests = int(line.split()[1])
        assert requests > 0, line


def test_demo_logs_json_lines_and_run_refuses_an_unknown_log_format(tmp_path):
    port = free_port()
    args = ["--seconds", "0.5", "--exit", "--port", str(port), "--clients", "2", "--log-level", "info"]
    proc = run_cli("demo", *args, "--log-format", "json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    messages = [(r["level"], r["logger"], r["message"]) for r in lines]
    assert ("INFO", "warmslot.core", f"listening on 127.0.0.1:{port}") in messages, messages
    assert ("INFO", "warmslot.core", f"stopped listening on 127.0.0.1:{port}") in messages, messages

    proc = run_cli("run", "warmslot.examples.bots:app", "--log-format", "yaml")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "invalid choice: 'yaml'" in err, err


def test_version_prints_the_package_version():
    import importlib.metadata

    import warmslot

    result = subprocess.run([sys.executable, "-m", "warmslot", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    assert result.stdout == f"warmslot {importlib.metadata.version('warmslot')}\n"
    assert result.stdout == f"warmslot {warmslot.__version__}\n"
    help_text = subprocess.run([sys.executable, "-m", "warmslot", "--help"], capture_output=True, text=True, timeout=60)
    assert "--version" in help_text.stdout


# -- warmslot demo stops as `run` does: says it is draining, then drains -----------------------

STOPPING = "warmslot: stopping (draining in-flight executions)..."


class Lines:
    """Reads a subprocess's stdout on a thread, so a test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines, self.cond = proc, [], threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)  # EOF
            self.cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(line is not None and text in line for line in self.lines):
                left = deadline - time.monotonic()
                if None in self.lines or left <= 0:
                    raise AssertionError(f"no line with {text!r} (exited: {self.proc.poll()}): {self.lines}")
                self.cond.wait(left)

    def rest(self, timeout: float) -> list:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "stdout still open"
        return [line for line in self.lines if line is not None]


def load_generators(pid: int) -> list:
    """Pids of `pid`'s children that are the demo's load generators (`python -m warmslot.demo`)."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and "warmslot.demo" in cmd:
            out.append(int(entry))
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_says_it_drains_when_stopped_while_serving(sig):
    port = free_port()
    proc = run_cli("demo", "--seconds", "0.5", "--clients", "2", "--port", str(port))
    lines = Lines(proc)
    try:
        lines.wait_for("Ctrl-C to stop.", timeout=120)
        assert post(port, "/hooks/echo", {"user": "u", "text": "still here"})["reply"] == "echo: still here"
        proc.send_signal(sig)
        out = lines.rest(timeout=60)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out[-1] == STOPPING, out
    assert "Traceback" not in err, err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_ctrl_c_during_the_demos_load_stops_it_and_its_load_generators_without_a_traceback():
    # Ctrl-C in a terminal sends SIGINT to the whole foreground process group: the demo and its two
    # load generators. The demo stops them and drains; none of them prints a traceback.
    port = free_port()
    proc = run_cli("demo", "--seconds", "120", "--clients", "2", "--port", str(port), start_new_session=True)
    lines = Lines(proc)
    try:
        lines.wait_for("driving 2 keep-alive clients for 120s", timeout=120)
        generators = wait_for(lambda: len(load_generators(proc.pid)) == 2 and load_generators(proc.pid), 30, "load")
        lines.wait_for("pool: ", timeout=30)  # the load is running
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out = lines.rest(timeout=60)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    assert out[-1] == STOPPING, out
    assert not any(line.startswith("drove ") for line in out), "no report of a load that was cut short"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert took < 30, f"took {took:.1f}s to stop (the load was to run 120 s)"
    for pid in generators:
        assert not os.path.exists(f"/proc/{pid}"), f"load generator {pid} outlived the demo"
