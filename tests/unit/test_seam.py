"""Only the seam (stream/) reaches into Faust, mode and aiokafka (issue 19).

``make lint`` catches private attribute access (ruff SLF001), internal modules (ruff
TID251) and Kafka clients in the stages (import-linter). Two ways around those are
checked here: a class outside the seam that overrides a private method of a Faust, mode
or aiokafka class, and ``getattr``/``setattr`` with a private name.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_THE_SEAM = ("app", "agents", "tables", "sinks", "web")
LIBRARIES = ("faust", "mode", "aiokafka")


def library_names(tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """Names bound in a module to a Faust, mode or aiokafka module or object:
    ``{name: (module, attribute or None)}``."""
    names: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    if alias.asname:  # import faust.types as ft
                        names[alias.asname] = (alias.name, None)
                    else:  # import faust.types binds faust
                        names[alias.name.split(".")[0]] = (alias.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module.split(".")[0] in LIBRARIES):
            for alias in node.names:
                names[alias.asname or alias.name] = (node.module, alias.name)
    return names


def library_class(node: ast.expr, libraries: dict[str, tuple[str, str | None]]) -> Any:
    """The library class a base-class expression names, or None."""
    chain = []
    while isinstance(node, ast.Attribute):
        chain.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in libraries:
        return None
    module, attribute = libraries[node.id]
    found = importlib.import_module(module)
    for name in ([attribute] if attribute else []) + chain:
        found = getattr(found, name, None)
    return found if isinstance(found, type) else None


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def findings(source: str, where: str) -> list[str]:
    tree = ast.parse(source)
    libraries = library_names(tree)
    found = []
    for node in ast.walk(tree):
        bases = [library_class(base, libraries) for base in getattr(node, "bases", ())]
        if isinstance(node, ast.ClassDef) and any(bases):
            found += [f"{where}:{item.lineno} {node.name}.{item.name} overrides a private "
                      f"method of a library class"
                      for item in node.body
                      if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                      and private(item.name)
                      and any(hasattr(base, item.name) for base in bases if base)]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and private(node.args[1].value)):
            found.append(f"{where}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_no_private_override_or_private_getattr_outside_the_seam():
    found = []
    for package in OUTSIDE_THE_SEAM:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += findings(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "\n".join(found)


def test_the_check_finds_what_it_looks_for():
    source = (
        "import faust\nfrom aiokafka import AIOKafkaConsumer as C\n"
        "class A(faust.App):\n    def _consumer_wait_empty(self): ...\n"
        "    def __init__(self): ...\n    def on_stop(self): ...\n"
        "class B(C):\n    async def _validate_topics(self): ...\n"
        "    async def _own_helper(self): ...\n"
        "class Own:\n    def _mine(self): ...\n"
        "x = getattr(c, '_thread', None)\nsetattr(c, 'public', 1)\n")
    assert findings(source, "m.py") == [
        "m.py:4 A._consumer_wait_empty overrides a private method of a library class",
        "m.py:8 B._validate_topics overrides a private method of a library class",
        "m.py:12 getattr(..., '_thread')",
    ]
