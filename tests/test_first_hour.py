"""Rough edges a new user hit in their first hour, each fixed (issue 19)."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import textwrap
from typing import Any, Dict, List

import pytest
import warmslot


def keyed_and_unkeyed_app() -> warmslot.App:
    app = warmslot.App()

    @app.pipeline("orders", key="order_id", missing_key="reject")
    def orders(event: Any, ctx: warmslot.Context) -> dict:
        return {"key": ctx.key}

    @app.pipeline("any")
    def any_value(event: Any, ctx: warmslot.Context) -> dict:
        return {"type": type(event).__name__}

    return app


def test_a_boolean_is_not_a_key(serve):
    _, c = serve(keyed_and_unkeyed_app())
    for value in (True, False):
        status, _, body = c.post("orders", {"order_id": value})
        assert status == 400, body
        assert body["error"]["code"] == "bad_request"
        assert body["error"]["message"] == 'key field "order_id" must be a string or a number, found a boolean'
    assert c.post("orders", {"order_id": 7})[2] == {"key": "7"}, "numbers still are keys"


def test_a_pipeline_that_rejects_keyless_events_says_the_body_must_be_an_object(serve):
    # (with missing_key="unkeyed", the default, such a body runs without a key: test_pipelines.py)
    _, c = serve(keyed_and_unkeyed_app())
    status, _, body = c.post("orders", [{"order_id": "a"}])
    assert status == 400, body
    assert body["error"]["message"] == (
        'the body must be a JSON object (the pipeline is keyed by its field "order_id"), found an array'
    )
    assert c.post("orders", "just text")[0] == 400


def test_an_unkeyed_pipeline_takes_any_json_value(serve):
    # Some providers batch events in an array (SendGrid's event webhook): an unkeyed pipeline gets it as is.
    _, c = serve(keyed_and_unkeyed_app())
    assert c.post("any", [{"event": "open"}, {"event": "click"}])[2] == {"type": "list"}
    assert c.post("any", {"event": "open"})[2] == {"type": "dict"}


# -- a user's file that does not load: one `warmslot: ...` line naming the file, line and error --

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG_HINT = " (--log-level debug prints the traceback)"


def warmslot_cli(*args: str, cwd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "warmslot", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def load_fails(tmp_path, files: Dict[str, str], target: str, *options: str) -> List[str]:
    """Writes `files` into `tmp_path`, runs ``warmslot run TARGET`` there; returns stderr's lines
    after checking that it failed (exit 2) without serving or printing a traceback."""
    for name, source in files.items():
        (tmp_path / name).write_text(textwrap.dedent(source))
    result = warmslot_cli("run", target, "--port", "0", *options, cwd=str(tmp_path))
    assert result.returncode == 2, result
    assert result.stdout == "", result.stdout
    if "debug" not in options:
        assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.splitlines()


SYNTAX_ERROR = """\
import warmslot

app = warmslot.App(
"""


def python_says(source: str, filename: str) -> str:
    """The message of the SyntaxError that Python raises for `source` (it varies with the version)."""
    try:
        compile(source, filename, "exec")
    except SyntaxError as exc:
        return exc.msg
    raise AssertionError("the source compiles")


def test_a_syntax_error_is_one_line_with_file_and_line(tmp_path):
    lines = load_fails(tmp_path, {"bot.py": SYNTAX_ERROR}, "bot.py:app")
    assert lines == [f"warmslot: bot.py:3: SyntaxError: {python_says(SYNTAX_ERROR, 'bot.py')}"]
    # The same file named as a module, and by an absolute path from elsewhere.
    assert load_fails(tmp_path, {}, "bot:app") == lines
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lines = load_fails(elsewhere, {}, str(tmp_path / "bot.py"))
    assert lines == [f"warmslot: {tmp_path / 'bot.py'}:3: SyntaxError: {python_says(SYNTAX_ERROR, 'bot.py')}"]


def test_a_syntax_error_in_a_module_the_file_imports_names_that_module(tmp_path):
    files = {"bot.py": "import warmslot\nimport helper\n", "helper.py": "x = 1\ndef f(:\n    pass\n"}
    lines = load_fails(tmp_path, files, "bot.py:app")
    msg = python_says(files["helper.py"], "helper.py")
    assert lines == [f"warmslot: helper.py:2 (while importing bot.py): SyntaxError: {msg}"]


def test_a_failing_import_in_the_users_module_names_the_import_line(tmp_path):
    files = {"bot.py": "import warmslot\nimport no_such_module_for_warmslot_tests\n\napp = warmslot.App()\n"}
    lines = load_fails(tmp_path, files, "bot.py:app")
    assert lines == [
        "warmslot: bot.py:2: ModuleNotFoundError: No module named 'no_such_module_for_warmslot_tests'; "
        f"is it installed for {sys.executable}?{DEBUG_HINT}"
    ]
    # An ImportError in a neighbour module that the file imports: that module's line, and the target.
    files = {"bot.py": "import warmslot\nimport helper\n", "helper.py": "import os\nfrom os import no_such_name\n"}
    lines = load_fails(tmp_path, files, "bot.py:app")
    assert lines == [
        f"warmslot: helper.py:2 (while importing bot.py): ImportError: cannot import name 'no_such_name' from 'os' "
        f"({os.__file__}){DEBUG_HINT}"
    ]


RAISES = """\
import json

def load_config():
    raise KeyError("BOT_TOKEN")

config = load_config()
"""


def test_an_exception_at_import_time_is_one_line_and_debug_shows_the_traceback(tmp_path):
    lines = load_fails(tmp_path, {"bot.py": RAISES}, "bot.py:app")
    assert lines == [f"warmslot: bot.py:4: KeyError: 'BOT_TOKEN'{DEBUG_HINT}"]
    # Raised inside a library (json, warmslot itself): the user's line that called it.
    files = {"bot.py": "import json\nimport warmslot\n\nconfig = json.loads('{')\n"}
    lines = load_fails(tmp_path, files, "bot.py:app")
    assert len(lines) == 1 and lines[0].startswith("warmslot: bot.py:4: json.decoder.JSONDecodeError: Expecting"), lines
    files = {"bot.py": "import warmslot\n\napp = warmslot.App(state='postgres://db')\n"}
    lines = load_fails(tmp_path, files, "bot.py:app")
    assert len(lines) == 1 and lines[0].startswith("warmslot: bot.py:3: ValueError: state='postgres://db' is not"), (
        lines
    )

    lines = load_fails(tmp_path, {"bot.py": RAISES}, "bot.py:app", "--log-level", "debug")
    text = "\n".join(lines)
    assert "Traceback (most recent call last)" in text and 'bot.py", line 6, in <module>' in text, text
    assert lines[-1] == "warmslot: bot.py:4: KeyError: 'BOT_TOKEN'", "the one line still comes last"


def test_a_failed_import_leaves_no_half_module_behind(tmp_path, monkeypatch):
    from warmslot.loader import LoadError, load_app

    (tmp_path / "half_loaded_bot.py").write_text(RAISES)
    with pytest.raises(LoadError) as info:
        load_app(str(tmp_path / "half_loaded_bot.py"))
    assert isinstance(info.value.__cause__, KeyError), "the exception is kept, with its traceback"
    assert "half_loaded_bot" not in sys.modules


def test_a_missing_attribute_names_what_the_module_has(tmp_path):
    files = {"app.py": "import warmslot\n\napp = warmslot.App()\n"}
    assert load_fails(tmp_path, files, "app.py:nope") == [
        "warmslot: app.py has no attribute 'nope'; its warmslot.App is 'app' (try app.py:app)"
    ]
    files = {"two.py": "import warmslot\n\nbots = warmslot.App()\nadmin = warmslot.App()\n"}
    assert load_fails(tmp_path, files, "two.py") == [
        "warmslot: two.py has no attribute 'app'; its warmslot.Apps are 'bots', 'admin' (try two.py:bots)"
    ]
    files = {"none.py": "import warmslot\n\nTOKEN = 'x'\n\ndef handler(event):\n    return event\n"}
    assert load_fails(tmp_path, files, "none.py:app") == [
        "warmslot: none.py has no attribute 'app'; it defines no warmslot.App (it has TOKEN, handler)"
    ]


def test_an_app_without_pipelines_says_how_to_declare_one(tmp_path):
    files = {"empty.py": "import warmslot\n\napp = warmslot.App()\n"}
    assert load_fails(tmp_path, files, "empty.py:app") == [
        'warmslot: empty.py:app has no pipelines: declare one with @app.pipeline("name") above a function'
    ]


@pytest.mark.parametrize(
    "source, says",
    [
        ("app = 3\n", "is an int, not a warmslot.App"),
        ("app = 'bot'\n", "is a str, not a warmslot.App"),
        ("app = None\n", "is None, not a warmslot.App"),
        ("def app():\n    pass\n", "is a function (app), not a warmslot.App"),
        (
            "import warmslot\napp = warmslot.App\n",
            "is the class warmslot.App, not an App: create one, app = warmslot.App()",
        ),
        (
            "import warmslot\nbots = warmslot.App()\napp = 3\n",
            "is an int, not a warmslot.App; its warmslot.App is 'bots'",
        ),
    ],
)
def test_a_target_that_is_not_an_app_reads_well(tmp_path, source, says):
    lines = load_fails(tmp_path, {"notapp.py": source}, "notapp.py:app")
    assert len(lines) == 1 and lines[0].startswith(f"warmslot: notapp.py:app {says}"), lines


# -- GET /executions without a filter lists the failed executions only: documented where it shows --


def test_executions_without_a_filter_lists_the_failed_ones_newest_first(serve):
    app = warmslot.App()

    @app.pipeline("p")
    def p(event: Any, ctx: warmslot.Context) -> dict:
        if event.get("fail"):
            raise RuntimeError(f"failing {event['n']}")
        return {"n": event["n"]}

    @app.pipeline("q")
    def q(event: Any, ctx: warmslot.Context) -> dict:
        raise RuntimeError("q fails")

    _, c = serve(app)
    assert c.post("p", {"n": 1})[0] == 200
    assert c.post("p", {"n": 2, "fail": True})[0] == 500
    assert c.post("p", {"n": 3})[0] == 200
    assert c.post("p", {"n": 4, "fail": True})[0] == 500
    assert c.post("q", {"n": 5})[0] == 500

    def listed(query: str) -> List[dict]:
        status, _, body = c.get("/executions" + query)
        assert status == 200, body
        return body["executions"]

    unfiltered = listed("")
    assert [(e["pipeline"], e["status"]) for e in unfiltered] == [("q", "failed"), ("p", "failed"), ("p", "failed")]
    assert listed("?status=failed") == unfiltered
    assert [e["status"] for e in listed("?status=succeeded")] == ["succeeded", "succeeded"]
    assert len(listed("?pipeline=p")) == 2
    assert listed("?limit=1") == unfiltered[:1]
    assert listed("?status=timed_out") == []
    assert c.get("/executions?status=queued")[0] == 400, "only finished executions are listed"


def test_the_executions_default_is_documented_where_a_user_meets_it():
    for command in ("run", "demo"):
        help_text = subprocess.run(
            [sys.executable, "-m", "warmslot", command, "--help"], capture_output=True, text=True, timeout=60
        ).stdout
        flat = " ".join(help_text.split())
        assert "GET /executions finished executions, newest first; without ?status= only the failed ones." in flat
        assert "?status=succeeded|failed|timed_out, ?pipeline=<name>, ?limit=<n> (default 100)" in flat


# -- App(...), app.start(...) and app.serve(...): every option documented, with its true default --


def documented_defaults(fn: Any) -> Dict[str, Any]:
    """The ````name=default```` entries that open lines of `fn`'s docstring, defaults evaluated."""
    doc = inspect.getdoc(fn) or ""
    return {m.group(1): eval(m.group(2)) for m in re.finditer(r"^``(\w+)=(.+?)``", doc, re.MULTILINE)}


@pytest.mark.parametrize(
    "fn", [warmslot.App.__init__, warmslot.App.start, warmslot.App.serve], ids=lambda f: f.__name__
)
def test_every_option_is_documented_with_its_default(fn):
    params = {n: p.default for n, p in inspect.signature(fn).parameters.items() if n != "self"}
    assert all(d is not inspect.Parameter.empty for d in params.values()), "every option has a default"
    assert documented_defaults(fn) == params


def test_the_app_docstring_points_to_its_options_and_says_what_get_executions_lists():
    doc = " ".join((warmslot.App.__doc__ or "").split())
    assert "listed in `App.__init__`" in doc
    assert (
        "``GET /executions`` lists finished executions, newest first: without ``?status=`` only the **failed** ones"
        in doc
    )
    start = " ".join((inspect.getdoc(warmslot.App.start) or "").split())
    assert "0 picks a free one" in start and "TimeoutError" in start and "StartupError" in start
    serve = " ".join((inspect.getdoc(warmslot.App.serve) or "").split())
    assert "warmslot: stopping (draining in-flight executions)..." in serve and "drain_timeout" in serve
