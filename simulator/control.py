"""The simulator's JSON control API, so a demo or a test in another process can watch and break hosts.

`GET /state` -> {"hosts": {name: {"open_shells", "requests", "commands", "open_pools", "invocations"}}};
`PUT /hosts/<name>/faults` with a JSON object of `Faults` fields replaces that host's faults (absent fields
take their defaults). The HTTP framing is the server's; this module only maps a request to an answer.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable
from urllib.parse import unquote

from .host import Faults, SimulatedHost

_FIELD_TYPES = {
    "latency_seconds": (int, float),
    "slow_start_seconds": (int, float),
    "refuse_connections": (bool,),
    "reset_mid_response": (bool,),
    "hang": (bool,),
    "unauthorized": (bool,),
    "fault_code": (int, type(None)),
}
assert set(_FIELD_TYPES) == {f.name for f in dataclasses.fields(Faults)}, "control API out of date with Faults"


def parse_faults(body: bytes) -> Faults:
    """A `Faults` from a JSON body; ValueError with a specific message otherwise."""
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object of Faults fields")
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(unknown)}; known: {', '.join(_FIELD_TYPES)}")
    for name, value in data.items():
        allowed = _FIELD_TYPES[name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"{name}: wrong type {type(value).__name__}")
    for name in ("latency_seconds", "slow_start_seconds"):
        if data.get(name, 0) < 0:
            raise ValueError(f"{name} must not be negative")
    return Faults(**data)


def handle(
    method: str, path: str, body: bytes, hosts: dict[str, SimulatedHost], stats: Callable[[], dict]
) -> tuple[int, bytes]:
    """Answer one control request with (HTTP status, JSON body)."""
    if path == "/state":
        if method != "GET":
            return 405, _error("use GET /state")
        return 200, json.dumps(stats()).encode()
    parts = path.split("/")
    if len(parts) == 4 and parts[0] == "" and parts[1] == "hosts" and parts[3] == "faults":
        host = hosts.get(unquote(parts[2]))
        if host is None:
            return 404, _error(f"no host named {unquote(parts[2])!r}")
        if method != "PUT":
            return 405, _error("use PUT with a JSON object of Faults fields")
        try:
            faults = parse_faults(body)
        except ValueError as exc:
            return 400, _error(str(exc))
        host.faults = faults
        return 200, json.dumps(dataclasses.asdict(faults)).encode()
    return 404, _error("paths: GET /state, PUT /hosts/<name>/faults")


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
