"""`GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API, checked against a running
server (every path and method in it answers, the cheap statuses and error codes it documents are
produced) and back (every `ErrorCode` of `error.rs` and every route `routes.rs` matches is in it)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import threading
from typing import Any, Dict, Iterator, List, Optional

import pytest
import warmslot

ROOT = pathlib.Path(__file__).resolve().parent.parent
HTTP = ROOT / "rust" / "core" / "src" / "http"
TOKEN = "tok-openapi_7Qx"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"]
RELEASE = threading.Event()


def make_app() -> warmslot.App:
    app = warmslot.App(admin_token=TOKEN, max_header_bytes=16 << 10)

    @app.pipeline("echo", key="user", max_body_bytes=64)
    def echo(event, ctx):
        return {"user": event.get("user")}

    @app.pipeline("signed", signature=warmslot.github_signature("s3cret"))
    def signed(event, ctx):
        return {}

    @app.pipeline("narrow", slots=1, queue_size=1, max_batch=1, timeout=None)
    def narrow(event, ctx):
        RELEASE.wait(10)
        return {}

    @app.pipeline("boom")
    def boom(event, ctx):
        raise ValueError("asked to fail")

    @app.pipeline("slow", timeout=0.2)
    async def slow(event, ctx):
        await asyncio.sleep(5)
        return {}

    return app


@pytest.fixture
def served(serve) -> Iterator:
    RELEASE.clear()
    server, c = serve(make_app())
    status, _, doc = c.get("/openapi.json")  # open: no token
    assert status == 200, doc
    yield server, c, doc
    RELEASE.set()


def resolve(doc: dict, node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        assert node["$ref"].startswith("#/"), node
        target: Any = doc
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for v in node.values():
            yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def codes(doc: dict, node: Any) -> List[str]:
    """The error codes a response (or a reference to one) names: each `enum` under a `code`
    property inside it. References inside are not followed: they lead to the generic `Error`
    schema, whose enum has every code; a response narrows it with its own."""
    node = resolve(doc, node)
    out: List[str] = []
    if isinstance(node, dict):
        code = node.get("code")
        if isinstance(code, dict) and isinstance(code.get("enum"), list):
            out += code["enum"]
        for v in node.values():
            out += codes(doc, v) if not (isinstance(v, dict) and "$ref" in v) else []
    elif isinstance(node, list):
        for v in node:
            out += codes(doc, v) if not (isinstance(v, dict) and "$ref" in v) else []
    return out


def operations(doc: dict) -> Iterator:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def response(doc: dict, path: str, method: str, status: int) -> dict:
    responses = doc["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    return resolve(doc, responses[str(status)])


def expect(doc: dict, path: str, method: str, resp, status: int, code: Optional[str] = None) -> Dict[str, str]:
    """Checks that the server's answer `resp` is `status` (with error `code`), and that the
    document declares both, and every header it declares for that status, for the operation."""
    got, headers, body = resp
    assert got == status, (path, method, body)
    declared = response(doc, path, method, status)
    if code is not None:
        assert body["error"]["code"] == code, body
        assert code in codes(doc, declared), f"{method.upper()} {path} {status} does not list {code}"
    ctype = headers.get("content-type", "").split(";")[0]
    assert ctype in declared.get("content", {}), (path, status, ctype)
    for name in declared.get("headers", {}):
        if name.lower() not in ("x-warmslot-execution-id", "connection") or status in (200, 202):
            assert name.lower() in headers, (path, status, name, headers)
    return headers


def test_the_document_is_openapi_3_1(served):
    _, _, doc = served
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"] == warmslot.__version__
    assert doc["components"]["securitySchemes"]["admin"] == {
        **doc["components"]["securitySchemes"]["admin"],
        "type": "http",
        "scheme": "bearer",
    }
    for ref in refs(doc):
        resolve(doc, {"$ref": ref})  # every reference resolves
    for path, method, op in operations(doc):
        assert path.startswith("/") and op["responses"], (path, method)
        assert all(re.fullmatch(r"[1-5]\d\d", s) for s in op["responses"]), (path, op["responses"])
        names = re.findall(r"{(\w+)}", path)
        declared = [resolve(doc, p) for p in op.get("parameters", [])]
        assert sorted(names) == sorted(p["name"] for p in declared if p["in"] == "path"), path
        for scheme in op.get("security", []):
            assert set(scheme) <= set(doc["components"]["securitySchemes"]), (path, scheme)
    enum = doc["components"]["parameters"]["pipeline"]["schema"]["enum"]
    assert sorted(enum) == ["boom", "echo", "narrow", "signed", "slow"]
    # The served document is the static file, plus the version and the pipelines.
    static = json.loads((HTTP / "openapi.json").read_text())
    del doc["components"]["parameters"]["pipeline"]["schema"]["enum"], doc["info"]["version"]
    del static["info"]["version"]
    assert doc == static


def test_the_document_passes_openapi_spec_validator(served):
    import openapi_spec_validator  # in the test extra (pyproject.toml)

    openapi_spec_validator.validate(served[2])


def test_every_path_and_method_answers_as_declared(served):
    server, c, doc = served
    _, headers, _ = c.post("echo", {"user": "a"}, {"Prefer": "respond-async"})
    concrete = {"pipeline": "echo", "id": headers["x-warmslot-execution-id"]}
    admin = []
    for path, method, op in operations(doc):
        url = path.format(**concrete)
        body = b"{}" if method == "post" else None
        if op.get("security") == [{"admin": []}]:
            admin.append(path)
            resp = c.request(method.upper(), url, body, raw=True)
            expect(doc, path, method, resp, 401, "unauthorized")
        else:
            assert op.get("security") == [], f"{path}: open routes say so with security: []"
        resp = c.request(method.upper(), url, body, headers=AUTH, raw=True)
        expect(doc, path, method, resp, 200)
        # Any other method: 405 with `Allow` naming the documented ones.
        allowed = {m.upper() for m in METHODS if m in doc["paths"][path]}
        other = "DELETE" if "DELETE" not in allowed else "PUT"
        resp = c.request(other, url, b"", headers=AUTH, raw=True)
        headers = expect(doc, path, method, resp, 405, "method_not_allowed")
        assert set(headers["allow"].split(", ")) == allowed, (path, headers["allow"])
    assert sorted(admin) == ["/dashboard", "/executions", "/executions/{id}", "/metrics", "/stats"]
    # The dashboard also opens with ?token= (its documented query parameter).
    assert c.get(f"/dashboard?token={TOKEN}")[0] == 200


def test_the_cheap_documented_statuses_are_produced(served):
    server, c, doc = served
    hook = "/hooks/{pipeline}"
    expect(doc, hook, "post", c.post("nope", {}), 404, "unknown_pipeline")
    expect(doc, hook, "post", c.post("echo", b"{nope", raw=True), 400, "invalid_json")
    expect(doc, hook, "post", c.post("echo", {"user": {"a": 1}}), 400, "bad_request")
    expect(doc, hook, "post", c.post("echo", {"user": "x" * 100}), 413, "payload_too_large")
    expect(doc, hook, "post", c.post("signed", {}), 401, "bad_signature")
    expect(doc, hook, "post", c.post("echo", {}, {"X-Pad": "p" * 20000}), 431, "headers_too_large")
    expect(doc, hook, "post", c.post("boom", {}), 500, "pipeline_error")
    expect(doc, hook, "post", c.post("slow", {}), 504, "pipeline_timeout")
    expect(doc, hook, "post", c.post("echo", {"user": "u"}), 200)
    headers = expect(doc, hook, "post", c.post("echo", {"user": "u"}, {"Prefer": "respond-async"}), 202)
    assert headers["location"] == f"/executions/{headers['x-warmslot-execution-id']}"
    status, _, record = c.request("GET", headers["location"], headers=AUTH)
    assert status == 200 and record["id"] == headers["x-warmslot-execution-id"]
    # 429: one running, one waiting (queue_size=1), then refused.
    statuses = []
    for i in range(10):
        resp = c.post("narrow", {"i": i}, {"Prefer": "respond-async"})
        statuses.append(resp[0])
        if resp[0] == 429:
            headers = expect(doc, hook, "post", resp, 429, "overloaded")
            assert headers["retry-after"] == "1"
            break
    assert statuses[-1] == 429, statuses
    RELEASE.set()

    def get(path: str):
        return c.request("GET", path, headers=AUTH)

    expect(doc, "/stats", "get", get("/stats?since=yesterday"), 400, "bad_request")
    expect(doc, "/stats", "get", get("/stats?since=0"), 200)
    expect(doc, "/executions", "get", get("/executions?limit=many"), 400, "bad_request")
    expect(doc, "/executions", "get", get("/executions?status=queued"), 400, "bad_request")
    expect(doc, "/executions", "get", get("/executions?pipeline=nope"), 404, "unknown_pipeline")
    expect(doc, "/executions", "get", get("/executions?status=failed&pipeline=boom&limit=5"), 200)
    expect(doc, "/executions/{id}", "get", get("/executions/nope"), 404, "unknown_execution")
    expect(doc, "/healthz", "get", c.get("/healthz"), 200)
    # A path not described: `components.responses.NoRoute`.
    status, _, body = c.get("/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert codes(doc, doc["components"]["responses"]["NoRoute"]) == ["not_found"]
    # Not produced here (slow or needs a failure): 408 (tests/test_limits.py), 503 shutting_down,
    # 500 state_error / state_too_large / slot_crashed and 503 /healthz (tests/test_errors.py).


def rust_error_codes() -> Dict[str, int]:
    """`code -> HTTP status`, parsed from `ErrorCode::as_str` and `ErrorCode::status`."""
    src = (ROOT / "rust" / "core" / "src" / "error.rs").read_text()
    names = dict(re.findall(r'ErrorCode::(\w+) => "(\w+)"', src))
    status_fn = src[src.index("pub const fn status") :]
    status_fn = status_fn[: status_fn.index("\n    }\n")]
    statuses = {}
    for arm, status in re.findall(r"((?:ErrorCode::\w+\s*\|?\s*)+)=>\s*(\d{3})", status_fn):
        for variant in re.findall(r"ErrorCode::(\w+)", arm):
            statuses[names[variant]] = int(status)
    assert len(names) == 18 and set(statuses) == set(names.values()), (names, statuses)
    return statuses


def test_every_error_code_is_documented_with_its_status(served):
    _, _, doc = served
    by_status: Dict[int, set] = {}
    for _, _, op in operations(doc):
        for status, resp in op["responses"].items():
            by_status.setdefault(int(status), set()).update(codes(doc, resp))
    by_status.setdefault(404, set()).update(codes(doc, doc["components"]["responses"]["NoRoute"]))
    rust = rust_error_codes()
    for code, status in rust.items():
        assert code in by_status.get(status, set()), f"{code} ({status}) is in no documented {status} response"
    documented = {c for cs in by_status.values() for c in cs}
    assert documented == set(rust), documented ^ set(rust)
    assert set(doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]) == set(rust)


def test_every_route_the_router_matches_is_documented(served):
    _, _, doc = served
    src = (HTTP / "routes.rs").read_text()
    literals = set(re.findall(r'"(/[a-z._]+/?)"', src))
    assert {"/hooks/", "/healthz", "/openapi.json", "/metrics", "/executions/"} <= literals, literals
    paths = list(doc["paths"])
    for lit in literals:
        # `/hooks/` and `/executions/` are prefixes of a templated path (and `/executions/` alone lists).
        assert lit in paths or any(p.startswith(lit) and p[len(lit)] == "{" for p in paths), lit
        assert lit.rstrip("/") in paths or lit.endswith("/"), lit
