"""What colour and text a Grafana stat panel shows for a query result, so tests can tell what an admin reads.

Grafana's display processor (packages/grafana-data/src/field/displayProcessor.ts) takes the first value mapping
that matches the value, then the threshold step the value reaches. A stat whose query returns no series is shown by
the same processor with the value null (fieldDisplay.ts, createNoValuesFieldDisplay): only a `special` null mapping
matches it, and without one it takes the base threshold colour, whatever that means for the metric. A base step
of green therefore shows "No data" in green: the blind spot these tests look for.

A table cell goes through the same processor with its column's config (the panel's defaults, then the overrides
that name the column: `column_config`), an empty cell with the value null, a label column with a string: value
mappings match it by key, regex mappings (utils/valueMappings.ts) only a string, anchored (text/string.ts,
stringToJsRegex), and a string that is no number reaches no threshold step, so it takes the base colour.
"""

from __future__ import annotations

import copy
import math
import re

GREENS = {"green", "dark-green", "semi-dark-green", "light-green", "super-light-green"}
REDS = {"red", "dark-red", "semi-dark-red", "light-red", "super-light-red"}


def shown(defaults: dict, value: float | str | None) -> tuple[str | None, str]:
    """(text, colour) of `value` under a panel's fieldConfig defaults (or a table column's `column_config`); None
    is no series or an empty cell (text None: the value formatted by its unit, which tests do not need; a string
    not mapped is its own text)."""
    text = color = None
    result = next((r for r in (_mapped(m, value) for m in defaults.get("mappings", [])) if r is not None), None)
    if result is not None:
        text, color = result.get("text"), result.get("color")
    steps = defaults["thresholds"]["steps"]
    numeric = _number(value)
    if color is None and not math.isnan(numeric):
        color = [s["color"] for s in steps if s["value"] is None or s["value"] <= numeric][-1]
    if text is None and isinstance(value, str):
        text = value
    if color is None:
        color = steps[0]["color"]  # Grafana's scaleFunc(-Infinity): the base step
    if text is None and value is None:
        text = defaults.get("noValue") or "No data"
    return text, color


def _mapped(mapping: dict, value: float | None) -> dict | None:
    options = mapping["options"]
    if mapping["type"] == "special":
        return options["result"] if options["match"] in ("null", "null+nan") and value is None else None
    if value is None:
        return None
    if mapping["type"] == "value":
        return options.get(value if isinstance(value, str) else _js_string(value))
    if mapping["type"] == "regex":
        return options["result"] if isinstance(value, str) and _js_regex(options["pattern"]).search(value) else None
    raise ValueError(f"value mapping type {mapping['type']!r} is not modelled")


def _js_string(value: float) -> str:
    """JavaScript's String(value), which value mappings compare with their keys: 1, not 1.0."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def _number(value: float | str | None) -> float:
    """JavaScript's Number(value) as anyToNumber takes it: NaN for null and for a string that is no number."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


def _js_regex(pattern: str) -> re.Pattern:
    """stringToJsRegex: `/.../flags` as written, anything else anchored at both ends."""
    if not pattern.startswith("/"):
        return re.compile(f"^{pattern}$")
    body, _, flags = pattern[1:].rpartition("/")
    return re.compile(body, re.IGNORECASE if "i" in flags else 0)


def column_config(panel: dict, column: str) -> dict:
    """The fieldConfig a table column is displayed with: the panel's defaults, each property of an override that
    names the column (matcher byName) set over them, as Grafana applies overrides (`custom.cellOptions` is
    custom -> cellOptions)."""
    config = copy.deepcopy(panel["fieldConfig"]["defaults"])
    for override in panel["fieldConfig"]["overrides"]:
        if override["matcher"] != {"id": "byName", "options": column}:
            continue
        for prop in override["properties"]:
            *path, last = prop["id"].split(".")
            target = config
            for key in path:
                target = target.setdefault(key, {})
            target[last] = prop["value"]
    return config
