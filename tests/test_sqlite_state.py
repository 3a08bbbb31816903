"""state="sqlite:///...": per-key state in one SQLite file survives a restart."""

from __future__ import annotations

import os
import sqlite3

import pytest
import warmslot
from conftest import Client


def make_app(url: str) -> warmslot.App:
    app = warmslot.App(state=url)

    @app.pipeline("count", key="user", slots=2)
    def count(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        if event.get("fail"):
            raise RuntimeError("no commit")
        return ctx.state["n"]

    return app


def run(app: warmslot.App, events):
    server = app.start("127.0.0.1", 0)
    try:
        c = Client(server.host, server.port)
        out = [c.post("count", e) for e in events]
        c.close()
        return out
    finally:
        server.stop()


def test_state_survives_a_restart(tmp_path):
    path = tmp_path / "state.db"
    url = "sqlite:///" + str(path)  # an absolute path: sqlite:////tmp/...
    first = run(make_app(url), [{"user": "a"}, {"user": "a"}, {"user": "b"}, {"user": "a", "fail": True}])
    assert [r[2] if r[0] == 200 else r[0] for r in first] == [1, 2, 1, 500]
    second = run(make_app(url), [{"user": "a"}, {"user": "b"}])
    assert [r[2] for r in second] == [3, 2], "state committed before the restart is read back"
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT key, state FROM warmslot_state WHERE pipeline = 'count'").fetchall())
    assert rows == {"a": b'{"n":3}', "b": b'{"n":2}'}


def test_relative_path_and_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert [r[2] for r in run(make_app("sqlite:///rel.db"), [{"user": "x"}, {"user": "x"}])] == [1, 2]
    assert os.path.exists(tmp_path / "rel.db")
    assert [r[2] for r in run(make_app("sqlite://"), [{"user": "x"}, {"user": "x"}])] == [1, 2]


def test_unopenable_database_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot open state database"):
        make_app("sqlite:///" + str(tmp_path / "missing-dir" / "x.db")).start("127.0.0.1", 0)


def test_an_unreadable_journal_is_a_store_error_naming_the_pipeline(tmp_path):
    path = tmp_path / "state.db"
    url = "sqlite:///" + str(path)
    run(make_app(url), [{"user": "a"}])
    with sqlite3.connect(path) as db:  # a journaled event whose arrival time is not a number
        db.execute(
            "INSERT INTO warmslot_executions (id, pipeline, key, body, received_at, status)"
            " VALUES ('0123456789abcdef0123456789abcdef', 'count', 'a', x'7b7d', 'not a time', 'queued')"
        )
    with pytest.raises(OSError, match='cannot read the journal of pipeline "count"'):  # was a ValueError
        make_app(url).start("127.0.0.1", 0)
