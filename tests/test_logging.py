"""Logging: Rust messages reach Python `logging` under `warmslot.core`, `--log-level` governs them,
`--log-format json` writes one object a line with the execution's fields, and a failing pipeline's
line names its exception at the default level."""

from __future__ import annotations

import json
import logging
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from typing import Iterator, List, Tuple

import pytest
import warmslot
from conftest import free_port, poll
from test_cli import run_cli, wait_healthy
from warmslot import logs

TRIAGE = """
import warmslot

app = warmslot.App()

@app.pipeline("triage", key="user")
def triage(event, ctx):
    raise ValueError("bad ticket " + event["ticket"])
"""


class Records(logging.Handler):
    """Keeps what reaches it (from any thread: the Rust records come from the forwarder's)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def find(self, text: str) -> List[logging.LogRecord]:
        return [r for r in list(self.records) if text in r.getMessage()]


@pytest.fixture
def records() -> Iterator[Records]:
    """A handler on the `warmslot` logger; the levels the test sets are undone after it."""
    handler = Records()
    logger = logging.getLogger("warmslot")
    touched = [logger, logging.getLogger("warmslot.core"), logging.getLogger("warmslot.core.pipelines")]
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        for lg in touched:
            lg.setLevel(logging.NOTSET)
        logs.refresh()


def echo_app() -> warmslot.App:
    app = warmslot.App()

    @app.pipeline("echo")
    def echo(event, ctx):
        return event

    return app


def test_rust_records_reach_python_handlers_under_warmslot_core(records):
    logging.getLogger("warmslot").setLevel(logging.DEBUG)
    server = echo_app().start("127.0.0.1", 0)
    try:
        addr = f"127.0.0.1:{server.port}"
        (listening,) = poll(lambda: records.find(f"listening on {addr}"), 10, "the Rust 'listening on' record")
        assert (listening.name, listening.levelno) == ("warmslot.core", logging.INFO)
        (summary,) = poll(lambda: records.find("pipeline 'echo': "), 10, "the pipeline's summary")
        assert (summary.name, summary.levelno) == ("warmslot.core.pipelines", logging.DEBUG)
        assert summary.pipeline == "echo"  # a Rust key-value, as a LogRecord attribute
        assert summary.getMessage() == "pipeline 'echo': 1-4 thread slots, a queue of 4096", summary.getMessage()
    finally:
        server.stop()
    (stopped,) = poll(lambda: records.find(f"stopped listening on {addr}"), 10, "the 'stopped listening' record")
    assert (stopped.name, stopped.levelno) == ("warmslot.core", logging.INFO)


def test_levels_changed_later_apply_after_refresh_and_at_the_next_start(records):
    # pyo3-log caches a logger's level at its first record. The pipelines' summaries (their own,
    # visible logger) come after 'listening on' from the one forwarding thread: once one is seen,
    # warmslot.core's WARNING level has been cached.
    core = logging.getLogger("warmslot.core")
    logging.getLogger("warmslot.core.pipelines").setLevel(logging.DEBUG)
    core.setLevel(logging.WARNING)
    app = echo_app()
    first = app.start("127.0.0.1", 0)
    poll(lambda: records.find("pipeline 'echo': "), 10, "the first server's summary")
    assert not records.find("listening on")
    core.setLevel(logging.INFO)
    logs.refresh()
    first.stop()
    poll(lambda: records.find(f"stopped listening on 127.0.0.1:{first.port}"), 10, "'stopped listening' after refresh")

    core.setLevel(logging.WARNING)
    logs.refresh()
    records.records.clear()
    second = app.start("127.0.0.1", 0)
    poll(lambda: records.find("pipeline 'echo': "), 10, "the second server's summary")
    second.stop()  # 'stopped listening' filtered: warmslot.core's WARNING is cached again
    core.setLevel(logging.INFO)  # no refresh: the next start does it
    third = app.start("127.0.0.1", 0)
    try:
        poll(lambda: records.find(f"listening on 127.0.0.1:{third.port}"), 10, "the third server's 'listening on'")
    finally:
        third.stop()
    assert not records.find("listening on 127.0.0.1:%d" % second.port)


def test_json_formatter_writes_python_extra_and_rust_key_values_alike():
    fmt = logs.JsonFormatter()
    py = logging.getLogger("warmslot").makeRecord(
        "warmslot", logging.WARNING, __file__, 1, "ran %s", ("x",), None, extra={"pipeline": "p", "key": None}
    )
    # How pyo3-log makes a Rust record: the message formatted, key-values as text in `extra`.
    rust = logging.getLogger("warmslot.core").makeRecord(
        "warmslot.core", logging.ERROR, None, 0, "lost \udcff", (), None, extra={"execution_id": "e1", "slot": "3"}
    )
    a, b = json.loads(fmt.format(py)), json.loads(fmt.format(rust))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", a["time"]), a
    assert {k: v for k, v in a.items() if k != "time"} == {
        "level": "WARNING",
        "logger": "warmslot",
        "message": "ran x",
        "pipeline": "p",
    }
    assert list(b)[1:] == ["level", "logger", "message", "execution_id", "slot"]
    assert (b["level"], b["logger"], b["execution_id"], b["slot"]) == ("ERROR", "warmslot.core", "e1", "3")
    assert b["message"].startswith("lost ")
    try:
        raise KeyError("k")
    except KeyError:
        err = logging.getLogger("warmslot").makeRecord(
            "warmslot", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    assert json.loads(fmt.format(err))["exception"] == "KeyError: 'k'"
    assert "traceback" not in json.loads(fmt.format(err))
    assert "Traceback" in json.loads(logs.JsonFormatter(tracebacks=True).format(err))["traceback"]


def test_configure_rejects_unknown_levels_and_formats():
    with pytest.raises(ValueError, match="log level"):
        logs.configure("verbose")
    with pytest.raises(ValueError, match="log format"):
        logs.configure("info", "yaml")


# -- the CLI ---------------------------------------------------------------------------------------


def wait_serving(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Waits for `warmslot run`'s "serving" line: its SIGTERM handler is installed by then (it may
    answer /healthz just before)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.05)[0]:
            line = proc.stdout.readline()
            if "warmslot: serving" in line:
                return
            if not line:
                raise AssertionError(f"server exited: {proc.communicate()}")
    raise AssertionError("no 'serving' line")


def serve_and_post(tmp_path, *cli_args: str, tickets: Tuple[str, ...] = ()) -> Tuple[str, List[str]]:
    """Runs `warmslot run` on TRIAGE with `cli_args`, posts one failing event per ticket (user u1),
    stops it with SIGTERM; returns its stderr and the execution ids."""
    bot = tmp_path / "triage_bot.py"
    bot.write_text(textwrap.dedent(TRIAGE))
    port = free_port()
    proc = run_cli("run", f"{bot}:app", "--port", str(port), *cli_args)
    ids = []
    try:
        wait_healthy(port, proc)
        wait_serving(proc)
        for ticket in tickets:
            body = json.dumps({"user": "u1", "ticket": ticket}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/triage", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as failed:
                urllib.request.urlopen(req, timeout=10)
            assert failed.value.code == 500
            ids.append(failed.value.headers["x-warmslot-execution-id"])
            failed.value.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)  # every record is written before the process exits
    assert proc.returncode == 0, err
    return err, ids


@pytest.mark.parametrize("level", ["warning", "info", "debug"])
def test_log_level_governs_rust_messages(tmp_path, level):
    err, _ = serve_and_post(tmp_path, "--log-level", level)
    shown = {
        "info": "INFO warmslot.core: listening on 127.0.0.1:" in err,
        "debug": "DEBUG warmslot.core.pipelines: pipeline 'triage': 1-4 thread slots" in err,
    }
    assert shown == {"info": level in ("info", "debug"), "debug": level == "debug"}, err
    assert ("INFO warmslot.core: stopped listening on" in err) == (level != "warning"), err


def test_json_lines_carry_pipeline_execution_id_and_key(tmp_path):
    err, (eid,) = serve_and_post(tmp_path, "--log-format", "json", "--log-level", "debug", tickets=("#7",))
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    (failed,) = [r for r in lines if r.get("execution_id") == eid]
    assert failed["level"] == "WARNING" and failed["logger"] == "warmslot", failed
    assert (failed["pipeline"], failed["key"]) == ("triage", "u1"), failed
    assert failed["message"] == f"pipeline 'triage' raised on execution {eid}: ValueError: bad ticket #7"
    assert failed["exception"] == "ValueError: bad ticket #7"
    assert "raise ValueError" in failed["traceback"]  # --log-level debug
    # A Rust record, its key-value a field.
    (summary,) = [r for r in lines if r["logger"] == "warmslot.core.pipelines"]
    assert summary["pipeline"] == "triage" and summary["level"] == "DEBUG", summary
    assert any(r["logger"] == "warmslot.core" and r["message"].startswith("listening on") for r in lines), lines


def test_worker_processes_log_json_lines_too(tmp_path):
    err, (eid,) = serve_and_post(tmp_path, "--log-format", "json", "--isolation", "process", tickets=("#8",))
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # the workers' lines too
    (failed,) = [r for r in lines if r.get("execution_id") == eid]
    assert (failed["pipeline"], failed["key"], failed["level"]) == ("triage", "u1", "WARNING"), failed
    assert isinstance(failed["worker"], int) and failed["worker"] > 0, "logged by a worker process"


@pytest.mark.parametrize("level", ["warning", "debug"])
def test_a_failing_pipeline_logs_its_exception_at_the_default_level(tmp_path, level):
    err, (eid,) = serve_and_post(tmp_path, "--log-level", level, tickets=("#9",))
    line = next(ln for ln in err.splitlines() if eid in ln)
    assert line.endswith(f"WARNING warmslot: pipeline 'triage' raised on execution {eid}: ValueError: bad ticket #9")
    assert ("Traceback (most recent call last)" in err) == (level == "debug"), err


def test_rust_records_logged_after_the_bridge_closed_go_to_stderr(tmp_path):
    # warmslot's atexit hooks run first (they were registered last): its servers stop, the bridge
    # hands its queue to Python and closes. A hook registered before warmslot was imported runs
    # after that: what the core logs then goes to stderr directly, without attaching to an
    # interpreter that is about to finalize.
    script = tmp_path / "late.py"
    script.write_text(
        textwrap.dedent(
            """
            import atexit, logging
            late = []
            atexit.register(lambda: [core.shutdown(0.0) for core in late])
            import warmslot
            from warmslot import _core
            logging.basicConfig(level=logging.INFO)
            app = warmslot.App()
            app.pipeline("echo")(lambda event, ctx: event)
            server = app.start("127.0.0.1", 0)  # stopped by warmslot's own atexit hook
            settings = _core.AppSettings(
                host="127.0.0.1", port=0, max_records=100, io_threads=1, max_connections=10, spin_us=0,
                admin_token=None, max_header_bytes=65536, header_timeout=30.0, body_timeout=30.0,
                max_record_bytes=1 << 20, max_keys=100, max_state_bytes=1 << 20, records_ttl=60.0,
                store="memory", sqlite_path=None, sqlite_synchronous="normal", redis_url=None,
            )
            late.append(_core.Core(settings, []))
            print(server.port, late[0].start()[1], flush=True)
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    port, late_port = proc.stdout.split()
    err = proc.stderr
    for text in [f"listening on 127.0.0.1:{port}", f"stopped listening on 127.0.0.1:{port}"]:
        assert f"INFO:warmslot.core:{text}" in err, err  # through Python logging (basicConfig's format)
    assert f"INFO:warmslot.core:listening on 127.0.0.1:{late_port}" in err, err
    assert f"INFO warmslot.core: stopped listening on 127.0.0.1:{late_port}" in err, err  # directly
    assert "panicked" not in err and "Fatal" not in err, err
