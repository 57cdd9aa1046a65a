"""What colour and text a Grafana stat panel shows for a query result, so tests can tell what an admin reads.

Grafana's display processor (packages/grafana-data/src/field/displayProcessor.ts) takes the first value mapping
that matches the value, then the threshold step the value reaches. A stat whose query returns no series is shown by
the same processor with the value null (fieldDisplay.ts, createNoValuesFieldDisplay): only a `special` null mapping
matches it, and without one it takes the base threshold colour, whatever that means for the metric. A base step
of green therefore shows "No data" in green: the blind spot these tests look for.
"""

from __future__ import annotations

import math

GREENS = {"green", "dark-green", "semi-dark-green", "light-green", "super-light-green"}
REDS = {"red", "dark-red", "semi-dark-red", "light-red", "super-light-red"}


def shown(defaults: dict, value: float | None) -> tuple[str | None, str]:
    """(text, colour) of `value` under a panel's fieldConfig defaults; None is no series (text None: the value
    formatted by its unit, which tests do not need)."""
    text = color = None
    result = next((r for r in (_mapped(m, value) for m in defaults.get("mappings", [])) if r is not None), None)
    if result is not None:
        text, color = result.get("text"), result.get("color")
    steps = defaults["thresholds"]["steps"]
    if color is None and value is not None and not math.isnan(value):
        color = [s["color"] for s in steps if s["value"] is None or s["value"] <= value][-1]
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
        return options.get(_js_string(value))
    raise ValueError(f"value mapping type {mapping['type']!r} is not modelled")


def _js_string(value: float) -> str:
    """JavaScript's String(value), which value mappings compare with their keys: 1, not 1.0."""
    return str(int(value)) if float(value).is_integer() else repr(value)
