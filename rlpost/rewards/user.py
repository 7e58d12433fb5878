"""Load user reward functions given as `path/to/file.py:function` or `package.module:function`."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from rlpost.registry import closest
from rlpost.rewards.errors import RewardFunctionError


def is_file_spec(spec: str) -> bool:
    """True for `path/to/file.py:fn` (loaded from a file), False for `package.module:fn`."""
    target = spec.rpartition(":")[0]
    return target.endswith(".py") or "/" in target or "\\" in target


def absolute_spec(spec: str) -> str:
    """`spec` with a file path made absolute, so that worker processes find the same file."""
    if not is_file_spec(spec):
        return spec
    target, _, name = spec.rpartition(":")
    return f"{Path(target).expanduser().resolve()}:{name}"


def load_user_reward(spec: str) -> Callable[..., float]:
    """The function named by `spec`, or a RewardFunctionError naming `spec` and what went wrong."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise RewardFunctionError(f"reward {spec!r}: expected path/to/file.py:function or package.module:function")
    module = _load_file(spec, Path(target).expanduser()) if is_file_spec(spec) else _import_module(spec, target)
    if not hasattr(module, name):
        public = [attr for attr in vars(module) if not attr.startswith("_")]
        functions = [attr for attr in public if callable(getattr(module, attr))]
        raise RewardFunctionError(
            f"reward {spec!r}: {target} has no function {name!r}{closest(name, functions)}; "
            f"functions: {', '.join(functions) or '(none)'}"
        )
    fn = getattr(module, name)
    if not callable(fn):
        raise RewardFunctionError(f"reward {spec!r}: {name} is not callable (it is a {type(fn).__name__})")
    return fn


def _load_file(spec: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise RewardFunctionError(f"reward {spec!r}: file {path} does not exist (relative paths start at {Path.cwd()})")
    path = path.resolve()
    # One module per file path: two files with the same name in different folders stay apart.
    module_name = f"rlpost_user_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # so the file can import helper modules next to it
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardFunctionError(f"reward {spec!r}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickle look modules up here while the file runs
    try:
        module_spec.loader.exec_module(module)
    except BaseException as exc:  # a user file may even call sys.exit(); report it as a load failure
        del sys.modules[module_name]
        raise RewardFunctionError(f"reward {spec!r}: importing {path} failed: {_describe(exc, path)}") from None
    return module


def _import_module(spec: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except BaseException as exc:
        raise RewardFunctionError(f"reward {spec!r}: importing module {module_name} failed: {_describe(exc)}") from None


def _describe(exc: BaseException, path: Path | None = None) -> str:
    """The exception line, prefixed with the line of `path` it came from when known."""
    message = traceback.format_exception_only(type(exc), exc)[-1].strip()
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"line {exc.lineno}: {message}"
    frames = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if path and frame.filename == str(path)]
    return f"line {frames[-1]}: {message}" if frames else message
