"""Which plugins run: real entry points (dist-info directories on ``sys.path``), selected
by SENSORSTREAM_PLUGINS, imported with their name in every error."""

from __future__ import annotations

import itertools
import sys
import textwrap
from pathlib import Path

import pytest

from app import plugins
from app.settings import SettingError, load

_serial = itertools.count()


def distribution(root: Path, dist: str, entry_points: dict[str, str],
                 files: dict[str, str] | None = None, version: str = "1.0") -> Path:
    """An installed distribution as pip leaves it: a dist-info directory and its files."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{lines}")
    for path, text in (files or {}).items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh directory on ``sys.path``, and no plugin loaded yet."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "LOADED", [])
    return tmp_path


def unique(stem: str) -> str:
    """A module name no earlier test imported (sys.modules outlives a test)."""
    return f"{stem}_{next(_serial)}_{id(object())}"


def ours(found: dict[str, plugins.Plugin], dist: str) -> dict[str, plugins.Plugin]:
    return {name: p for name, p in found.items() if p.distribution == dist}


def test_installed_finds_the_group_s_entry_points(site):
    distribution(site, "alpha-plugins", {"alpha": "alpha_mod", "beta": "pkg.beta"},
                 version="2.3")
    found = ours(plugins.installed(), "alpha-plugins")
    assert found == {
        "alpha": plugins.Plugin("alpha", "alpha_mod", "alpha-plugins", "2.3"),
        "beta": plugins.Plugin("beta", "pkg.beta", "alpha-plugins", "2.3"),
    }


def test_an_entry_point_naming_an_attribute_is_refused(site):
    distribution(site, "attr-plugin", {"attr": "some.module:agent"})
    with pytest.raises(ValueError, match=r"'attr'.*'some.module:agent'.*must name a module"):
        plugins.installed()


def test_one_name_in_two_distributions_is_refused(site):
    distribution(site / "a", "first-dist", {"twin": "first_mod"})
    distribution(site / "b", "second-dist", {"twin": "second_mod"})
    sys.path[:0] = [str(site / "a"), str(site / "b")]
    try:
        with pytest.raises(ValueError, match=r"two installed plugins are named 'twin'.*"
                                             r"first-dist.*second-dist"):
            plugins.installed()
    finally:
        sys.path.remove(str(site / "a"))
        sys.path.remove(str(site / "b"))


AVAILABLE = {name: plugins.Plugin(name, f"{name}_mod", f"{name}-dist", "1")
             for name in ("zeta", "alpha", "mid")}


def test_all_selects_every_installed_plugin_by_name():
    assert [p.name for p in plugins.select("all", AVAILABLE)] == ["alpha", "mid", "zeta"]


def test_none_selects_nothing():
    assert plugins.select("none", AVAILABLE) == []


def test_a_list_selects_those_in_its_order():
    assert [p.name for p in plugins.select(("zeta", "alpha"), AVAILABLE)] == ["zeta", "alpha"]


def test_an_unknown_name_names_the_setting_and_the_installed_plugins():
    with pytest.raises(SettingError) as caught:
        plugins.select(("alpha", "nosuch"), AVAILABLE)
    assert caught.value.name == "SENSORSTREAM_PLUGINS"
    assert caught.value.value == "alpha,nosuch"
    assert "'nosuch'" in caught.value.problem
    assert "installed: alpha, mid, zeta" in caught.value.problem


def test_an_unknown_name_with_nothing_installed_says_so():
    with pytest.raises(SettingError, match="installed: none"):
        plugins.select(("x",), {})


def test_the_setting_is_parsed_and_checked():
    assert load({}).plugins == "all"
    assert load({"SENSORSTREAM_PLUGINS": "none"}).plugins == "none"
    assert load({"SENSORSTREAM_PLUGINS": " b, a ,b,"}).plugins == ("b", "a")
    for bad in ("", " , ", "a b", "x;y"):
        with pytest.raises(SettingError) as caught:
            load({"SENSORSTREAM_PLUGINS": bad})
        assert caught.value.name == "SENSORSTREAM_PLUGINS"


def test_modules_imports_the_enabled_plugins_and_returns_their_names(site):
    on, off = unique("on_plugin"), unique("off_plugin")
    distribution(site, "two-plugins", {on: on, off: off}, {
        f"{on}.py": "IMPORTED = True\n",
        f"{off}.py": "raise RuntimeError('must not be imported')\n",
    })
    assert plugins.modules((on,)) == [on]
    assert sys.modules[on].IMPORTED is True
    assert off not in sys.modules
    assert [p.name for p in plugins.LOADED] == [on]
    assert plugins.modules((on,)) == [on]  # a second call imports nothing again
    assert len(plugins.LOADED) == 1


def test_a_plugin_that_fails_to_import_stops_with_its_name_and_place(site):
    name = unique("broken")
    distribution(site, "broken-dist", {"broken": name}, {
        f"{name}.py": """\
            import os

            value = undefined_name
        """,
    })
    with pytest.raises(SettingError) as caught:
        plugins.modules(("broken",))
    problem = caught.value.problem
    assert caught.value.name == "SENSORSTREAM_PLUGINS"
    assert "plugin 'broken'" in problem and name in problem and "broken-dist 1.0" in problem
    assert "NameError" in problem and "undefined_name" in problem
    assert f"{name}.py:3" in problem
    assert plugins.LOADED == []


def test_a_missing_module_stops_with_the_plugin_named(site):
    distribution(site, "ghost-dist", {"ghost": unique("no_such_module")})
    with pytest.raises(SettingError, match=r"plugin 'ghost'.*ModuleNotFoundError"):
        plugins.modules(("ghost",))


def test_a_broken_submodule_of_a_plugin_package_is_not_skipped(site):
    """Faust's scan of a package only warns about a submodule that fails to import."""
    package = unique("pkg_plugin")
    distribution(site, "pkg-dist", {"pkg": package}, {
        f"{package}/__init__.py": "",
        f"{package}/fine.py": "OK = 1\n",
        f"{package}/test_helpers.py": "raise RuntimeError('tests are not scanned')\n",
        f"{package}/sub/__init__.py": "",
        f"{package}/sub/bad.py": "raise ImportError('a dependency is missing')\n",
    })
    with pytest.raises(SettingError, match=rf"plugin 'pkg'.*ImportError: a dependency is "
                                           rf"missing at .*{package}/sub/bad.py:1"):
        plugins.modules(("pkg",))
    assert f"{package}.fine" in sys.modules
    assert f"{package}.test_helpers" not in sys.modules


def test_a_package_plugin_s_submodules_are_imported(site):
    package = unique("good_pkg")
    distribution(site, "good-dist", {"good": package}, {
        f"{package}/__init__.py": "",
        f"{package}/agents.py": "OK = 1\n",
        f"{package}/__main__.py": "raise SystemExit('never run')\n",
    })
    assert plugins.modules(("good",)) == [package]
    assert f"{package}.agents" in sys.modules
    assert f"{package}.__main__" not in sys.modules
