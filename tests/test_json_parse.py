"""The server's JSON parser as slots use it (`_core.loads`): the objects Python's `json` builds.

Thread slots and worker processes parse bodies with it, straight into Python objects; field names
come from a small per-thread cache. These tests check that the cache never changes what a body
parses to: collisions, evictions, long and non-ASCII names, escapes, duplicates.
"""

from __future__ import annotations

import json
import random
import string
import threading

from warmslot import _core


def _name(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.1:
        return "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(65, 120)))  # not cached
    if kind < 0.2:
        return rng.choice(["é", "名前", "ключ", 'a"b', "tab\there", "\u2028", "emoji😀"]) + str(rng.randint(0, 9))
    return "".join(rng.choice(string.ascii_lowercase + "_") for _ in range(rng.randint(0, 12)))


def _document(rng: random.Random, depth: int = 0):
    if depth > 3 or rng.random() < 0.3:
        return rng.choice([None, True, False, rng.randint(-(2**63), 2**64 - 1), rng.random(), _name(rng)])
    if rng.random() < 0.3:
        return [_document(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_name(rng): _document(rng, depth + 1) for _ in range(rng.randint(0, 6))}


def test_parses_as_python_json_does_across_many_field_names():
    rng = random.Random(20261202)
    for _ in range(3000):  # thousands of distinct names: the 512-entry cache collides and evicts
        doc = _document(rng)
        raw = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        assert _core.loads(raw) == json.loads(raw), raw[:200]


def test_field_order_and_duplicate_fields_match_python_json():
    for raw in [
        b'{"b":1,"a":2,"b":3}',
        b'{"k":{"k":{"k":1}},"k2":[{"k":2},{"k":3}]}',
        b'{"\\u006b":1,"k":2}',  # an escaped name equal to a plain one
        b'{"":0,"x":{"":1}}',
    ]:
        got, want = _core.loads(raw), json.loads(raw)
        assert got == want and list(got) == list(want), raw


def test_a_repeated_field_name_is_one_str_object():
    a = _core.loads(b'{"conversation":"c1","text":"hi"}')
    b = _core.loads(b'{"conversation":"c2","text":"yo"}')
    assert [x for x in a] == [y for y in b]
    assert all(x is y for x, y in zip(a, b)), "field names should come from the cache"
    long = "n" * 100
    c = _core.loads(json.dumps({long: 1}).encode())
    d = _core.loads(json.dumps({long: 2}).encode())
    assert list(c) == list(d) == [long]


def test_threads_parse_with_their_own_caches():
    rng = random.Random(7)
    docs = [json.dumps(_document(rng)).encode() for _ in range(400)]
    want = [json.loads(d) for d in docs]
    errors: list[str] = []

    def parse_all() -> None:
        for _ in range(5):
            for raw, expected in zip(docs, want):
                if _core.loads(raw) != expected:
                    errors.append(raw.decode()[:100])

    threads = [threading.Thread(target=parse_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
