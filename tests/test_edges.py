"""Clear errors at the edges: decorator arguments checked at declaration (naming the argument),
bare @app.pipeline, CLI host/port checks, pipelines that fail to start."""

from __future__ import annotations

import textwrap

import pytest
import warmslot
from conftest import free_port
from test_cli import run_cli


def test_bare_decorator_registers_and_keeps_the_function(serve):
    app = warmslot.App()

    @app.pipeline
    def hello(event):
        return {"hi": event["name"]}

    @app.pipeline
    class Greeter:
        def __call__(self, event, ctx):
            return {"hello": event["name"]}

    assert hello({"name": "x"}) == {"hi": "x"}, "the function is returned unchanged"
    assert isinstance(Greeter(), Greeter)
    assert set(app.pipelines) == {"hello", "Greeter"}
    server, c = serve(app)
    assert c.post("hello", {"name": "ann"})[2] == {"hi": "ann"}
    assert c.post("Greeter", {"name": "bo"})[2] == {"hello": "bo"}


@pytest.mark.parametrize(
    "kwargs, exc, arg",
    [
        ({"slots": "4"}, TypeError, "slots"),
        ({"slots": 0}, ValueError, "slots"),
        ({"slots": True}, TypeError, "slots"),
        ({"min_slots": 2.5}, TypeError, "min_slots"),
        ({"max_slots": -1}, ValueError, "max_slots"),
        ({"queue_size": -1}, ValueError, "queue_size"),
        ({"queue_size": "10"}, TypeError, "queue_size"),
        ({"max_batch": 0}, ValueError, "max_batch"),
        ({"max_body_bytes": "1MB"}, TypeError, "max_body_bytes"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": "5s"}, TypeError, "timeout"),
        ({"key": 42}, TypeError, "key"),
        ({"key": ""}, ValueError, "key"),
        ({"setup": "load_model"}, TypeError, "setup"),
        ({"signature": "secret"}, TypeError, "signature"),
        ({"reply": "later"}, ValueError, "reply"),
        ({"missing_key": "skip", "key": "u"}, ValueError, "missing_key"),
    ],
)
def test_every_argument_is_checked_at_declaration(kwargs, exc, arg):
    app = warmslot.App()
    with pytest.raises(exc, match=rf"^{arg} must"):
        app.pipeline("p", **kwargs)
    assert not app.pipelines


@pytest.mark.parametrize("name", ["a/b", "", "with space", "q?x", "frag#", 7])
def test_bad_names(name):
    app = warmslot.App()
    with pytest.raises((ValueError, TypeError), match="^name must"):
        app.pipeline(name)(lambda e: e)


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"max_records": 0}, "max_records"),
        ({"max_keys": "many"}, "max_keys"),
        ({"body_timeout": 0}, "body_timeout"),
        ({"header_timeout": -2}, "header_timeout"),
        ({"max_header_bytes": 10}, "max_header_bytes"),
        ({"max_state_bytes": 0}, "max_state_bytes"),
        ({"max_record_bytes": 1.5}, "max_record_bytes"),
    ],
)
def test_app_arguments_are_checked(kwargs, arg):
    with pytest.raises((ValueError, TypeError), match=f"^{arg} must"):
        warmslot.App(**kwargs)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "99999"], "--port '99999' is not a port number from 0 to 65535"),
        (["--port", "http"], "--port 'http' is not a port number"),
        (["--port", "-1"], "--port '-1' is not a port number"),
        (["--host", "not a host!"], "--host 'not a host!' is not an IP address or a host name"),
    ],
)
def test_cli_rejects_bad_host_and_port_in_one_line(tmp_path, args, message):
    bot = tmp_path / "bot.py"
    bot.write_text("import warmslot\napp = warmslot.App()\n@app.pipeline\ndef hi(event):\n    return {}\n")
    proc = run_cli("run", str(bot), *args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip() == f"warmslot: {message} (0 picks a free port)" or err.strip().startswith(
        f"warmslot: {message}"
    ), err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


BROKEN = textwrap.dedent(
    """
    import warmslot

    app = warmslot.App()

    @app.pipeline("fine")
    def fine(event):
        return {}

    @app.pipeline("broken", slots=2)
    class Broken:
        def __init__(self):
            raise RuntimeError("model file missing: /models/m.bin")

        def __call__(self, event, ctx):
            return {}

    @app.pipeline("also_broken")
    class AlsoBroken:
        def __init__(self):
            raise KeyError("API_KEY")

        def __call__(self, event, ctx):
            return {}
    """
)


@pytest.mark.parametrize("debug", [False, True])
def test_pipelines_failing_at_start_get_one_line_each(tmp_path, debug):
    bot = tmp_path / "broken_bot.py"
    bot.write_text(BROKEN)
    extra = ["--log-level", "debug"] if debug else []
    proc = run_cli("run", str(bot), "--port", str(free_port()), *extra)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, (out, err)
    assert "stopping" not in out, "nothing was served, so nothing is drained"
    assert "serving" not in out
    lines = [line for line in err.splitlines() if line.startswith("warmslot: ")]
    assert len(lines) == 2, err
    assert any("'broken'" in line and "RuntimeError: model file missing: /models/m.bin" in line for line in lines)
    assert any("'also_broken'" in line and "KeyError" in line and "API_KEY" in line for line in lines)
    assert all("slot" in line for line in lines), lines
    if debug:
        assert "Traceback" in err
    else:
        assert "Traceback" not in err
        assert err.strip().splitlines() == lines, err
