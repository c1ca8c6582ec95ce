"""The layers of docs/design.md, checked on the source: each subpackage imports only the layers
below it, the sans-IO core does no I/O, and nothing above the transports sees a socket or tells
the event-loop backends apart."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ipcactors"

# For each subpackage: the imports it must not make (ipcactors subpackages by their folder,
# other modules by their top-level name).
FORBIDDEN = {
    "_proto": {"_core", "_transports", "_supervision", "_actor", "socket", "asyncio", "trio",
               "anyio", "sniffio"},
    "_transports": {"_core", "_supervision", "_actor"},
    "_core": {"_supervision", "_actor", "socket", "asyncio", "trio", "sniffio"},
}  # fmt: skip


def imports(path: pathlib.Path) -> set[str]:
    """What the module at ``path`` imports: ipcactors folders/modules and top-level names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0:
                found.add(module.split(".")[0])
            elif node.level == 2 or (node.level == 1 and path.parent == PACKAGE):
                found.add(module.split(".")[0])  # a sibling layer: "_core", "_config", ...
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_what_is_below_them(layer: str) -> None:
    modules = sorted((PACKAGE / layer).glob("*.py"))
    assert modules
    wrong = {
        module.name: sorted(imports(module) & FORBIDDEN[layer])
        for module in modules
        if imports(module) & FORBIDDEN[layer]
    }
    assert not wrong, f"{layer} imports what it must not: {wrong}"


def test_the_checker_sees_imports() -> None:
    # The rule above would pass on modules it cannot read: make sure it reads them.
    assert {"_proto", "anyio"} <= imports(PACKAGE / "_core" / "_channel.py")
    assert "_proto" in imports(PACKAGE / "_transports" / "_streams.py")
    assert "asyncio" in imports(PACKAGE / "_transports" / "_backend.py")


def test_backend_differences_live_in_two_modules() -> None:
    """The asyncio fast path is contained in ``_asyncio``; every other backend difference is in
    ``_backend``: no other module imports asyncio or trio."""
    importers = sorted(
        str(module.relative_to(PACKAGE))
        for module in PACKAGE.rglob("*.py")
        if imports(module) & {"asyncio", "trio", "sniffio"}
    )
    assert importers == ["_transports/_asyncio.py", "_transports/_backend.py"]
