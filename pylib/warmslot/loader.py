"""Finds the `App` named by ``PATH_OR_MODULE:ATTR``.

Whatever goes wrong is a `LoadError` whose message is one line that names the file and line, and
says what to fix: a syntax error or an exception while the module is imported (``bot.py:3:
SyntaxError: ...``, with the exception as the error's ``__cause__``: ``warmslot run --log-level
debug`` prints its traceback), a missing attribute (naming the module's Apps, or its names), a
target that is not an App."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import sysconfig
import traceback
import types
from typing import Any, List, Optional, Tuple


class LoadError(Exception):
    """The target could not be loaded; the message says why and what to fix. When the module
    raised while it was imported, that exception is ``__cause__`` (its traceback tells more)."""


def load_app(target: str) -> Any:
    """The `App` that `target` (``path/to/file.py[:ATTR]`` or ``module.name[:ATTR]``, ATTR
    defaulting to ``app``) names. Raises `LoadError` with a one-line message."""
    from .app import App

    module_part, sep, attr = target.rpartition(":")
    if not sep or (len(module_part) == 1 and module_part.isalpha()):  # no ':' (or a Windows drive)
        module_part, attr = target, "app"
    attr = attr or "app"
    is_path = module_part.endswith(".py") or os.sep in module_part or "/" in module_part
    if is_path:
        path = os.path.abspath(module_part)
        if not os.path.isfile(path):
            raise LoadError(f"no such file: {module_part}")
        name = os.path.splitext(os.path.basename(path))[0]
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)  # so the bot can import its neighbours
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise LoadError(f"cannot import {module_part}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            if sys.modules.get(name) is module:
                del sys.modules[name]  # as a failed `import` leaves it
            raise LoadError(_import_failure(exc, module_part, path)) from exc
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and (module_part == exc.name or module_part.startswith(exc.name + ".")):
                raise LoadError(f"no module named {module_part!r} (nor a file by that name)") from None
            raise LoadError(_import_failure(exc, module_part, None)) from exc
        except Exception as exc:
            raise LoadError(_import_failure(exc, module_part, None)) from exc
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise LoadError(f"{module_part} has no attribute {attr!r}{_what_it_has(module, module_part)}") from None
    if app is App:
        fix = f"create one, {attr} = warmslot.App()"
        raise LoadError(f"{module_part}:{attr} is the class warmslot.App, not an App: {fix}")
    if not isinstance(app, App):
        others = _what_it_has(module, module_part, apps_only=True)
        raise LoadError(f"{module_part}:{attr} is {_describe(app)}, not a warmslot.App{others}")
    return app


def _what_it_has(module: types.ModuleType, module_part: str, apps_only: bool = False) -> str:
    """``; its warmslot.App is 'bots' (try bot.py:bots)``, or (unless `apps_only`) the module's
    names when it has no App."""
    from .app import App

    apps = [k for k, v in vars(module).items() if isinstance(v, App)]
    if len(apps) == 1:
        return f"; its warmslot.App is {apps[0]!r} (try {module_part}:{apps[0]})"
    if apps:
        return f"; its warmslot.Apps are {', '.join(map(repr, apps))} (try {module_part}:{apps[0]})"
    if apps_only:
        return ""
    names = [k for k, v in vars(module).items() if not k.startswith("_") and not isinstance(v, types.ModuleType)]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return "; it defines no warmslot.App" + (f" (it has {shown})" if names else "")


def _describe(value: Any) -> str:
    """`value` after "is": ``an int``, ``None``, ``a function (make_app)``..."""
    if value is None:
        return "None"
    if isinstance(value, type):
        return f"a class ({value.__qualname__})"
    if isinstance(value, types.ModuleType):
        return f"a module ({value.__name__})"
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return f"a function ({getattr(value, '__qualname__', value)})"
    kind = type(value).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def _import_failure(exc: Exception, module_part: str, path: Optional[str]) -> str:
    """One line: where `exc` was raised while `module_part` (the file `path`, or a module) was
    imported, and what it says: ``bot.py:3: ValueError: ...``, ``helper.py:3 (while
    importing bot.py): ...``."""
    message = " ".join(str(exc).split())
    if isinstance(exc, SyntaxError) and exc.filename and not exc.filename.startswith("<"):
        where: Optional[Tuple[str, int]] = (exc.filename, exc.lineno or 0)
        message = " ".join((exc.msg or "").split())
    else:
        where = _user_frame(exc)
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    line = f"{name}: {message}" if message else name
    if isinstance(exc, ModuleNotFoundError):
        line += f"; is it installed for {sys.executable}?"
    if where is None:
        return f"importing {module_part}: {line}"
    filename, lineno = where
    at = f"{_show(filename)}:{lineno}" if lineno else _show(filename)
    origin = path if path is not None else _module_file(module_part)
    if origin is None or os.path.abspath(filename) != os.path.abspath(origin):
        at += f" (while importing {module_part})"
    return f"{at}: {line}"


def _module_file(name: str) -> Optional[str]:
    """The file of the module `name`, or None."""
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # its package fails to import, too
        return None
    return spec.origin if spec is not None and spec.has_location else None


def _library_dirs() -> List[str]:
    """Where the frames that are not the user's own come from: Python's library, installed
    packages, and warmslot itself."""
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.add(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(os.path.abspath(d), "") for d in dirs]


def _user_frame(exc: BaseException) -> Optional[Tuple[str, int]]:
    """The innermost frame of `exc`'s traceback in the user's own code; failing that (the app is
    an installed package), the outermost frame below warmslot's loader: the line of the module that
    started what failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    library = _library_dirs()
    mine = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")
    own = [f for f in frames if not any(os.path.abspath(f.filename).startswith(d) for d in library)]
    if own:
        return own[-1].filename, own[-1].lineno or 0
    below = [f for f in frames if not os.path.abspath(f.filename).startswith(mine)]
    if below:
        return below[0].filename, below[0].lineno or 0
    return None


def _show(filename: str) -> str:
    """`filename` relative to the working directory when it is below it, else absolute."""
    absolute = os.path.abspath(filename)
    try:
        rel = os.path.relpath(absolute)
    except ValueError:  # another drive (Windows)
        return absolute
    return absolute if rel.startswith(os.pardir + os.sep) or rel == os.pardir else rel
