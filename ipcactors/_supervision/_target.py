"""What a child runs: an async function named by module and qualified name, never pickled code.

Invariant: :func:`target_of` refuses, in the parent and before any process starts, every function
a fresh child could not import by name: lambdas, closures and other nested functions, functions
of modules that cannot be imported (whatever their import raises), names that are missing or
not async functions, objects that do not resolve back to the function given. Each refusal is a
:class:`SpawnError` naming the cause's type and message, chained to the cause.
Functions of the main script are supported the way multiprocessing's "spawn" supports them: the
child runs the script under the name ``__mp_main__`` (so its ``if __name__ == "__main__":`` block
does not run again) and takes the function from there. A script without that guard would start
its ``ipcactors.run()`` or ``Supervisor`` again in every child, nested: while the script runs
there, both refuse with a :class:`SpawnError` that names the missing guard
(:func:`refuse_in_main_script`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import runpy
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._errors import SpawnError, message_of

__all__ = ["Target", "describe_error", "load_target", "refuse_in_main_script", "target_of"]


@dataclass(frozen=True, slots=True)
class Target:
    module: str
    qualname: str
    #: The main script's path, when the function lives in the script that was run.
    main_path: str | None = None

    def __str__(self) -> str:
        return f"{self.module}.{self.qualname}"


def _resolve(namespace: Any, qualname: str) -> Any:
    value = namespace
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


def target_of(fn: Callable[..., Any] | str, *, require_async: bool = True) -> Target:
    """Describe ``fn`` (an async function, or ``"module:qualname"``) so a child can import it.

    With ``require_async=False`` (a pool's task function) plain functions are accepted too.
    Raises :class:`SpawnError` saying what is wrong and what to do.
    """
    if isinstance(fn, str):
        module_name, sep, qualname = fn.partition(":")
        if not sep or not module_name or not qualname:
            raise SpawnError(f"a target given as text must be 'module:function', got {fn!r}")
        try:
            found = _resolve(importlib.import_module(module_name), qualname)
        except KeyboardInterrupt:
            raise  # (here, in the caller's process: Ctrl-C, most likely)
        except BaseException as exc:  # a module may raise anything while imported
            raise SpawnError(f"cannot import target {fn!r}: {describe_error(exc)}") from exc
        if require_async and not inspect.iscoroutinefunction(found):
            what = "function" if callable(found) else f"function but {type(found).__name__}"
            raise SpawnError(
                f"the target {fn!r} is not an async {what} ({found!r}); it must be an "
                "async function ('async def worker(actor, ...)')"
            )
        fn = found
    if not callable(fn):
        what = "an async function" if require_async else "a function ('def' or 'async def')"
        raise SpawnError(f"the target must be {what}, got {fn!r}")
    module_attr = getattr(fn, "__module__", None)
    qualname_attr = getattr(fn, "__qualname__", None)
    if not isinstance(module_attr, str) or not isinstance(qualname_attr, str):
        raise SpawnError(f"the target {fn!r} has no module and qualified name to import it by")
    module_name, qualname = module_attr, qualname_attr
    # Where it is defined first: a lambda told only to be async would become a nested
    # function, refused next for that.
    how = "'async def worker(actor, ...)'" if require_async else "'def' or 'async def'"
    if "<lambda>" in qualname:
        raise SpawnError(
            f"the target is a lambda ({module_name}.{qualname}); a child process can only "
            f"import functions by name: define it at module level ({how})"
        )
    if "<locals>" in qualname:
        raise SpawnError(
            f"the target {qualname!r} is defined inside another function (a closure or nested "
            "function); a child process can only import functions by name: move it to module "
            f"level in {module_name!r} and pass what it needs as arguments"
        )
    if require_async and not inspect.iscoroutinefunction(fn):
        raise SpawnError(
            f"the target {qualname!r} must be an async function ('async def worker(actor, ...)')"
        )
    main_path: str | None = None
    module = sys.modules.get(module_name)
    if module_name in ("__main__", "__mp_main__"):
        # __mp_main__: a child's run of the main script (load_target), whose functions its
        # own children find in the same script.
        main = sys.modules[module_name]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name and spec.name != "__main__":
            module_name = spec.name  # run with `python -m pkg.mod`: import it by its real name
        else:
            main_file = getattr(main, "__file__", None)
            if not main_file or not os.path.exists(main_file):
                raise SpawnError(
                    f"the target {qualname!r} is defined in an interactive session or in "
                    "'python -c'; a child process cannot import it: put it in a module"
                )
            main_path = os.path.abspath(main_file)
    elif module is None or getattr(module, "__spec__", None) is None:
        raise SpawnError(
            f"the target's module {module_name!r} cannot be imported by name (it was not "
            "loaded through the import system); put the function in an importable module"
        )
    if module is None:
        raise SpawnError(f"the target's module {module_name!r} is not loaded")
    try:
        found = _resolve(module, qualname)
    except AttributeError:
        found = None
    if found is not fn:
        raise SpawnError(
            f"{module_name}.{qualname} does not name the function given (a decorator that "
            "does not keep __qualname__, or a name that was rebound?); pass a function that "
            "can be imported by its own name"
        )
    return Target(module_name, qualname, main_path)


def describe_error(exc: BaseException) -> str:
    """``"RuntimeError: message"``: what a SpawnError's message says of its cause."""
    message = message_of(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# In a child, while it runs the main script (as __mp_main__) to find its target: that script.
_running_main_script: str | None = None


def refuse_in_main_script(what: str) -> None:
    """Raise :class:`SpawnError` if this is a child running its main script to find its target:
    ``what`` (``ipcactors.run()``, a Supervisor) was started at the script's top level."""
    if _running_main_script is not None:
        raise SpawnError(
            f"{what} was started while a supervised child ran the main script "
            f"{_running_main_script} to find its target: the script starts it at import time. "
            "Put that call under 'if __name__ == \"__main__\":' (each child runs the script "
            "without it to import your function; the guard keeps it from starting everything "
            "again)"
        )


def load_target(target: Target, *, require_async: bool = True) -> Callable[..., Any]:
    """In the child: import the target (running the main script as ``__mp_main__`` first when
    the function lives there). Raises what the import raised, AttributeError for a missing
    name (saying why, for the main script's), or TypeError when the name is not an async
    function (the module differs here)."""
    loaded = sys.modules.get("__mp_main__")
    if target.main_path is not None and getattr(loaded, "__file__", None) == target.main_path:
        module = loaded  # the script ran already (a pool loads several of its functions)
    elif target.main_path is not None:
        module = types.ModuleType("__mp_main__")
        module.__file__ = target.main_path
        sys.modules["__main__"] = sys.modules["__mp_main__"] = module
        global _running_main_script
        _running_main_script = target.main_path
        try:
            module.__dict__.update(runpy.run_path(target.main_path, run_name="__mp_main__"))
        finally:
            _running_main_script = None
    else:
        module = importlib.import_module(target.module)
    try:
        fn = _resolve(module, target.qualname)
    except AttributeError as exc:
        if target.main_path is None:
            raise
        # Defined in the parent only as the script ran as __main__: under its guard, most often.
        raise AttributeError(
            f"{exc}: {target.qualname!r} is not defined when {target.main_path} is imported, as "
            "a child process imports it (under the name __mp_main__, so that the code under "
            "'if __name__ == \"__main__\":' does not run); define it at the script's top level"
        ) from None
    if require_async and not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{target} is not an async function in the child process: {fn!r}")
    return fn  # type: ignore[no-any-return]
