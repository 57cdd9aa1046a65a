"""Which alerts would fire now: the shipped rules, evaluated on this exporter's own samples.

One source of truth: the rules are read from `exporter/data/alert_rules.yml`, the file `exchange-eems-exporter
rules` turns into the rule file Prometheus loads; nothing here restates a condition. Their PromQL is evaluated
for one instant over the samples this exporter serves on /metrics, with `job` and `instance` set as a scrape
would (one exporter: the same for every series). The rules use a small part of PromQL: instant selectors,
comparisons and arithmetic with numbers and `time()`, `and`/`or`/`unless` with `on(...)`, one comparison
`on(...) group_left()`, `absent(up)`, and `max_over_time` and `changes` of a range. That part is evaluated here;
anything else in a rule is a `PromQLError`, and a test parses every rule of the source, so a rule written beyond
it cannot be skipped silently. `for:` cannot be judged from one instant: an alert whose condition holds now is
reported with its `for:`, "fires after it holds that long". Nor can a range: over one instant its window holds the
sample of now only, so `max_over_time` is that sample, as if it had held for the whole window (like `for:`), and
`changes` is 0 (a restart loop is for Prometheus to see). Series that this exporter does not serve (`up`) match
nothing, and `absent(up)` (does Prometheus have a target of this exporter at all?) gives nothing: a page of this
exporter cannot tell.
"""

from __future__ import annotations

import math
import operator
import re
import time
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Iterable

import yaml

JOB, INSTANCE = "exchange-eems", "self"
Labels = frozenset  # of (name, value) pairs, without __name__


class PromQLError(ValueError):
    """PromQL outside the part this evaluator understands."""


@dataclass(frozen=True)
class Rule:
    name: str  # the alert, or the recorded series
    expr: "_Node"
    alert: bool
    hold: str  # `for:` ("" when none)
    severity: str


@dataclass(frozen=True)
class Firing:
    alert: str
    severity: str
    hold: str
    labels: dict[str, str]


# ------------------------------------------------------------------ parsing

_TOKEN = re.compile(r"""\s*(?:
    (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?) |
    (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*) |
    (?P<string>"(?:[^"\\]|\\.)*") |
    (?P<op>==|!=|>=|<=|=~|!~|[-+*/<>(){},=\[\]])
)""", re.VERBOSE)
_COMPARISONS = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt, ">=": operator.ge,
                "<=": operator.le}
_LEVELS = [("or",), ("and", "unless"), tuple(_COMPARISONS), ("+", "-"), ("*", "/")]
_RANGE_FUNCTIONS = ("max_over_time", "changes")
_DURATION_UNITS = ("s", "m", "h", "d")


@dataclass(frozen=True)
class _Node:
    kind: str  # number | time | selector | absent | binary | max_over_time | changes (of the selector `left`)
    value: float = 0.0
    name: str = ""
    matchers: tuple[tuple[str, str, str], ...] = ()
    op: str = ""
    left: "_Node | None" = None
    right: "_Node | None" = None
    on: tuple[str, ...] | None = None
    group_left: bool = False


def _tokens(text: str) -> list[tuple[str, str]]:
    out, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise PromQLError(f"cannot read {text[position:position + 30]!r}")
        kind = match.lastgroup
        out.append((kind, match.group(kind)))
        position = match.end()
    return out


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        if self.i >= len(self.tokens):
            raise PromQLError("unexpected end of expression")
        value = self.tokens[self.i][1]
        if expected is not None and value != expected:
            raise PromQLError(f"expected {expected!r}, got {value!r}")
        self.i += 1
        return value

    def parse(self) -> _Node:
        node = self.binary(0)
        if self.peek() is not None:
            raise PromQLError(f"unexpected {self.peek()!r}")
        return node

    def binary(self, level: int) -> _Node:
        if level == len(_LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while self.peek() in _LEVELS[level]:
            op = self.take()
            on, group_left = self.modifiers()
            node = _Node("binary", op=op, left=node, right=self.binary(level + 1), on=on, group_left=group_left)
        return node

    def modifiers(self) -> tuple[tuple[str, ...] | None, bool]:
        if self.peek() in ("bool", "ignoring", "group_right"):
            raise PromQLError(f"{self.peek()} is not supported")
        on = None
        if self.peek() == "on":
            self.take()
            on = self.label_list()
        group_left = False
        if self.peek() == "group_left":
            self.take()
            group_left = True
            if self.label_list():
                raise PromQLError("group_left with labels is not supported")
        return on, group_left

    def label_list(self) -> tuple[str, ...]:
        self.take("(")
        names = []
        while self.peek() != ")":
            names.append(self.take())
            if self.peek() == ",":
                self.take()
        self.take(")")
        return tuple(names)

    def unary(self) -> _Node:
        token = self.peek()
        if token == "(":
            self.take()
            node = self.binary(0)
            self.take(")")
            return node
        if token == "-":
            self.take()
            return _Node("binary", op="*", left=_Node("number", value=-1.0), right=self.unary())
        kind, value = self.tokens[self.i] if self.i < len(self.tokens) else (None, None)
        if kind == "number":
            self.take()
            return _Node("number", value=float(value))
        if kind == "name":
            self.take()
            if value == "time":
                self.take("(")
                self.take(")")
                return _Node("time")
            if value == "absent" and self.peek() == "(":
                self.take("(")
                inner = self.unary()
                self.take(")")
                if inner.kind != "selector" or inner.name != "up":
                    raise PromQLError("absent() is supported for up only")
                return _Node("absent", left=inner)
            if value in _RANGE_FUNCTIONS and self.peek() == "(":
                self.take("(")
                selector = _Node("selector", name=self.take(), matchers=self.matchers())
                self.window()
                self.take(")")
                return _Node(value, left=selector)
            if self.peek() == "(" or value in ("by", "without", "offset"):
                raise PromQLError(f"function or aggregation {value}() is not supported")
            node = _Node("selector", name=value, matchers=self.matchers())
            if self.peek() == "[":
                raise PromQLError(f"a range of {value} is supported in {', '.join(_RANGE_FUNCTIONS)} only")
            return node
        raise PromQLError(f"unexpected {value!r}")

    def window(self) -> None:
        """A range's `[15m]`: read and checked, not used (one instant has one sample in any window)."""
        self.take("[")
        number, unit = self.take(), self.take()
        if not number.isdigit() or unit not in _DURATION_UNITS:
            raise PromQLError(f"bad range [{number}{unit}]")
        self.take("]")

    def matchers(self) -> tuple[tuple[str, str, str], ...]:
        if self.peek() != "{":
            return ()
        self.take()
        out = []
        while self.peek() != "}":
            label = self.take()
            op = self.take()
            if op not in ("=", "!=", "=~", "!~"):
                raise PromQLError(f"bad matcher operator {op!r}")
            literal = self.take()
            out.append((label, op, yaml.safe_load(literal)))  # a double-quoted string, escapes as in YAML
            if self.peek() == ",":
                self.take()
        self.take("}")
        return tuple(out)


@cache
def parse(text: str) -> _Node:
    return _Parser(text).parse()


# ------------------------------------------------------------------ evaluation
#
# Every value is carried with its slope in time: d(value)/d(time()). Samples and numbers have slope 0, time() has 1,
# and the rules only add, subtract and scale. So each comparison can tell when it would turn: for `a > b` that
# is when a - b, moving at its slope, crosses zero. The earliest such time over every compared pair (whether it
# holds now or not) is how long the result of the evaluation stays exactly what it is now, kept per server (a
# pair's `server` label; None for series of no server), so a page can keep a server's alerts until then or until
# its samples change. A product of two moving values, or a division by one, is not linear: its slope is NaN and
# its result is good for this instant only.


class _Samples:
    """Every sample of one instant, by metric name, each with slope 0; and the server each label set is about."""

    def __init__(self, samples: Iterable[tuple[str, dict[str, str], float]]):
        self.by_name: dict[str, dict[Labels, tuple[float, float]]] = {}
        self.server_of: dict[Labels, str | None] = {}
        for name, labels, value in samples:
            key = frozenset({**labels, "job": JOB, "instance": INSTANCE}.items())
            self.by_name.setdefault(name, {})[key] = (value, 0.0)
            self.server_of[key] = labels.get("server")


class _Instant:
    """One evaluation: the samples, the time, and until when each server's results stay as they are."""

    def __init__(self, samples: _Samples, now: float):
        self.samples = samples
        self.now = now
        self.until: dict[str | None, float] = {}

    def turns(self, labels: Labels | None, difference: float, slope: float) -> None:
        """A comparison of a pair whose difference is `difference` now, moving at `slope`."""
        if slope == 0.0:
            return
        when = self.now if math.isnan(slope) or math.isnan(difference) else self.now - difference / slope
        if when >= self.now:
            server = self.samples.server_of.get(labels) if labels is not None else None
            self.until[server] = min(self.until.get(server, math.inf), when)


def _select(samples: _Samples, node: _Node) -> dict[Labels, tuple[float, float]]:
    series = samples.by_name.get(node.name, {})
    if not node.matchers:
        return dict(series)
    out = {}
    for labels, value in series.items():
        given = dict(labels)
        if all(_matches(given.get(label, ""), op, wanted) for label, op, wanted in node.matchers):
            out[labels] = value
    return out


def _matches(value: str, op: str, wanted: str) -> bool:
    if op == "=":
        return value == wanted
    if op == "!=":
        return value != wanted
    hit = re.fullmatch(wanted, value) is not None
    return hit if op == "=~" else not hit


def _key(labels: Labels, on: tuple[str, ...] | None) -> Labels:
    return labels if on is None else frozenset((k, v) for k, v in labels if k in on)


_Moving = tuple[float, float]  # (value now, slope)


def _arithmetic(op: str, a: _Moving, b: _Moving) -> _Moving:
    (x, dx), (y, dy) = a, b
    if op == "+":
        return x + y, dx + dy
    if op == "-":
        return x - y, dx - dy
    if op == "*":
        return x * y, (x * dy + y * dx) if dx == 0.0 or dy == 0.0 else math.nan
    if y == 0.0:
        return math.nan, 0.0
    return x / y, dx / y if dy == 0.0 else math.nan


def evaluate(node: _Node, instant: _Instant):
    """A scalar (value, slope), or a vector {labels: (value, slope)}."""
    if node.kind == "number":
        return node.value, 0.0
    if node.kind == "time":
        return instant.now, 1.0
    if node.kind == "selector":
        return _select(instant.samples, node)
    if node.kind == "absent":  # of `up`, which only Prometheus has: unknown here, so nothing
        return {}
    if node.kind == "max_over_time":  # a window holding the sample of now only
        return _select(instant.samples, node.left)
    if node.kind == "changes":
        return {labels: (0.0, 0.0) for labels in _select(instant.samples, node.left)}
    left, right = evaluate(node.left, instant), evaluate(node.right, instant)
    if node.op in ("and", "or", "unless"):
        if not isinstance(left, dict) or not isinstance(right, dict):
            raise PromQLError(f"{node.op} needs two vectors")
        keys = {_key(labels, node.on) for labels in right}
        if node.op == "and":
            return {labels: v for labels, v in left.items() if _key(labels, node.on) in keys}
        if node.op == "unless":
            return {labels: v for labels, v in left.items() if _key(labels, node.on) not in keys}
        mine = {_key(labels, node.on) for labels in left}
        return {**left, **{labels: v for labels, v in right.items() if _key(labels, node.on) not in mine}}
    compare = _COMPARISONS.get(node.op)
    if compare is None:
        combine = lambda labels, a, b: _arithmetic(node.op, a, b)  # noqa: E731
    else:
        def combine(labels, a, b):
            instant.turns(labels, a[0] - b[0], a[1] - b[1])
            return a if compare(a[0], b[0]) else None
    if not isinstance(left, dict) and not isinstance(right, dict):
        if compare is not None:
            raise PromQLError("a comparison of two numbers needs bool")
        return combine(None, left, right)
    if not isinstance(right, dict):
        return _pairs(((labels, v, right) for labels, v in left.items()), combine)
    if not isinstance(left, dict):
        # a comparison keeps the vector's elements and values: `0 < x` keeps x where it holds
        return _pairs(((labels, left, v) for labels, v in right.items()), combine, keep_right=compare is not None)
    return _vectors(node, left, right, combine)


def _pairs(pairs, combine, keep_right: bool = False) -> dict:
    out = {}
    for labels, a, b in pairs:
        result = combine(labels, a, b)
        if result is not None:
            out[labels] = b if keep_right else result
    return out


def _vectors(node: _Node, left: dict, right: dict, combine) -> dict:
    by_key: dict[Labels, _Moving] = {}
    for labels, value in right.items():
        key = _key(labels, node.on)
        if key in by_key:
            raise PromQLError("many-to-many matching: the right side has two series for one key")
        by_key[key] = value
    out = _pairs(((labels, value, by_key[k]) for labels, value in left.items()
                  if (k := _key(labels, node.on)) in by_key), combine)
    if not node.group_left and len({_key(labels, node.on) for labels in out}) != len(out):
        raise PromQLError("many-to-one matching needs group_left")
    return out


# ------------------------------------------------------------------ the rules


@cache
def rules() -> tuple[Rule, ...]:
    """The shipped rules, in the order Prometheus evaluates them (recording rules before the alerts using them)."""
    source = yaml.safe_load(files("exporter").joinpath("data/alert_rules.yml").read_text(encoding="utf-8"))
    out = []
    for group in source["groups"]:
        for rule in group["rules"]:
            alert = "alert" in rule
            out.append(Rule(rule["alert"] if alert else rule["record"], parse(rule["expr"]), alert,
                            rule.get("for", ""), rule.get("labels", {}).get("severity", "")))
    return tuple(out)


@cache
def _selectors() -> dict[str, tuple[tuple[tuple[str, str, str], ...], ...]]:
    """Every selector of the rules: metric name -> the matchers of each selector of it."""
    found: dict[str, set] = {}

    def walk(node: _Node | None) -> None:
        if node is None:
            return
        if node.kind == "selector":
            found.setdefault(node.name, set()).add(node.matchers)
        walk(node.left)
        walk(node.right)

    for rule in rules():
        walk(rule.expr)
    return {name: tuple(matchers) for name, matchers in found.items()}


def read_by_rules(samples: Iterable[tuple[str, dict[str, str], float]]) -> list[tuple[str, dict[str, str], float]]:
    """The samples some rule's selector matches: the others cannot change what any rule gives."""
    selectors = _selectors()
    out = []
    for sample in samples:
        wanted = selectors.get(sample[0])
        if wanted is None:
            continue
        labels = {**sample[1], "job": JOB, "instance": INSTANCE}
        if any(all(_matches(labels.get(label, ""), op, value) for label, op, value in matchers) for matchers in wanted):
            out.append(sample)
    return out


def firing(samples: Iterable[tuple[str, dict[str, str], float]], now: float | None = None) -> list[Firing]:
    """The alerts whose condition holds at `now` over these samples (each with its labels)."""
    return evaluated(samples, time.time() if now is None else now)[0]


def evaluated(samples: Iterable[tuple[str, dict[str, str], float]],
              now: float) -> tuple[list[Firing], dict[str | None, float]]:
    """The alerts that hold at `now`, and until when each server's part of that answer stays exactly the same
    while the samples do (by server; None: the series of no server, whose time limits every server's too;
    a server not named: for ever)."""
    instant = _Instant(_Samples(samples), now)
    out = []
    for rule in rules():
        result = evaluate(rule.expr, instant)
        if not isinstance(result, dict):
            raise PromQLError(f"{rule.name}: the expression is a number, not a vector")
        if not rule.alert:
            instant.samples.by_name[rule.name] = dict(result)
            continue
        for labels in result:
            out.append(Firing(rule.name, rule.severity, rule.hold, dict(labels)))
    return out, instant.until
