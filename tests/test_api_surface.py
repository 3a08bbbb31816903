"""The typed surface: `_core.pyi` stays true, and the public API is importable."""

from __future__ import annotations

import ast
import os
import threading

import pytest
import warmslot
from warmslot import _core

PYI = os.path.join(os.path.dirname(warmslot.__file__), "_core.pyi")


def test_every_name_in_core_pyi_exists():
    with open(PYI) as f:
        tree = ast.parse(f.read())
    declared = []
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            declared.append(node.name)
            obj = getattr(_core, node.name)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                        assert hasattr(obj, item.name), f"_core.{node.name}.{item.name} is declared but missing"
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.append(node.target.id)
            assert hasattr(_core, node.target.id)
    assert {"Core", "hmac_sha256_hex", "loads", "decode_batch", "encode_result", "__version__"} <= set(declared)


def test_public_api_and_py_typed():
    for name in warmslot.__all__:
        assert hasattr(warmslot, name), name
    assert os.path.exists(os.path.join(os.path.dirname(warmslot.__file__), "py.typed"))


def test_declaration_errors_are_clear():
    app = warmslot.App()
    with pytest.raises(ValueError, match="not both"):
        app.pipeline("x", slots=2, min_slots=1)(lambda e, c: e)
    with pytest.raises(ValueError, match=r"max_slots \(2\) must be at least min_slots \(3\)"):
        app.pipeline("y", min_slots=3, max_slots=2)(lambda e, c: e)

    @app.pipeline("z")
    def z(e, c):
        return e

    with pytest.raises(ValueError, match="declared twice"):
        app.pipeline("z")(lambda e, c: e)
    with pytest.raises(ValueError, match="not a known store"):
        warmslot.App(state="postgres://x")
    with pytest.raises(ValueError, match="no pipelines"):
        warmslot.App().start("127.0.0.1", 0)


def test_stop_joins_every_thread_and_frees_the_port():
    app = warmslot.App()

    @app.pipeline("s", slots=3)
    def s(e, c):
        return e

    @app.pipeline("a", slots=2)
    async def a(e, c):
        return e

    before = {t.name for t in threading.enumerate()}
    server = app.start("127.0.0.1", 0)
    assert any(t.name.startswith("warmslot-") for t in threading.enumerate())
    server.stop()
    left = [t.name for t in threading.enumerate() if t.name.startswith("warmslot-") and t.name not in before]
    assert left == []
    again = app.start("127.0.0.1", server.port)  # the port is free again
    again.stop()
    server.stop()  # idempotent


def test_inflight_requests_finish_during_drain():
    import time

    from conftest import Client

    app = warmslot.App()

    @app.pipeline("slow")
    def slow(e, c):
        time.sleep(0.3)
        return {"done": True}

    server = app.start("127.0.0.1", 0)
    result = {}

    def call():
        c = Client(server.host, server.port)
        result["r"] = c.post("slow", {})
        c.close()

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.1)
    server.stop(drain=5)
    t.join(5)
    assert result["r"][0] == 200 and result["r"][2] == {"done": True}
