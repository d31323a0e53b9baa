"""The README stays true: its settings table, reason codes, endpoints and quick start."""

import re
from pathlib import Path

from app.contract import Reason
from app.settings import markdown_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_settings_table_is_the_declared_settings():
    assert markdown_table() in README


def test_quick_start_is_two_commands():
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in section.splitlines() if line.startswith("    ")]
    assert commands == ["make demo", "make test"]


def test_every_dead_letter_reason_is_documented():
    for reason in Reason:
        assert f"`{reason.value}`" in README, reason


def test_every_endpoint_is_documented():
    paths = set()
    for module in (ROOT / "web").glob("*.py"):
        paths.update(re.findall(r'@app\.page\("([^"]+)"\)', module.read_text()))
    assert paths
    for path in paths:
        assert re.search(rf"`(GET|POST|PUT|DELETE) {re.escape(path)}`", README), path


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
