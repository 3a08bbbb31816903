"""The typed boundary between Python and Rust (issue 18): settings cross as `_core` classes whose
keyword-only constructors require every field, enumerated fields are checked there, and slot
reports and warm-up reasons are enums."""

from __future__ import annotations

import ast
import hashlib
import hmac
import inspect
import logging
import os
import threading
from typing import Any, Dict, List

import pytest
import warmslot
from conftest import Client, wait_for
from warmslot import _core
from warmslot._core import SlotReport, WarmupReason


def app_fields() -> Dict[str, Any]:
    return dict(
        host="127.0.0.1",
        port=0,
        max_records=100,
        io_threads=1,
        max_connections=100,
        spin_us=0,
        admin_token=None,
        max_header_bytes=4096,
        header_timeout=5.0,
        body_timeout=5.0,
        max_record_bytes=1 << 20,
        max_keys=100,
        max_state_bytes=1 << 16,
        records_ttl=60.0,
        store="memory",
        sqlite_path=None,
        sqlite_synchronous="normal",
        redis_url=None,
    )


def pipeline_fields() -> Dict[str, Any]:
    return dict(
        name="p",
        key="field",
        key_field="user",
        key_fn=None,
        missing_key="unkeyed",
        min_slots=1,
        max_slots=2,
        timeout=5.0,
        max_body_bytes=1 << 16,
        queue_size=16,
        max_batch=4,
        isolation="thread",
        worker_cmd=None,
        concurrency=1,
        max_executions=None,
        max_memory_mb=None,
        signature=None,
        reply_async=False,
        dedupe="headers",
        dedupe_field=None,
        dedupe_fn=None,
        dedupe_window=60.0,
        retries=0,
        retry_backoff=1.0,
        events=None,
        events_from=None,
    )


def signature_fields() -> Dict[str, Any]:
    return dict(secret=b"s3cret", scheme="hex", header="X-Signature", prefix="sha256=", tolerance=300.0)


SETTINGS = [
    (_core.AppSettings, app_fields),
    (_core.PipelineSettings, pipeline_fields),
    (_core.SignatureSettings, signature_fields),
]
EVERY_FIELD = [(cls, fields, name) for cls, fields in SETTINGS for name in fields()]


@pytest.mark.parametrize("cls,fields", SETTINGS, ids=lambda v: getattr(v, "__name__", ""))
def test_settings_build_from_every_field(cls, fields):
    cls(**fields())


@pytest.mark.parametrize("cls,fields,name", EVERY_FIELD, ids=[f"{c.__name__}.{n}" for c, _, n in EVERY_FIELD])
def test_a_missing_field_is_a_type_error_naming_it(cls, fields, name):
    kwargs = fields()
    del kwargs[name]
    with pytest.raises(TypeError, match=f"missing 1 required keyword argument: '{name}'"):
        cls(**kwargs)


@pytest.mark.parametrize(
    "cls,fields,wrong",
    [
        (_core.AppSettings, app_fields, "sqlite_synchronus"),
        (_core.PipelineSettings, pipeline_fields, "max_slot"),
        (_core.PipelineSettings, pipeline_fields, "key_callable"),  # a key of the old dicts
        (_core.SignatureSettings, signature_fields, "tolerence"),
    ],
)
def test_a_misspelt_field_is_a_type_error_naming_it(cls, fields, wrong):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{wrong}'"):
        cls(**fields(), **{wrong: 1})


@pytest.mark.parametrize(
    "events,events_from,match",
    [
        ([], None, "events must be a non-empty list"),
        (["push"], None, "events needs events_from"),  # no signature says where the type is
        (["push"], "type", "events_from must be"),
        (["push"], "field:a..b", "events_from must be"),
        (None, "header:X-Event-Type", "events_from needs events"),
    ],
)
def test_event_filter_fields_are_validated(events, events_from, match):
    with pytest.raises(ValueError, match=match):
        _core.PipelineSettings(**{**pipeline_fields(), "events": events, "events_from": events_from})
    good = {"events": ["push"], "events_from": "header:X-Event-Type"}
    _core.PipelineSettings(**{**pipeline_fields(), **good})


def test_fields_are_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        _core.SignatureSettings(b"s3cret", scheme="hex", header="h", prefix="", tolerance=1.0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "cls,fields,field,accepted",
    [
        (_core.AppSettings, app_fields, "store", ["memory", "sqlite", "redis"]),
        (_core.AppSettings, app_fields, "sqlite_synchronous", ["normal", "full"]),
        (_core.PipelineSettings, pipeline_fields, "key", ["none", "field", "callable"]),
        (_core.PipelineSettings, pipeline_fields, "missing_key", ["unkeyed", "reject"]),
        (_core.PipelineSettings, pipeline_fields, "isolation", ["thread", "process"]),
        (_core.PipelineSettings, pipeline_fields, "dedupe", ["headers", "field", "callable", "off"]),
        (_core.SignatureSettings, signature_fields, "scheme", ["hex", "slack", "stripe", "standard"]),
    ],
)
def test_a_bad_enumerated_value_names_the_field_and_the_accepted_values(cls, fields, field, accepted):
    kwargs = fields()
    kwargs[field] = "bogus"
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{field} must be one of "), message
    assert "bogus" in message
    for value in accepted:
        assert f"'{value}'" in message, message


@pytest.mark.parametrize(
    "cls,fields,changes,match",
    [
        (_core.PipelineSettings, pipeline_fields, {"key_field": None}, 'key="field" needs key_field'),
        (_core.PipelineSettings, pipeline_fields, {"key": "none"}, 'key_field must be None when key="none"'),
        (_core.PipelineSettings, pipeline_fields, {"key": "callable", "key_field": None}, "needs key_fn"),
        (_core.PipelineSettings, pipeline_fields, {"isolation": "process"}, "needs worker_cmd"),
        (_core.PipelineSettings, pipeline_fields, {"isolation": "process", "worker_cmd": []}, "must not be empty"),
        (_core.PipelineSettings, pipeline_fields, {"worker_cmd": ["python"]}, "worker_cmd must be None"),
        (_core.PipelineSettings, pipeline_fields, {"dedupe": "field"}, "needs dedupe_field"),
        (_core.PipelineSettings, pipeline_fields, {"dedupe_fn": len}, 'dedupe_fn must be None when dedupe="headers"'),
        (_core.PipelineSettings, pipeline_fields, {"key_fn": "user"}, "key_fn must be a callable"),
        (_core.PipelineSettings, pipeline_fields, {"min_slots": 3}, r"max_slots \(2\) must be at least min_slots"),
        (_core.PipelineSettings, pipeline_fields, {"timeout": -1.0}, "timeout must be a non-negative number"),
        (_core.PipelineSettings, pipeline_fields, {"min_slots": "2"}, "min_slots"),
        (_core.AppSettings, app_fields, {"store": "sqlite"}, 'store="sqlite" needs sqlite_path'),
        (_core.AppSettings, app_fields, {"redis_url": "redis://x"}, "redis_url must be None"),
        (_core.AppSettings, app_fields, {"records_ttl": float("nan")}, "records_ttl must be"),
        (_core.SignatureSettings, signature_fields, {"secret": b""}, "secret must not be empty"),
    ],
)
def test_fields_that_go_together_are_checked(cls, fields, changes, match):
    with pytest.raises((TypeError, ValueError), match=match):
        cls(**{**fields(), **changes})


def test_core_takes_settings_not_dicts():
    with pytest.raises(TypeError):
        _core.Core(app_fields(), [pipeline_fields()])  # type: ignore[arg-type, list-item]
    core = _core.Core(_core.AppSettings(**app_fields()), [_core.PipelineSettings(**pipeline_fields())])
    assert core.pool(0)["warm"] == 0
    duplicate = _core.PipelineSettings(**pipeline_fields())
    with pytest.raises(ValueError, match="declared twice"):
        _core.Core(_core.AppSettings(**app_fields()), [duplicate, duplicate])


def test_the_builders_pass_every_field():
    sig = warmslot.github_signature("s3cret")
    assert isinstance(sig.settings(), _core.SignatureSettings)
    app = warmslot.App()
    app.pipeline("a", key=lambda e: e["u"], dedupe=lambda e: e["id"], signature=sig)(lambda e, c: e)
    app.pipeline("b", key="u", dedupe="id", missing_key="reject", reply="async")(lambda e, c: e)
    app.pipeline("c", dedupe=False, timeout=None)(lambda e, c: e)
    for spec in app.pipelines.values():
        settings = spec.settings("thread", None)
        assert isinstance(settings, _core.PipelineSettings) and settings.name == spec.name
        assert spec.settings("process", ["python", "-m", "warmslot.worker", "x.py:app", spec.name]).name == spec.name


# -- every store serves ---------------------------------------------------------------------------


def bot(state: str) -> warmslot.App:
    app = warmslot.App(state=state)

    @app.pipeline("count", key="user", dedupe="id")
    def count(event, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return {"n": ctx.state["n"]}

    @app.pipeline("by_fn", key=lambda e: e.get("org"), missing_key="reject")
    def by_fn(event, ctx):
        return {"key": ctx.key}

    @app.pipeline("signed", signature=warmslot.hmac_signature("s3cret", "x-sig", "sha256="))
    async def signed(event, ctx):
        return {"ok": True}

    return app


@pytest.mark.parametrize("store", ["memory", "sqlite", "redis"])
def test_the_app_serves_with_every_store(store, tmp_path, request):
    state = {
        "memory": lambda: "memory",
        "sqlite": lambda: f"sqlite:///{tmp_path / 'state.db'}",
        "redis": lambda: request.getfixturevalue("redis_url"),
    }[store]()
    with bot(state).start("127.0.0.1", 0) as server, Client(server.host, server.port) as c:
        assert [c.post("count", {"user": "u", "id": f"e{i}"})[2]["n"] for i in range(3)] == [1, 2, 3]
        assert c.post("count", {"user": "u", "id": "e1"})[2]["n"] == 2, "a repeated delivery is answered, not run"
        assert c.post("by_fn", {"org": "o"})[2] == {"key": "o"}
        assert c.post("by_fn", {})[0] == 400
        body = b'{"x":1}'
        good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert c.post("signed", body, {"x-sig": good, "content-type": "application/json"}, raw=True)[0] == 200
        assert c.post("signed", body, {"x-sig": "sha256=00"}, raw=True)[0] == 401


# -- slot reports and warm-up reasons -------------------------------------------------------------


def test_warmup_reasons_are_the_metric_labels():
    reasons = [WarmupReason.AHEAD, WarmupReason.DEMAND, WarmupReason.REPLACE]
    assert [r.value for r in reasons] == ["ahead", "demand", "replace"]
    assert len(set(reasons)) == 3 and WarmupReason.AHEAD == WarmupReason.AHEAD != WarmupReason.DEMAND
    assert repr(WarmupReason.DEMAND) == "WarmupReason.DEMAND"
    core = _core.Core(_core.AppSettings(**app_fields()), [_core.PipelineSettings(**pipeline_fields())])
    assert sorted(core.pool(0)["warmups"]) == sorted(r.value for r in reasons)


def test_slot_reports_are_the_core_kinds():
    kinds = [SlotReport.WARM, SlotReport.WARMUP_FAILED, SlotReport.CRASHED, SlotReport.RECYCLED]
    assert [k.value for k in kinds] == ["warm", "warmup_failed", "crashed", "recycled"]
    assert len({k: None for k in kinds}) == 4 and SlotReport.WARM != SlotReport.CRASHED


proc_app = warmslot.App()


@proc_app.pipeline("work", min_slots=1, max_slots=2, scaling="static", isolation="process", timeout=5.0)
def work(event, ctx):
    if event.get("crash"):
        os._exit(3)
    return {"pid": os.getpid()}


def test_a_process_slot_takes_a_reason_and_reports_enums(serve, caplog):
    caplog.set_level(logging.INFO, logger="warmslot")
    server, c = serve(proc_app)
    core = server._core
    # The pipeline's own slot: a crash is reported as CRASHED (slots.py logs it), then WARM again.
    assert c.post("work", {"crash": True})[0] == 500
    wait_for(lambda: core.pool(0)["warm"] == 1 and core.pool(0)["warmups"]["replace"] == 1, 10.0, "a fresh worker")
    assert any("crashed" in r.getMessage() and "starting a fresh worker" in r.getMessage() for r in caplog.records)
    assert c.post("work", {})[0] == 200

    with pytest.raises(TypeError):
        core.run_process_slot(0, 1, "demand", lambda kind, message: None)  # type: ignore[arg-type]
    reports: List[Any] = []
    before = core.pool(0)["warmups"]
    # Slot 1 is free: the static policy keeps min_slots (1) warm.
    t = threading.Thread(target=core.run_process_slot, args=(0, 1, WarmupReason.DEMAND, lambda *a: reports.append(a)))
    t.start()
    wait_for(lambda: any(kind == SlotReport.WARM for kind, _ in reports), 10.0, "the slot to report warm")
    assert all(isinstance(kind, SlotReport) for kind, _ in reports), reports
    after = core.pool(0)["warmups"]
    assert after["demand"] == before["demand"] + 1 and after["ahead"] == before["ahead"]
    server.stop()  # run_process_slot returns once the server stops
    t.join(10)
    assert not t.is_alive()


# -- the stub says what the module takes ----------------------------------------------------------


def stub_signatures() -> List[Any]:
    """(qualified name, runtime object, the stub's parameters as (name, kind)) for every function
    and method the stub declares whose runtime object has a signature."""
    with open(os.path.join(os.path.dirname(warmslot.__file__), "_core.pyi")) as f:
        tree = ast.parse(f.read())

    def params(fn: ast.FunctionDef) -> List[Any]:
        a = fn.args
        out = [(p.arg, "positional") for p in a.posonlyargs + a.args]
        out += [(p.arg, "keyword") for p in a.kwonlyargs]
        return [p for p in out if p[0] != "self"]

    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found.append((node.name, getattr(_core, node.name), params(node)))
        elif isinstance(node, ast.ClassDef):
            cls = getattr(_core, node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and (item.name == "__init__" or not item.name.startswith("_")):
                    target = cls if item.name == "__init__" else getattr(cls, item.name)
                    if not isinstance(target, property):
                        found.append((f"{node.name}.{item.name}", target, params(item)))
    out = []
    for name, obj, stub in found:
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        out.append((name, sig, stub))
    return out


def test_the_stub_declares_the_runtime_parameters():
    checked = 0
    for name, sig, stub in stub_signatures():
        kind = {inspect.Parameter.KEYWORD_ONLY: "keyword"}
        runtime = [(p.name, kind.get(p.kind, "positional")) for p in sig.parameters.values() if p.name != "self"]
        assert stub == runtime, f"_core.pyi declares {name}{stub}, the module takes {runtime}"
        checked += 1
    assert checked >= 20, checked


def test_the_stub_declares_the_enum_members():
    for cls, members in (
        (WarmupReason, ["AHEAD", "DEMAND", "REPLACE"]),
        (SlotReport, ["WARM", "WARMUP_FAILED", "CRASHED", "RECYCLED"]),
    ):
        for m in members:
            assert isinstance(getattr(cls, m), cls)
    with open(os.path.join(os.path.dirname(warmslot.__file__), "_core.pyi")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    assert hasattr(getattr(_core, node.name), item.target.id), f"{node.name}.{item.target.id}"
