"""`exchange-eems-exporter rules`: the Prometheus rule file and the PrometheusRule, from one source.

The source (exporter/data/alert_rules.yml) is a rule file in plain PromQL without runbook links. The site's
options are applied to it: a job selector added to every series selector, a runbook base URL (or pattern, like
windows_exporter's mixin `runbookURLPattern`), extra labels on every alert, and a severity mapping. With the
default options the output is the shipped alerts/exchange-eems.rules.yml and deploy/prometheusrule.yaml
(a test compares them), so a site that generates its own copy after each upgrade never edits by hand.

The rule file is rewritten as text, so the source's comments (the THRESHOLD markers among them) stay in the
output; the result is then checked against the same change made on the parsed YAML, so a source layout the
text rewrite does not understand is an error, never a silently wrong file.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from dataclasses import dataclass, field
from importlib.resources import files

import yaml

SOURCE_NAME = "exporter/data/alert_rules.yml"
DEFAULT_JOB_SELECTOR = 'job=~"exchange-eems.*"'
DEFAULT_RUNBOOK_BASE = "https://github.com/exchange-eems-exporter/exchange-eems-exporter/blob/main/docs/runbooks.md"
RESOURCE_NAME = "exchange-eems-exporter"
SEVERITIES = ("critical", "warning", "info")

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MATCHER = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\\n]|\\.)*"\s*'
_MATCHERS = re.compile(rf"{_MATCHER}(?:,{_MATCHER})*")
# Words that are followed by a parenthesised list of label names, not by an expression.
_LABEL_LIST_WORDS = {"on", "ignoring", "by", "without", "group_left", "group_right"}
# Aggregations may put `by (...)`/`without (...)` between their name and their parenthesis.
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                 "quantile", "limitk", "limit_ratio"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"} | _LABEL_LIST_WORDS | _AGGREGATIONS
# A Prometheus duration (model.ParseDuration): units from the largest down, each at most once, not zero.
_DURATION = re.compile(r"(?=.*[1-9])(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?(?<=[a-z])")
# Labels an operator may not add: Prometheus sets the first, the generator owns the second.
_RESERVED_LABELS = {"alertname", "severity"}


class RulesError(ValueError):
    """A bad option or a source the generator cannot rewrite: one line for the user."""


@dataclass(frozen=True)
class Options:
    job_selector: str = DEFAULT_JOB_SELECTOR
    runbook_base: str = DEFAULT_RUNBOOK_BASE
    labels: tuple[tuple[str, str], ...] = ()
    severity_map: tuple[tuple[str, str], ...] = ()
    alert_severity: tuple[tuple[str, str], ...] = ()
    resource_labels: tuple[tuple[str, str], ...] = field(default=())
    keep_firing_for: str = ""  # a Prometheus duration on every alert; "": none (resolved as soon as it stops holding)

    def arguments(self, fmt: str) -> list[str]:
        """The command-line arguments that give these options (defaults left out), to regenerate the file."""
        args: list[str] = ["--format", fmt] if fmt != "rules" else []
        if self.job_selector != DEFAULT_JOB_SELECTOR:
            args += ["--job-selector", self.job_selector]
        if self.runbook_base != DEFAULT_RUNBOOK_BASE:
            args += ["--runbook-base", self.runbook_base]
        if self.keep_firing_for:
            args += ["--keep-firing-for", self.keep_firing_for]
        for flag, pairs in (("--alert-severity", self.alert_severity), ("--severity", self.severity_map),
                            ("--label", self.labels),
                            ("--resource-label", self.resource_labels if fmt == "prometheusrule" else ())):
            for name, value in pairs:
                args += [flag, f"{name}={value}"]
        return args


def source_text() -> str:
    return files("exporter").joinpath("data/alert_rules.yml").read_text(encoding="utf-8")


# ------------------------------------------------------------------ options


def validate(options: Options) -> None:
    if not options.job_selector.strip():
        raise RulesError("--job-selector must not be empty: ExchangeExporterDown would watch every job's `up`")
    if not _MATCHERS.fullmatch(options.job_selector):
        raise RulesError(f"--job-selector {options.job_selector!r}: expected PromQL label matchers such as "
                         f"{DEFAULT_JOB_SELECTOR} (double-quoted values, comma-separated)")
    base = options.runbook_base
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+", base):
        raise RulesError(f"--runbook-base {base!r}: expected an absolute URL such as https://wiki.example/runbooks")
    if base.count("%s") > 1 or re.search(r"%(?![0-9A-Fa-f]{2})", base.replace("%s", "", 1)):
        raise RulesError(f"--runbook-base {base!r}: at most one %s (the alert's anchor); any other % must be a %XX "
                         "escape")
    for flag, pairs in (("--label", options.labels), ("--resource-label", options.resource_labels)):
        seen: set[str] = set()
        for name, value in pairs:
            if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise RulesError(f"{flag} {name}={value}: {name!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
            if flag == "--label" and name in _RESERVED_LABELS:
                raise RulesError(f"--label {name}: reserved; use --severity or --alert-severity to change severities")
            if name in seen:
                raise RulesError(f"{flag} {name}: given twice")
            if not value:
                raise RulesError(f"{flag} {name}=: the value is empty")
            seen.add(name)
    for flag, pairs in (("--severity", options.severity_map), ("--alert-severity", options.alert_severity)):
        for name, value in pairs:
            if not value:
                raise RulesError(f"{flag} {name}=: the severity is empty")
    if options.keep_firing_for and not _duration_ms(options.keep_firing_for) * 1_000_000 < 2**63:
        raise RulesError(f"--keep-firing-for {options.keep_firing_for!r}: expected a Prometheus duration such as 10m")


def _duration_ms(text: str) -> float:
    """A Prometheus duration in milliseconds, inf when it is none; Prometheus refuses one over int64 nanoseconds
    (a Go time.Duration: about 292 years)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        return float("inf")
    units = (365 * 86400000, 7 * 86400000, 86400000, 3600000, 60000, 1000, 1)
    return sum(int(part.rstrip("ywdhms")) * unit for part, unit in zip(match.groups(), units) if part)


def parse_pair(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise RulesError(f"{flag} {text!r}: expected NAME=VALUE")
    return name.strip(), value


# ------------------------------------------------------------------ PromQL


def add_selector(expr: str, matchers: str) -> str:
    """`expr` with `matchers` added to every series selector (with or without a metric name).

    A scanner, not a full parser: it knows strings, comments, brackets, function calls and the keywords that take
    a list of label names (on, by, ...). The tests check the result with promtool on every shipped rule.
    """
    out: list[str] = []
    i, n = 0, len(expr)

    def skip_space(j: int) -> int:
        while j < n and expr[j] in " \t\r\n":
            j += 1
        return j

    def end_of_string(j: int) -> int:
        quote = expr[j]
        j += 1
        while j < n and expr[j] != quote:
            j += 2 if expr[j] == "\\" and quote != "`" else 1
        if j >= n:
            raise RulesError(f"unterminated string in expression: {expr!r}")
        return j + 1

    def end_of(j: int, close: str) -> int:
        """Index after the `close` that ends the bracket opened at j (strings inside skipped)."""
        j += 1
        while j < n and expr[j] != close:
            j = end_of_string(j) if expr[j] in "\"'`" else j + 1
        if j >= n:
            raise RulesError(f"unbalanced {expr[j - 1] if j else close!r} in expression: {expr!r}")
        return j + 1

    def with_matchers(inside: str) -> str:
        kept = inside.rstrip()
        if not kept.strip():
            return matchers
        return f"{kept}{'' if kept.endswith(',') else ','}{matchers}"

    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = end_of_string(i)
        elif c == "#":
            j = expr.find("\n", i)
            j = n if j < 0 else j
        elif c == "[":
            j = end_of(i, "]")
        elif c == "{":
            j = end_of(i, "}")
            out.append("{" + with_matchers(expr[i + 1:j - 1]) + "}")
            i = j
            continue
        elif c.isdigit() or c == "." and i + 1 < n and expr[i + 1].isdigit():
            j = i
            while j < n and (expr[j].isalnum() or expr[j] in "._"):
                j += 1
        elif c.isalpha() or c in "_:":
            j = i
            while j < n and (expr[j].isalnum() or expr[j] in "_:"):
                j += 1
            word, after = expr[i:j], skip_space(j)
            if word.lower() in _LABEL_LIST_WORDS and after < n and expr[after] == "(":
                j = end_of(after, ")")
            elif (after < n and expr[after] == "(") or word.lower() in _KEYWORDS:
                pass
            elif after < n and expr[after] == "{":
                close = end_of(after, "}")
                out.append(expr[i:after] + "{" + with_matchers(expr[after + 1:close - 1]) + "}")
                i = close
                continue
            else:
                out.append(word + "{" + matchers + "}")
                i = j
                continue
        else:
            j = i + 1
        out.append(expr[i:j])
        i = j
    return "".join(out)


# ------------------------------------------------------------------ the change, on parsed rules


def _runbook_url(base: str, alert: str) -> str:
    anchor = alert.lower()
    return base.replace("%s", anchor) if "%s" in base else f"{base}#{anchor}"


def _severity(rule: dict, options: Options) -> str:
    severity = dict(options.alert_severity).get(rule["alert"], rule["labels"]["severity"])
    return dict(options.severity_map).get(severity, severity)


def apply(groups: list[dict], options: Options) -> list[dict]:
    """The options applied to the parsed source groups (the reference the text rewrite is checked against)."""
    result = copy.deepcopy(groups)
    for group in result:
        for rule in group["rules"]:
            rule["expr"] = add_selector(rule["expr"], options.job_selector)
            if "alert" not in rule:
                continue
            rule["labels"]["severity"] = _severity(rule, options)
            rule["labels"].update(options.labels)
            if options.keep_firing_for:
                rule["keep_firing_for"] = options.keep_firing_for
            rule["annotations"] = {"runbook_url": _runbook_url(options.runbook_base, rule["alert"]),
                                   **rule["annotations"]}
    return result


def _check_source(groups: object, options: Options) -> list[dict]:
    if not isinstance(groups, list) or not groups:
        raise RulesError(f"{SOURCE_NAME}: expected a mapping with a non-empty 'groups' list")
    alerts: dict[str, set[str]] = {}
    for group in groups:
        for rule in group.get("rules", []):
            if "alert" not in rule:
                continue
            labels, annotations = rule.get("labels") or {}, rule.get("annotations") or {}
            if labels.get("severity") not in SEVERITIES:
                raise RulesError(f"{SOURCE_NAME}: {rule['alert']}: labels.severity must be one of {SEVERITIES}")
            if not annotations or "runbook_url" in annotations:
                raise RulesError(f"{SOURCE_NAME}: {rule['alert']}: needs annotations and no runbook_url "
                                 "(the generator writes it)")
            clash = set(labels) & {name for name, _ in options.labels}
            if clash:
                raise RulesError(f"--label {sorted(clash)[0]}: {rule['alert']} already sets this label")
            alerts.setdefault(rule["alert"], set()).add(labels["severity"])
    used = {s for severities in alerts.values() for s in severities}
    for name, _ in options.severity_map:
        if name not in used:
            raise RulesError(f"--severity {name}=...: no alert has severity {name!r} (they use {sorted(used)})")
    for name, _ in options.alert_severity:
        if name not in alerts:
            raise RulesError(f"--alert-severity {name}=...: there is no alert {name!r}")
        if len(alerts[name]) > 1:
            raise RulesError(f"--alert-severity {name}=...: {name} is a warning/critical twin; map severities "
                             "with --severity instead")
    return groups


# ------------------------------------------------------------------ the change, on the text


def _scalar(value: str) -> str:
    """`value` as a YAML scalar: plain where that reads back unchanged, double-quoted otherwise."""
    if re.fullmatch(r"[A-Za-z0-9_./:#%?&=+~-]+", value) and not value.startswith(("-", "?", ":", "%")):
        if yaml.safe_load(value) == value:
            return value
    return json.dumps(value, ensure_ascii=False)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _rewrite_text(text: str, options: Options) -> str:
    lines = text.splitlines()
    out: list[str] = []
    alert: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        key, _, value = stripped.partition(":")
        if stripped.startswith("- "):
            key, _, value = stripped[2:].partition(":")
            alert = value.strip() if key == "alert" else None
        if key == "expr" and not stripped.startswith("#"):
            value = value.strip()
            if value in ("|", "|-", ">", ">-"):
                block = [lines[i]]
                body_start = i + 1
                j = body_start
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > _indent(line)):
                    j += 1
                while j > body_start and not lines[j - 1].strip():
                    j -= 1
                body = "\n".join(lines[body_start:j])
                out.extend(block)
                out.extend(add_selector(body, options.job_selector).split("\n"))
                i = j
                continue
            if value[:1] in "'\"":
                raise RulesError(f"{SOURCE_NAME}: write expressions plain or as a block scalar, not quoted: {line!r}")
            out.append(line.replace(value, add_selector(value, options.job_selector), 1))
        elif alert and key == "labels" and not value.strip() and options.keep_firing_for:
            out.append(f"{' ' * _indent(line)}keep_firing_for: {options.keep_firing_for}")
            out.append(line)
        elif alert and key == "severity" and _indent(line) > 0:
            rule = {"alert": alert, "labels": {"severity": value.strip()}}
            pad = " " * _indent(line)
            out.append(f"{pad}severity: {_scalar(_severity(rule, options))}")
            out.extend(f"{pad}{name}: {_scalar(label)}" for name, label in options.labels)
        elif alert and key == "annotations" and not value.strip():
            out.append(line)
            pad = " " * (_indent(lines[i + 1]) if i + 1 < len(lines) else _indent(line) + 2)
            out.append(f"{pad}runbook_url: {_scalar(_runbook_url(options.runbook_base, alert))}")
        else:
            out.append(line)
        i += 1
    return "\n".join(out) + "\n"


def _header(options: Options, fmt: str) -> str:
    command = shlex.join(["exchange-eems-exporter", "rules", *options.arguments(fmt)])
    return (f"# Generated from {SOURCE_NAME} by:\n#   {command}\n"
            "# Do not edit: run that command again after each upgrade (docs/alerts.md, \"Changing the rules\").\n")


def render_rules(options: Options, source: str | None = None) -> str:
    """The Prometheus rule file (`rule_files:`) for these options."""
    validate(options)
    source = source_text() if source is None else source
    try:
        parsed = yaml.safe_load(source)
    except yaml.YAMLError as err:
        raise RulesError(f"{SOURCE_NAME}: not YAML: {err}") from None
    groups = _check_source(parsed.get("groups") if isinstance(parsed, dict) else None, options)
    text = _rewrite_text(source, options)
    if yaml.safe_load(text) != {**parsed, "groups": apply(groups, options)}:
        raise RulesError(f"{SOURCE_NAME}: the generator does not understand this layout (keep one key per line, "
                         "expressions plain or as block scalars); nothing written")
    return _header(options, "rules") + text


class _BlockDumper(yaml.SafeDumper):
    """Keeps multi-line PromQL and descriptions readable as YAML block scalars."""


_BlockDumper.add_representer(
    str, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value,
                                                       style="|" if "\n" in value else None))


def render_prometheusrule(options: Options, source: str | None = None) -> str:
    """The same rules as a Prometheus Operator PrometheusRule."""
    groups = yaml.safe_load(render_rules(options, source))["groups"]
    labels = {"app.kubernetes.io/name": RESOURCE_NAME, **dict(options.resource_labels)}
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": RESOURCE_NAME, "labels": labels},
        "spec": {"groups": groups},
    }
    note = ("# Your Prometheus's ruleSelector may want a label (kube-prometheus-stack: release: <name>):\n"
            "# add it with --resource-label release=<name>.\n")
    return (_header(options, "prometheusrule") + note
            + yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, width=120, allow_unicode=False))


def render(options: Options, fmt: str = "rules") -> str:
    return render_prometheusrule(options) if fmt == "prometheusrule" else render_rules(options)
