"""Cross-metric fault rules (tables.fault_rules)."""

from __future__ import annotations

import pytest

from tables import fault_rules


def test_the_default_battery_rule():
    (rule,) = fault_rules.parse(fault_rules.DEFAULT)
    assert rule.name == "battery"
    assert rule.check({"voltage": 2.1, "temperature": 122.0, "humidity": 30.0}) == (
        "battery: voltage 2.1 < 2.3 and temperature 122 > 100")
    assert rule.check({"voltage": 2.1, "temperature": 20.0, "humidity": -3.5}) == (
        "battery: voltage 2.1 < 2.3 and humidity -3.5 < 0")
    assert rule.check({"voltage": 2.6, "temperature": 122.0, "humidity": -3.5}) is None
    assert rule.check({"voltage": 2.1, "temperature": 20.0, "humidity": 40.0}) is None
    assert rule.check({"voltage": 2.1}) is None  # no value: the comparison is false


def test_several_rules_and_precedence():
    rules = fault_rules.parse("a: x > 1 | y > 1 & z > 1; b: (x > 1 | y > 1) & z > 1")
    values = {"x": 2.0, "y": 0.0, "z": 0.0}
    assert [r.name for r in rules if r.check(values)] == ["a"]  # & binds tighter than |
    assert [r.name for r in rules if r.check({"x": 2.0, "z": 2.0})] == ["a", "b"]
    assert fault_rules.parse(" ; ") == []


@pytest.mark.parametrize("text, says", [
    ("battery voltage < 2", "expected 'name: condition'"),
    ("b: voltage <", "expected a number at the end"),
    ("b: voltage 2.3", "expected a comparison (<, <=, >, >=, ==, !=) before '2.3'"),
    ("b: < 2.3", "expected a metric name before '<'"),
    ("b: (voltage < 2", "is not closed"),
    ("b: voltage < 2 )", "unexpected ')'"),
    ("b: voltage ~ 2", "cannot read from '~ 2'"),
])
def test_bad_rules_say_what_is_wrong(text, says):
    with pytest.raises(ValueError) as error:
        fault_rules.parse(text)
    assert says in str(error.value)
