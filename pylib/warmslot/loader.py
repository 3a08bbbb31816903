"""Finds the `App` named by ``PATH_OR_MODULE:ATTR``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any


class LoadError(Exception):
    """The target could not be loaded; the message says why and what to fix."""


def load_app(target: str) -> Any:
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
        spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and module_part.startswith(exc.name):
                raise LoadError(f"no module named {module_part!r} (nor a file by that name)") from exc
            raise
    try:
        app = getattr(module, attr)
    except AttributeError:
        apps = [k for k, v in vars(module).items() if isinstance(v, App)]
        hint = f"; it has {', '.join(apps)}" if apps else "; it defines no warmslot.App"
        raise LoadError(f"{module_part} has no attribute {attr!r}{hint}") from None
    if not isinstance(app, App):
        raise LoadError(f"{module_part}:{attr} is a {type(app).__name__}, not a warmslot.App")
    return app
