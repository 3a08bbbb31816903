"""The docs stay true: README.md is a short front page, the docs site builds with
``mkdocs build --strict``, the generated tables are what ``scripts/gen_docs.py`` makes from the
committed data, every complete program in the docs runs and answers what the page says, the
``App(...)`` signature on the page is the code's, and ``// NOTE:`` comments stay short.

Marking code blocks (an HTML comment on the line before the fence, invisible on the page):

- ``<!-- test: program -->`` before a ``python`` block, or before one that includes a file with
  pymdownx.snippets (``--8<-- "path"``, or ``--8<--``, the path and ``--8<--`` on three lines,
  which formatters leave alone): a complete program. It is served with ``warmslot run FILE:app``
  and, when the next ``sh`` block holds a ``warmslot run`` line, that block is its session: every
  command runs (``localhost:8000`` pointing at the served program), and the ``# ...`` lines right
  under a command are its expected output (JSON compared as JSON; ``...`` matches anything). A
  program with ``if __name__ == "__main__":`` is also run as a script and must exit 0.
- ``<!-- test: fragment -->``: a block that imports warmslot but is not a whole program.
- ``<!-- test: app-signature -->``: the ``warmslot.App(...)`` listing, compared with the code.
"""

from __future__ import annotations

import glob
import importlib.util
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import pytest
import warmslot
from conftest import free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*test:\s*([\w-]+)\s*-->\s*$")
SNIPPET = re.compile(r'^--8<--\s+"([^"]+)"\s*$')


@dataclass
class Block:
    page: str
    line: int
    lang: str
    body: str
    marker: Optional[str]

    @property
    def where(self) -> str:
        return f"{os.path.relpath(self.page, ROOT)}:{self.line}"


def blocks(page: str) -> List[Block]:
    with open(page, encoding="utf-8") as f:
        text = f.read()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        out.append(
            Block(
                page,
                text.count("\n", 0, m.start()) + 1,
                m.group(1).split()[0] if m.group(1).strip() else "",
                m.group(2),
                marker.group(1) if marker else None,
            )
        )
    return out


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


def program_source(block: Block) -> str:
    """A program block's code: its text, or the file it includes."""
    lines = [line.strip() for line in block.body.splitlines() if line.strip()]
    if len(lines) == 1 and SNIPPET.match(lines[0]):
        path = SNIPPET.match(lines[0]).group(1)
    elif len(lines) == 3 and lines[0] == lines[2] == "--8<--":  # the block form, which formatters leave alone
        path = lines[1]
    else:
        return block.body
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def session_of(block: Block) -> Optional[Block]:
    """The ``sh`` block after `block` that starts it with ``warmslot run``, if any comes before
    the next program."""
    page = [b for b in ALL_BLOCKS if b.page == block.page]
    for b in page[page.index(block) + 1 :]:
        if b.marker == "program":
            return None
        if b.lang == "sh" and re.search(r"^warmslot run ", b.body, re.M):
            return b
    return None


PROGRAMS = [b for b in ALL_BLOCKS if b.marker == "program"]


# --- the front page ---------------------------------------------------------------------------


def test_readme_is_a_short_front_page():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    text = "\n".join(lines)
    for command in ("pip install . && warmslot demo", "bash .ci/run"):
        assert f"```sh\n{command}\n```" in text, f"the README shows {command!r} on its own"


def test_readme_links_point_at_files_that_exist():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links into the docs"
    missing = [link for link in local if not os.path.exists(os.path.join(ROOT, link))]
    assert not missing, missing


# --- the site ---------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.fail("mkdocs-material is not installed: pip install '.[test]' (or pip install mkdocs-material)")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
    # The page that includes examples/echo.py shows its code, not the include line.
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "--8&lt;--" not in index
    assert "per-user state, committed after return" in index


# --- generated blocks -------------------------------------------------------------------------


def gen_docs() -> Any:
    spec = importlib.util.spec_from_file_location("gen_docs", os.path.join(ROOT, "scripts", "gen_docs.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_blocks_are_what_the_script_makes_from_the_committed_data():
    gen = gen_docs()
    for name, (path, make) in gen.blocks().items():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            text = f.read()
        body = make()
        assert f"{gen.begin(name)}\n{body}\n{gen.end(name)}" in text, (
            f"{path}: block {name} is not current; run python scripts/gen_docs.py"
        )
    assert gen.main(["--check"]) == 0


def test_the_readme_table_is_the_committed_run():
    gen = gen_docs()
    with open(os.path.join(ROOT, "docs", "bench.json"), encoding="utf-8") as f:
        data = json.load(f)
    table = gen.bench_summary(data)
    meta = data["meta"]
    assert meta["command"] in table and gen.utc(meta["time"]) in table and meta["commit"][:7] in table
    assert data["versions"]["cpu_model"] in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| system")]
    assert [r.split(" | ")[0][2:] for r in rows] == [s["name"] for s in data["systems"]]
    thread = next(r for r in data["ratios"] if (r["system"], r["peer"]) == ("warmslot-thread", gen.BASELINE))
    x = thread["rps_64_x"]
    assert f"{x['median']:.2f}× ({x['min']:.2f}–{x['max']:.2f})" in rows[0]


def test_a_stale_block_is_rewritten_and_a_missing_one_named(tmp_path):
    gen = gen_docs()
    text = f"intro\n{gen.begin('x')}\nold figures\n{gen.end('x')}\nrest\n"
    assert gen.render(text, "x", "new") == f"intro\n{gen.begin('x')}\nnew\n{gen.end('x')}\nrest\n"
    with pytest.raises(ValueError, match="no block 'y'"):
        gen.render(text, "y", "new")


# --- code blocks ------------------------------------------------------------------------------


def test_every_complete_program_in_the_docs_is_marked():
    """A block that imports warmslot is either run (program) or says why not (fragment)."""
    unmarked = [
        b.where
        for b in ALL_BLOCKS
        if b.lang == "python" and re.search(r"^import warmslot", b.body, re.M) and b.marker is None
    ]
    assert not unmarked, f"mark these blocks <!-- test: program --> or <!-- test: fragment -->: {unmarked}"
    assert len(PROGRAMS) >= 8
    assert all(b.lang == "python" for b in PROGRAMS)


def parse_session(body: str) -> List[Tuple[str, List[str]]]:
    """(command, expected output lines) for each command of a session block."""
    steps: List[Tuple[str, List[str]]] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        command = line
        while command.endswith("\\") and i < len(lines):
            command = command[:-1] + lines[i]
            i += 1
        expected = []
        while i < len(lines) and lines[i].startswith("# "):
            expected.append(lines[i][2:])
            i += 1
        if not command.startswith("warmslot run "):
            steps.append((command, expected))
    return steps


def matches(want: Any, got: Any) -> bool:
    """`got` equals `want`, where the string ``"..."`` in `want` matches any value."""
    if want == "...":
        return True
    if isinstance(want, dict):
        return isinstance(got, dict) and want.keys() == got.keys() and all(matches(want[k], got[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(map(matches, want, got))
    return want == got


def output_matches(expected: str, output: str) -> bool:
    try:
        return matches(json.loads(expected), json.loads(output))
    except ValueError:
        pattern = ".*".join(map(re.escape, expected.split("...")))
        return re.fullmatch(pattern, output, re.S) is not None


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.parametrize("block", PROGRAMS, ids=lambda b: b.where)
def test_docs_program_runs_and_answers_as_the_page_says(block, tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(program_source(block), encoding="utf-8")
    port = free_port()
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "WARMSLOT_ADMIN_TOKEN"}  # only what the program sets
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "warmslot", "run", f"{path}:app", "--port", str(port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        try:
            wait_for(lambda: healthy(port) or server.poll() is not None, 60, f"{block.where} to serve")
        except AssertionError:
            raise AssertionError(log.read_text())
        assert server.poll() is None, f"{block.where} did not start:\n{log.read_text()}"
        session = session_of(block)
        if session is not None:
            run_session(block, session, port, tmp_path)
        if 'if __name__ == "__main__":' in program_source(block):
            proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, f"{block.where} as a script:\n{proc.stdout}{proc.stderr}"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_session(block: Block, session: Block, port: int, cwd: Any) -> None:
    steps = parse_session(session.body)
    assert steps, f"{session.where}: a session with no command"
    sep = "@@@ end of command @@@"
    script = "set -u\n" + "".join(
        f"{command.replace('localhost:8000', f'127.0.0.1:{port}')}\necho; echo '{sep}'\n" for command, _ in steps
    )
    if any("openssl" in c for c, _ in steps) and shutil.which("openssl") is None:
        pytest.skip("the session needs openssl")
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    outputs = proc.stdout.split(sep + "\n")
    for (command, expected), output in zip(steps, outputs):
        if expected:
            want, got = "\n".join(expected), output.strip("\n")
            assert output_matches(want, got), f"{session.where}: {command}\n  page says: {want}\n  server said: {got}"


def test_the_session_parser():
    steps = parse_session(
        "warmslot run x.py:app --port 8000   # one terminal\n"
        "body='{\"a\": 1}'\n"
        'curl -s localhost:8000/x \\\n  -d "$body"\n'
        '# {"a": 1}\n'
        "# more\n"
        "\n"
        "# a comment after a blank line is no output\n"
    )
    assert steps == [("body='{\"a\": 1}'", []), ('curl -s localhost:8000/x   -d "$body"', ['{"a": 1}', "more"])]
    assert output_matches('{"id": "...", "n": [1, 2]}', '{"id":"3f0c","n":[1,2]}')
    assert not output_matches('{"n": 1}', '{"n": 2}')
    assert output_matches("took ... ms", "took 12 ms")


# --- the App signature ------------------------------------------------------------------------


def test_the_app_signature_on_the_page_is_the_codes():
    (block,) = [b for b in ALL_BLOCKS if b.marker == "app-signature"]
    listed = re.findall(r"^\s+(\w+)=(.+?),$", block.body, re.M)
    params = [p for p in inspect.signature(warmslot.App).parameters.values()]
    assert [name for name, _ in listed] == [p.name for p in params], "the page lists every option, in order"
    for (name, default), p in zip(listed, params):
        assert eval(default) == p.default, (name, default, p.default)  # noqa: S307 -- our own docs
    assert "*," in block.body, "the page shows which options are keyword-only"


# --- short NOTE comments ----------------------------------------------------------------------

#: `// NOTE:` blocks allowed to be longer than 4 lines (none).
LONG_NOTES_ELSEWHERE: set = set()


def note_blocks(path: str) -> List[Tuple[int, int]]:
    """(line, length) of each `// NOTE:` comment in a Rust file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].lstrip().startswith(("// NOTE", "/// NOTE")):
            j = i + 1
            while j < len(lines) and lines[j].lstrip().startswith("//") and "NOTE" not in lines[j]:
                if lines[j].lstrip().startswith("///") and not lines[i].lstrip().startswith("///"):
                    break  # a doc comment under the note
                j += 1
            out.append((i + 1, j - i))
            i = j
        else:
            i += 1
    return out


def test_note_comments_keep_the_reason_and_one_figure_in_at_most_four_lines():
    long = []
    for path in glob.glob(os.path.join(ROOT, "rust", "**", "*.rs"), recursive=True):
        rel = os.path.relpath(path, ROOT)
        if rel in LONG_NOTES_ELSEWHERE:
            continue
        long += [f"{rel}:{line} ({n} lines)" for line, n in note_blocks(path) if n > 4]
    assert not long, f"move the history to docs/design/: {long}"
