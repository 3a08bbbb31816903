"""The package and the examples type-check: mypy over pylib/ and examples/ exits 0, and a
decorated pipeline keeps its type."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("mypy")


def mypy(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mypy_passes_on_pylib_and_examples():
    result = mypy("pylib/", "examples/")
    assert result.returncode == 0, result.stdout + result.stderr


def test_decorated_pipelines_keep_their_types(tmp_path):
    src = tmp_path / "typed_bot.py"
    src.write_text(
        textwrap.dedent(
            """
            import warmslot

            app = warmslot.App()

            @app.pipeline("echo", slots=2, key="user")
            def echo(event: dict, ctx: warmslot.Context) -> dict:
                return event

            @app.pipeline
            def bare(event: dict) -> int:
                return 1

            @app.pipeline
            class Bot:
                def __call__(self, event: dict, ctx: warmslot.Context) -> str:
                    return "x"

            reveal_type(echo)
            reveal_type(bare)
            reveal_type(Bot)
            n: int = bare({})
            s: str = bare({})  # an error: the decorated function still returns int
            """
        )
    )
    result = mypy(str(src))
    out = result.stdout.replace("builtins.", "")  # older mypy versions qualify builtins
    assert "def (event: dict[Any, Any], ctx: warmslot.context.Context) -> dict[Any, Any]" in out, out
    assert "def (event: dict[Any, Any]) -> int" in out, out
    assert 'Revealed type is "def () -> typed_bot.Bot"' in out, out
    assert out.count("error:") == 1 and 'Incompatible types in assignment (expression has type "int"' in out, out
