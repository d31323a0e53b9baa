"""Agents from installed packages: the entry-point group ``sensorstream.agents``.

A plugin is a distribution that declares an entry point in this group whose value is a
module (``example = "sensorstream_plugin_example"``). ``SENSORSTREAM_PLUGINS`` picks
which ones run: ``all``, ``none`` or a list of entry-point names. The worker imports the
enabled modules here, each under its own name in any error, and hands their names to
Faust's autodiscovery (``app.main``), which scans them as it scans ``agents`` and
``web``. The app never imports a plugin by name, so a plugin may import ``app.main``
(through ``app.plugin_api``) without an import circle.

No Faust import here: the selection logic is tested on its own (tests/unit/test_plugins.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

from app.settings import PREFIX, SettingError

GROUP = "sensorstream.agents"
SETTING = PREFIX + "PLUGINS"
#: Modules Faust's autodiscovery leaves out of a package scan (faust.app.base.SCAN_IGNORE).
_IGNORED = re.compile(r"test_.*|\.__main__$")


@dataclass(frozen=True)
class Plugin:
    """One installed plugin: its entry-point name, module and distribution."""

    name: str
    module: str
    distribution: str
    version: str

    def describe(self) -> str:
        return f"{self.name!r} (module {self.module}, {self.distribution} {self.version})"


#: The plugins this process loaded, in load order (``GET /plugins`` shows them).
LOADED: list[Plugin] = []


def _choice_text(choice: str | tuple[str, ...]) -> str:
    return choice if isinstance(choice, str) else ",".join(choice)


def installed(found: Iterable[EntryPoint] | None = None) -> dict[str, Plugin]:
    """Every plugin of the group by entry-point name (default: the installed ones).

    An entry point that names an attribute, or a name two distributions both declare,
    stops start-up: which one was meant cannot be guessed.
    """
    plugins: dict[str, Plugin] = {}
    for ep in entry_points(group=GROUP) if found is None else found:
        dist = ep.dist
        plugin = Plugin(ep.name, ep.module, dist.name if dist else "?",
                        dist.version if dist else "?")
        if ep.attr:
            raise ValueError(f"plugin {plugin.describe()}: the entry point {ep.value!r} "
                             "names an attribute; it must name a module (its agents, "
                             "tables and views are found by scanning it)")
        other = plugins.get(ep.name)
        if other is not None and other != plugin:
            raise ValueError(f"two installed plugins are named {ep.name!r}: "
                             f"{other.describe()} and {plugin.describe()}; uninstall one")
        plugins[ep.name] = plugin
    return plugins


def select(choice: str | tuple[str, ...], available: Mapping[str, Plugin]) -> list[Plugin]:
    """The plugins ``choice`` (the parsed setting) enables; an unknown name stops start-up
    with the installed names, so a typo never silently runs without the plugin."""
    if choice == "none":
        return []
    if choice == "all":
        return [available[name] for name in sorted(available)]
    unknown = [name for name in choice if name not in available]
    if unknown:
        names = ", ".join(sorted(available)) or "none"
        raise SettingError(SETTING, _choice_text(choice),
                           f"no installed plugin named {', '.join(map(repr, unknown))} "
                           f"(entry-point group {GROUP}); installed: {names}")
    return [available[name] for name in choice]


def _roots(module: str) -> list[Path]:
    """Where the plugin's top-level module or package lives."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    return [Path(spec.origin)] if spec.origin else []


def _where(exc: BaseException, module: str) -> str:
    """`` at FILE:LINE``: the plugin's own line that failed, and where the error was
    raised when that is elsewhere (in a library the plugin called)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    roots = _roots(module)
    own = [f for f in frames
           if any(Path(f.filename) == r or r in Path(f.filename).parents for r in roots)]
    last = frames[-1]
    if not own:
        return f" at {last.filename}:{last.lineno}"
    text = f" at {own[-1].filename}:{own[-1].lineno}"
    if own[-1] is not last:
        text += f" (raised at {last.filename}:{last.lineno})"
    return text


def _import_all(name: str) -> ModuleType:
    """``name`` and, for a package, every submodule Faust's scan would import: a broken
    one fails here, with its plugin named, instead of a warning from the scan."""
    module = importlib.import_module(name)
    for info in pkgutil.iter_modules(getattr(module, "__path__", []), prefix=f"{name}."):
        if not _IGNORED.search(info.name):
            _import_all(info.name)
    return module


def load(plugin: Plugin, choice: str | tuple[str, ...]) -> None:
    """Import one plugin's module (its agents, tables and views register with the app)."""
    try:
        _import_all(plugin.module)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}{_where(exc, plugin.module)}"
        raise SettingError(SETTING, _choice_text(choice),
                           f"plugin {plugin.describe()} failed to import: {problem}; fix or "
                           f"uninstall it, or leave it out of {SETTING}") from exc


def modules(choice: str | tuple[str, ...]) -> list[str]:
    """Load the enabled plugins; their module names, for Faust's autodiscovery."""
    try:
        available = installed()
    except ValueError as exc:
        raise SettingError(SETTING, _choice_text(choice), str(exc)) from None
    names = []
    for plugin in select(choice, available):
        if plugin not in LOADED:
            load(plugin, choice)
            LOADED.append(plugin)
        names.append(plugin.module)
    return names
