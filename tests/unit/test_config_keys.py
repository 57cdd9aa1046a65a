"""The key-table loader both configuration files use: every problem names its key path; defaults are read like
values; tables and dataclasses cannot drift apart. (The configuration's own cases are in test_config.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from exporter.config_keys import (
    ConfigError,
    Key,
    Required,
    check_fields,
    choice,
    duration,
    existing_file,
    integer,
    load_yaml,
    read_section,
)

KEYS = (
    Key("name", choice("a", "b"), Required("which one")),
    Key("port", integer(1, 10), lambda values: 5 if values["name"] == "a" else 7),
    Key("wait", duration, "1m", check=lambda value, values: None if value > values["port"] else "too short"),
    Key("note", choice("x", "y", "z"), None),
)


def error(raw) -> tuple[str, str]:
    with pytest.raises(ConfigError) as caught:
        read_section(raw, "section", KEYS)
    return caught.value.path, caught.value.message


def test_defaults_plain_derived_and_unset():
    assert read_section({"name": "a"}, "section", KEYS) == {"name": "a", "port": 5, "wait": 60.0, "note": None}
    assert read_section({"name": "b", "wait": "8s"}, "section", KEYS)["port"] == 7


def test_each_problem_names_its_key():
    assert error(None) == ("section.name", "required: which one")
    assert error([]) == ("section", "expected a mapping, got list")
    assert error({"name": "a", "other": 1}) == ("section.other", "unknown key (allowed: name, note, port, wait)")
    assert error({"name": "c"}) == ("section.name", "must be a or b, got 'c'")
    assert error({"name": "a", "note": "w"}) == ("section.note", "must be one of x, y, z, got 'w'")
    assert error({"name": "a", "port": 11}) == ("section.port", "must be between 1 and 10, got 11")
    assert error({"name": "a", "wait": "2s"}) == ("section.wait", "too short")


def test_a_default_meets_the_checks_of_a_value():
    keys = (Key("port", integer(1, 10), 5), Key("wait", duration, "3s", check=lambda v, values: "too short"))
    with pytest.raises(ConfigError, match="section.wait: too short"):
        read_section({}, "section", keys)


def test_check_fields_compares_a_table_with_its_dataclass():
    @dataclass
    class Section:
        name: str
        port: int
        wait: float

    check_fields(KEYS, Section, besides=("note",))
    with pytest.raises(TypeError, match="note"):
        check_fields(KEYS, Section)


def test_yaml_errors_say_where():
    with pytest.raises(ConfigError, match="line 2, column 1"):
        load_yaml("a: [1,\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_yaml("[" * 20000 + "]" * 20000)


def test_existing_file_is_taken_from_the_base_and_can_hide_its_value(tmp_path):
    (tmp_path / "f").write_text("x")
    assert existing_file("f", "k", tmp_path) == tmp_path / "f"
    with pytest.raises(ConfigError) as caught:
        existing_file("hunter2", "k", tmp_path, secret_nearby=True)
    assert "hunter2" not in str(caught.value) and "does not exist" in str(caught.value)
    with pytest.raises(ConfigError, match="does not exist"):
        existing_file(str(tmp_path / "absent"), "k", Path("/"))


@pytest.mark.parametrize("text", [
    "port: " + "9" * 5000,  # past Python's 4,300 digits for int(): a ValueError from PyYAML's constructor
    "port: 1" + "_0" * 5000,
    "port: 0x" + "f" * 5000,  # converts, but has more than 4,300 decimal digits: str() and repr() raise
    "port: 1" + ":59" * 3000,  # YAML 1.1 base 60
])
def test_a_number_too_long_is_a_clear_error_where_it_is(text):
    """Before: a ValueError escaped load_yaml (check-config printed Python's message with no key, a reload said
    "unexpected ValueError"), or came later from the error message itself, which repr()s the value."""
    with pytest.raises(ConfigError, match="line 1, column 7: a number of more than") as caught:
        load_yaml(text)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("value", ["1" + "0" * 5000 + "h", "1" + "0" * 400 + "h", "1" + "0" * 400 + "ms"])
def test_a_duration_with_too_many_digits_is_a_clear_error(value):
    """Before: int() of 5,000 digits raised ValueError, and 400 digits of hours an OverflowError when added to the
    seconds (a float)."""
    with pytest.raises(ConfigError, match="expected a duration"):
        duration(value, "poll.interval")


def test_merge_keys_work_as_in_yaml_and_a_key_given_twice_is_still_refused():
    """The loader that refuses a key given twice constructed `<<` before PyYAML merged it: a file sharing a
    module's keys through an anchor (`<<: *base`), which yaml.safe_load and Go's YAML readers take, was refused
    as "could not determine a constructor for the tag 'tag:yaml.org,2002:merge'"."""
    text = ("base: &base {transport: ntlm, scheme: https, port: 5986}\n"
            "a: {<<: *base, username: u}\n"
            "b: {<<: *base, port: 443}\n"  # a key of its own wins over the merged one: not a key given twice
            "c: {<<: [*base, {scheme: http}]}\n")
    loaded = load_yaml(text)
    assert loaded == yaml.safe_load(text)
    assert loaded["a"] == {"transport": "ntlm", "scheme": "https", "port": 5986, "username": "u"}
    assert loaded["b"]["port"] == 443
    with pytest.raises(ConfigError, match="key 'port' is given twice"):
        load_yaml("base: &base {port: 1}\na: {<<: *base, port: 2, port: 3}\n")
