"""Cross-metric fault rules: a named condition over a sensor's latest values.

The setting's text is ``name: condition; name: condition``; a condition compares
metrics with numbers and combines comparisons with ``&``, ``|`` and parentheses,
e.g. the Intel-Lab battery fault::

    battery: voltage < 2.3 & (temperature > 100 | humidity < 0)

A comparison with a metric the sensor has no value for is false. No Faust here.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT = "battery: voltage < 2.3 & (temperature > 100 | humidity < 0)"

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt}
_TOKEN = re.compile(r"\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<op><=|>=|==|!=|<|>)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<punct>[()&|]))")

_KINDS = {"num": "a number", "op": "a comparison (<, <=, >, >=, ==, !=)",
          "name": "a metric name"}

#: A parsed condition: evaluated on latest values, it returns the comparisons that
#: made it true (for the human reason), or None when it is false.
Condition = Callable[[Mapping[str, float | None]], list[str] | None]


@dataclass(frozen=True)
class FaultRule:
    name: str
    text: str
    condition: Condition

    def check(self, values: Mapping[str, float | None]) -> str | None:
        """The reason this rule holds for ``values``, or None."""
        held = self.condition(values)
        return f"{self.name}: {' and '.join(held)}" if held is not None else None


def parse(text: str) -> list[FaultRule]:
    """Rules from the setting's text; ValueError says what and where is wrong."""
    rules = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, colon, body = part.partition(":")
        if not colon or not re.fullmatch(r"[A-Za-z_][\w-]*", name.strip()):
            raise ValueError(f"{part!r}: expected 'name: condition'")
        rules.append(FaultRule(name.strip(), body.strip(), _Parser(body).parse()))
    return rules


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text.rstrip()):
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                raise ValueError(f"{text!r}: cannot read from {text[pos:].strip()!r}")
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
        self.i = 0

    def parse(self) -> Condition:
        condition = self._any()
        if self.i != len(self.tokens):
            raise ValueError(f"{self.text!r}: unexpected {self.tokens[self.i][1]!r}")
        return condition

    def _peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def _take(self, kind: str) -> str:
        if self.i >= len(self.tokens) or self.tokens[self.i][0] != kind:
            found = self._peek()
            raise ValueError(f"{self.text!r}: expected {_KINDS[kind]} "
                             f"{'at the end' if found is None else f'before {found!r}'}")
        self.i += 1
        return self.tokens[self.i - 1][1]

    def _any(self) -> Condition:
        options = [self._all()]
        while self._peek() == "|":
            self.i += 1
            options.append(self._all())
        if len(options) == 1:
            return options[0]

        def any_of(values: Mapping[str, float | None]) -> list[str] | None:
            for option in options:
                held = option(values)
                if held is not None:
                    return held
            return None
        return any_of

    def _all(self) -> Condition:
        parts = [self._one()]
        while self._peek() == "&":
            self.i += 1
            parts.append(self._one())
        if len(parts) == 1:
            return parts[0]

        def all_of(values: Mapping[str, float | None]) -> list[str] | None:
            held: list[str] = []
            for part in parts:
                got = part(values)
                if got is None:
                    return None
                held.extend(got)
            return held
        return all_of

    def _one(self) -> Condition:
        if self._peek() == "(":
            self.i += 1
            inner = self._any()
            if self._peek() != ")":
                raise ValueError(f"{self.text!r}: a '(' is not closed")
            self.i += 1
            return inner
        metric = self._take("name")
        symbol = self._take("op")
        bound = float(self._take("num"))
        compare = _OPS[symbol]

        def comparison(values: Mapping[str, float | None]) -> list[str] | None:
            value = values.get(metric)
            if value is None or not compare(value, bound):
                return None
            return [f"{metric} {value:g} {symbol} {bound:g}"]
        return comparison
