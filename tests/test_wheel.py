"""The wheel users install, built and tested here (issue 19).

Builds the release wheel with `maturin build --release --locked --zig --compatibility
manylinux2014`: an abi3 wheel for CPython 3.9+, linked through zig against glibc 2.17, tagged as
the release workflow's (which builds in the manylinux2014 container). Checks its contents and
tags and `auditwheel show`, installs it with pip into a fresh virtualenv whose PATH has no Rust
toolchain, and serves requests from that virtualenv with `warmslot run`.

The build reuses the workspace `target/` (or `$CARGO_TARGET_DIR`): a cold release build the first
time (about 2-5 min on 2 cores), seconds after that. It needs `maturin`, `ziglang` and
`auditwheel` in this interpreter (`.ci/run` installs them); without them, or if the build fails,
these tests fail: they never skip. `WARMSLOT_TEST_WHEEL=path/to.whl` tests a wheel built
elsewhere instead (the release workflow does).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
ARCH = platform.machine()
#: The tags `--compatibility manylinux2014` gives on this machine: the legacy alias and its PEP 600 name.
PLATFORM_TAGS = {f"manylinux2014_{ARCH}", f"manylinux_2_17_{ARCH}"}
BUILD_TIMEOUT = 1500

# The first test to ask for the wheel pays for the build.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 300)


def _build_env() -> Dict[str, str]:
    """The environment of the build: this interpreter's bin directory first on PATH, so that
    maturin's zig (`python3 -m ziglang`) is the `ziglang` installed beside the running pytest."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def _check_tools(env: Dict[str, str], modules: Tuple[str, ...]) -> None:
    probes = {"maturin": ["--version"], "ziglang": ["version"], "auditwheel": ["--version"]}
    missing = []
    for module in modules:
        probe = subprocess.run([sys.executable, "-m", module, *probes[module]], env=env, capture_output=True)
        if probe.returncode != 0:
            missing.append(module)
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing from {sys.executable}: the wheel test builds the release wheel and "
            "checks it; `bash .ci/run` installs them (see its pip install line for the versions)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manylinux2014 abi3 wheel, built once per session from this source tree.

    `WARMSLOT_TEST_WHEEL=path/to.whl` tests that wheel instead of building one: the release
    workflow (.github/workflows/wheels.yml) sets it to the wheel maturin-action built."""
    env = _build_env()
    given = os.environ.get("WARMSLOT_TEST_WHEEL")
    if given:
        _check_tools(env, ("auditwheel",))
        assert Path(given).is_file(), f"WARMSLOT_TEST_WHEEL={given} is not a file"
        return Path(given).resolve()
    _check_tools(env, ("maturin", "ziglang", "auditwheel"))
    out = tmp_path_factory.mktemp("wheelhouse")
    cmd = [sys.executable, "-m", "maturin", "build", "--release", "--locked", "--zig"]
    cmd += ["--compatibility", "manylinux2014", "--out", str(out)]
    started = time.monotonic()
    build = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if build.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({build.returncode}):\n{build.stderr[-6000:]}", pytrace=False)
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, got {wheels}\n{build.stderr[-3000:]}"
    took = time.monotonic() - started
    sys.stderr.write(f"\nbuilt {wheels[0].name} ({wheels[0].stat().st_size} bytes) in {took:.0f}s\n")
    return wheels[0]


def test_wheel_is_abi3_manylinux2014_with_its_type_information(wheel: Path) -> None:
    # name-version-pythontag-abitag-platformtag(s).whl
    name, version, python_tag, abi_tag, platform_tags = wheel.name[: -len(".whl")].split("-")
    assert (name, version) == ("warmslot", "0.1.0")
    assert (python_tag, abi_tag) == ("cp39", "abi3"), wheel.name
    assert set(platform_tags.split(".")) == PLATFORM_TAGS, wheel.name

    with zipfile.ZipFile(wheel) as zf:
        listing = zf.namelist()
        names = set(listing)
        wheel_meta = zf.read("warmslot-0.1.0.dist-info/WHEEL").decode()
        entry_points = zf.read("warmslot-0.1.0.dist-info/entry_points.txt").decode()
        metadata = zf.read("warmslot-0.1.0.dist-info/METADATA").decode()
    assert len(listing) == len(names), f"duplicate members: {sorted(listing)}"
    for member in (
        "warmslot/py.typed",
        "warmslot/_core.pyi",
        "warmslot/_core.abi3.so",
        "warmslot/__init__.py",
        "warmslot/cli.py",
        "warmslot/worker.py",
        "warmslot/examples/bots.py",
    ):
        assert member in names, f"{member} is not in {wheel.name}: {sorted(names)}"
    # Nothing from outside the package: no tests, no Rust sources, no stray build products.
    assert {n.split("/")[0] for n in names} == {"warmslot", "warmslot-0.1.0.dist-info"}, sorted(names)
    assert not [n for n in names if n.endswith(".so") and n != "warmslot/_core.abi3.so"]

    tags = set(re.findall(r"^Tag: (\S+)$", wheel_meta, re.M))
    assert tags == {f"cp39-abi3-{t}" for t in PLATFORM_TAGS}, wheel_meta
    assert re.search(r"^Root-Is-Purelib: false$", wheel_meta, re.M), wheel_meta
    assert re.search(r"^warmslot\s*=\s*warmslot\.cli:main$", entry_points, re.M), entry_points
    assert re.search(r"^Requires-Python: >=3\.9$", metadata, re.M)
    assert re.search(r"^Requires-Dist: orjson>=3\.9$", metadata, re.M)
    # A wheel users download: the extension is stripped of debug info and a few MB at most.
    assert wheel.stat().st_size < 8 * 1024 * 1024, wheel.stat().st_size


def test_auditwheel_says_manylinux2014(wheel: Path) -> None:
    show = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)], env=_build_env(), capture_output=True, text=True
    )
    assert show.returncode == 0, show.stdout + show.stderr
    text = " ".join(show.stdout.split())  # auditwheel wraps its lines
    consistent = re.search(r'is consistent with the following platform tag: "([^"]+)"', text)
    assert consistent, text
    assert consistent.group(1) in PLATFORM_TAGS, text
    # Only the system libraries the manylinux policy allows, none bundled or missing.
    assert "libpython" not in text, text
    for lib in re.findall(r"\blib[\w+-]+\.so(?:\.\d+)*", text):
        assert lib in {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libgcc_s.so.1"}, text


def _bare_env(venv: Path) -> Dict[str, str]:
    """An environment with the virtualenv's bin and the system's directories on PATH, and no
    trace of Rust, of another virtualenv or of this source tree."""
    path = [str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP", "RUST", "PYTHON", "PIP_"))}
    env.pop("VIRTUAL_ENV", None)
    env.update(PATH=os.pathsep.join(path), PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    return env


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Dict[str, str]]:
    """A fresh virtualenv with the wheel installed by pip, with no Rust on PATH: (venv, env)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
    env = _bare_env(venv)
    for tool in ("cargo", "rustc", "maturin"):
        assert shutil.which(tool, path=env["PATH"]) is None, f"{tool} is on the test virtualenv's PATH"
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--only-binary=:all:", str(wheel)],
        cwd=venv,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv, env


def test_installed_wheel_imports_from_the_virtualenv(installed: Tuple[Path, Dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    probe = textwrap.dedent(
        """
        import json, sys, sysconfig
        import warmslot, warmslot._core
        print(json.dumps({
            "core": warmslot._core.__file__,
            "package": warmslot.__file__,
            "purelib": sysconfig.get_paths()["purelib"],
            "platlib": sysconfig.get_paths()["platlib"],
            "prefix": sys.prefix,
            "app": hasattr(warmslot, "App"),
        }))
        """
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    site = {os.path.realpath(info["purelib"]), os.path.realpath(info["platlib"])}
    core, package = os.path.realpath(info["core"]), os.path.realpath(info["package"])
    assert os.path.realpath(info["prefix"]) == os.path.realpath(venv)
    assert os.path.dirname(os.path.dirname(core)) in site, info
    assert os.path.basename(core) == "_core.abi3.so", info
    assert os.path.dirname(os.path.dirname(package)) in site, info
    assert not core.startswith(str(ROOT / "pylib") + os.sep), f"imported from the source tree: {info}"
    assert info["app"]
    installed_files = {p.name for p in Path(core).parent.iterdir()}
    assert {"py.typed", "_core.pyi"} <= installed_files, installed_files


BOT = """
import os
import sys

import warmslot

app = warmslot.App()


@app.pipeline("count", key="user")
def count(event, ctx):
    ctx.state["n"] = ctx.state.get("n", 0) + event.get("by", 1)
    return {"user": event["user"], "n": ctx.state["n"]}


@app.pipeline("where", isolation="process", slots=1)
def where(event, ctx):
    import warmslot._core

    return {"pid": os.getpid(), "executable": sys.executable, "core": warmslot._core.__file__}
"""


def _request(port: int, method: str, path: str, body: object = None) -> Tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def served(installed: Tuple[Path, Dict[str, str]], tmp_path: Path) -> Iterator[Tuple[int, subprocess.Popen, Path]]:
    """`warmslot run bot.py:app` from the virtualenv's console script: (port, process, venv)."""
    venv, env = installed
    (tmp_path / "bot.py").write_text(BOT)
    port = free_port()
    proc = subprocess.Popen(
        [str(venv / "bin" / "warmslot"), "run", "bot.py:app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"warmslot run exited {proc.returncode}:\n{out}\n{err}")
        try:
            return _request(port, "GET", "/healthz")[0] == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 60.0, "warmslot run from the installed wheel to be healthy")
        yield port, proc, venv
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_installed_wheel_serves_and_stops_cleanly(served: Tuple[int, subprocess.Popen, Path]) -> None:
    port, proc, venv = served
    status, health = _request(port, "GET", "/healthz")
    assert status == 200, health
    assert isinstance(health, dict) and {"count", "where"} <= set(health["pipelines"]), health

    seen: List[Tuple[str, int]] = []
    for user in ["a", "b", "a", "a", "c", "b"]:
        status, reply = _request(port, "POST", "/hooks/count", {"user": user})
        assert status == 200, reply
        assert isinstance(reply, dict) and reply["user"] == user
        seen.append((user, reply["n"]))
    assert seen == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("c", 1), ("b", 2)], "state counts per key"
    assert _request(port, "POST", "/hooks/count", {"user": "c", "by": 10}) == (200, {"user": "c", "n": 11})

    # A process slot: a worker spawned from the virtualenv's interpreter, importing the wheel's extension.
    status, reply = _request(port, "POST", "/hooks/where", {})
    assert status == 200, reply
    assert isinstance(reply, dict) and reply["pid"] != proc.pid, reply
    assert os.path.realpath(os.path.dirname(reply["executable"])) == os.path.realpath(venv / "bin"), reply
    assert os.path.realpath(reply["core"]).startswith(os.path.realpath(venv) + os.sep), reply

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    assert "serving /hooks/count" in out, out
    assert "Traceback" not in err and "panicked" not in err, err
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
