"""Reading a YAML configuration key by key, every problem a `ConfigError` that names the key path.

A section of a configuration is a table of `Key`s (name, reader, default) that `read_section` checks a
mapping against: unknown keys, missing required keys, then each value through its key's reader, in table
order. The readers here are the value types the configuration uses (whole numbers with bounds, durations,
fractions, flags, strings, choices, existing files). Both configuration files use them: the exporter's
(config.py) and the web configuration (webconfig.py), so both report a problem the same way, as
`modules.default.port: must be between 1 and 65535, got 0`. The simulator keeps its own: it imports nothing
from the exporter.
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .terminal import printable

MAX_ERROR_CHARS = 300
# at most 12 digits a number: more made int() raise (past 4,300 digits) or the sum, a float, overflow
_DURATION = re.compile(r"^(?:(\d{1,12})h)?(?:(\d{1,12})m)?(?:(\d{1,12}(?:\.\d{1,12})?)s)?(?:(\d{1,12})ms)?$")
# An integer scalar longer than this is refused where it stands: PyYAML's int() raises ValueError past 4,300
# digits, and a long hexadecimal one converts but cannot be str()ed or repr()ed into an error message.
MAX_NUMBER_CHARS = 64

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 80, 80


class ConfigError(Exception):
    """One line: a key path or message with a newline or an escape sequence (a double-quoted YAML key may hold
    any) has it written as its escape, so it neither splits the line nor reaches the terminal raw."""

    def __init__(self, path: str, message: str):
        path, message = printable(path), printable(message)
        path = path if len(path) <= MAX_ERROR_CHARS else path[:MAX_ERROR_CHARS] + "..."
        message = message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "..."
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def bounded_repr(value: Any) -> str:
    """A value for an error message, bounded: YAML aliases make a 600-byte file hold a value whose repr()
    is gigabytes, and the message is printed, logged and returned by POST /-/reload."""
    return _REPR.repr(value)


# ---------------------------------------------------------------- the table and its loader

Reader = Callable[[Any, str], Any]  # (value from the file, key path) -> checked value; raises ConfigError


@dataclass(frozen=True)
class Required:
    """The default of a key the file must set; `why` completes the error message."""

    why: str = ""


REQUIRED = Required()


@dataclass(frozen=True)
class Key:
    """One key of a section. `default` is written as in the file and read like a value from it (so a default
    meets the same checks); None means "not set", a `Required` that the file must set it, and a function
    computes it from the values of the keys before it. `check` sees the value and the values before it and
    returns what is wrong, or None."""

    name: str
    read: Reader
    default: Any = REQUIRED
    check: Callable[[Any, dict[str, Any]], str | None] | None = None


def read_section(raw: Any, path: str, keys: tuple[Key, ...]) -> dict[str, Any]:
    """The section at `path` read by its table: a dict of every key's checked value or default."""
    section = mapping(raw, path)
    reject_unknown(section, {key.name for key in keys}, path)
    values: dict[str, Any] = {}
    for key in keys:
        key_path = f"{path}.{key.name}" if path else key.name
        default = key.default
        if key.name in section:
            value = key.read(section[key.name], key_path)
        elif isinstance(default, Required):
            raise ConfigError(key_path, f"required: {default.why}" if default.why else "required")
        elif default is None:
            value = None
        else:
            value = key.read(default(values) if callable(default) else default, key_path)
        problem = key.check(value, values) if key.check and value is not None else None
        if problem:
            raise ConfigError(key_path, problem)
        values[key.name] = value
    return values


def check_fields(keys: tuple[Key, ...], cls: type, *, also: tuple[str, ...] = (), besides: tuple[str, ...] = ()) -> None:
    """That the dataclass `cls` holds exactly the table's keys (plus `also`, minus `besides`): a key added to one
    and not the other fails on import, not in a user's configuration."""
    table = {key.name for key in keys} - set(besides) | set(also)
    fields = set(cls.__dataclass_fields__)
    if table != fields:
        raise TypeError(f"{cls.__name__} and its key table differ: {sorted(table ^ fields)}")


# ---------------------------------------------------------------- shapes


def mapping(value: Any, path: str) -> dict:
    """A mapping with string keys; a section left empty (`poll:`) is an empty one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(path, f"keys must be strings, got {bounded_repr(key)}")
    return value


def reject_unknown(section: dict, allowed: set[str], path: str) -> None:
    for key in section:
        if key not in allowed:
            prefix = f"{path}." if path else ""
            raise ConfigError(f"{prefix}{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping: PyYAML keeps the last and drops the
    first without a word (a second `modules:` pasted below the first removed a module, and every server was
    polled with the other). exporter-toolkit's YAML reader refuses them too."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base`: merged by PyYAML below, where a key of the mapping's own wins
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # a list or a mapping as a key (`? [a, b]`): unhashable, PyYAML refuses it below
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {str(key)[:64]!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_NUMBER_CHARS:
            raise yaml.constructor.ConstructorError(None, None, f"a number of more than {MAX_NUMBER_CHARS} "
                                                                "characters", node.start_mark)
        return super().construct_yaml_int(node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _UniqueKeyLoader.construct_yaml_int)


def load_yaml(text: str) -> Any:
    """The document in `text`; a syntax error, or a key given twice, says where (line and column, or the
    position of a character YAML does not allow) with an empty key path."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise ConfigError("", "not valid YAML: nested too deeply") from None
    except yaml.reader.ReaderError as err:  # a control character: no line mark, but a position
        raise ConfigError("", f"not valid YAML: character #x{err.character:04x} at position {err.position} "
                              "is not allowed") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError("", f"not valid YAML{where}: {problem}") from None


# ---------------------------------------------------------------- readers


def integer(minimum: int, maximum: int) -> Reader:
    def read(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected a whole number, got {bounded_repr(value)}")
        if not minimum <= value <= maximum:
            raise ConfigError(path, f"must be between {minimum} and {maximum}, got {value}")
        return value
    return read


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {bounded_repr(value)}")
    return value


def string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, f"expected a non-empty string, got {bounded_repr(value)}")
    return value.strip()


def fraction(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(path, f"expected a fraction between 0 and 1, got {bounded_repr(value)}")
    return float(value)


def choice(*names: str) -> Reader:
    allowed = f"{names[0]} or {names[1]}" if len(names) == 2 else f"one of {', '.join(names)}"

    def read(value: Any, path: str) -> str:
        if not isinstance(value, str) or value not in names:
            raise ConfigError(path, f"must be {allowed}, got {bounded_repr(value)}")
        return value
    return read


def duration(value: Any, path: str) -> float:
    """Prometheus-style durations (`90s`, `5m`, `1h30m`, `250ms`) or a plain number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a duration like 30s or 5m, got {bounded_repr(value)}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ConfigError(path, f"expected a finite duration, got {bounded_repr(value)}")
        if value < 0:
            raise ConfigError(path, "must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match and any(match.groups()):
            hours, minutes, seconds, millis = match.groups()
            return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0) + int(millis or 0) / 1000
    raise ConfigError(path, f"expected a duration like 30s, 5m or 1h, got {bounded_repr(value)}")


def existing_file(value: Any, path: str, base: Path, *, secret_nearby: bool = False) -> Path:
    """A file that exists, relative paths taken from `base` (the configuration file's directory).
    `secret_nearby`: never repeat the value, in case someone pasted the password itself there."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, "expected a file path" if secret_nearby else f"expected a file path, got {bounded_repr(value)}")
    candidate = Path(value.strip())
    if not candidate.is_absolute():
        candidate = base / candidate
    if not candidate.is_file():
        shown = "the file it names" if secret_nearby else f"file {str(candidate)!r}"
        raise ConfigError(path, f"{shown} {'is not a regular file' if candidate.exists() else 'does not exist'}")
    return candidate
