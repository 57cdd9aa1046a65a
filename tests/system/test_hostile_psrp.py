"""A compromised server answering PowerShell remoting: it cannot stall the exporter or make it grow.

The simulated server authenticates and opens the runspace pool like Windows; then its pipeline answers with
fragments a hostile server would write (endless fragments of one message, a huge fragment, a message for
another runspace pool, a DTD), put straight into the command's queue below psrpcore. Each poll must fail with
its reason, by its deadline, having read no more than the configured bounds."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import time
import uuid

import pytest

from exporter import windows_endpoint
from exporter.scripts import ServerScriptParameters, powershell_command, server_script
from exporter.winrm import PollFailure, connect
from simulator import psrp

from ..conftest import SimulatedFleet, jea_scenario

COMMAND = powershell_command(server_script(ServerScriptParameters(24, 50, 32768, False, 10, "")))
OUTPUT, STATE = 0x00041004, 0x00041006
MAX_RESPONSE, MAX_POLL = 1 << 20, 2 << 20


def message(pool: uuid.UUID, pipeline: uuid.UUID, kind: int, data: bytes) -> bytes:
    return struct.pack("<II", 1, kind) + pool.bytes_le + pipeline.bytes_le + data


def fragment(object_id: int, fragment_id: int, data: bytes, start: bool, end: bool) -> bytes:
    return struct.pack(">QQBI", object_id, fragment_id, (1 if start else 0) | (2 if end else 0), len(data)) + data


def endless(pool, pipeline):
    """One message that never ends: 64 KiB fragments, 8 MiB of them (the bounds stop the exporter long before)."""
    yield fragment(100, 0, message(pool, pipeline, OUTPUT, b"<S>"), True, False)
    for number in range(1, 129):
        yield fragment(100, number, b"x" * (64 << 10), False, False)


def huge(pool, pipeline):
    yield fragment(100, 0, message(pool, pipeline, OUTPUT, b"<S>" + b"x" * (3 << 20) + b"</S>"), True, True)


def huge_header(pool, pipeline):
    """A header that claims 100 MiB; the data that follows is short."""
    yield struct.pack(">QQBI", 100, 0, 3, 100 << 20) + b"<S>"


def wrong_runspace(pool, pipeline):
    yield fragment(100, 0, message(uuid.uuid4(), pipeline, OUTPUT, b"<S>hello</S>"), True, True)


def dtd(pool, pipeline):
    laughs = (b'<!DOCTYPE S [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
              b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><S>&c;&c;&c;&c;</S>')
    yield fragment(100, 0, message(pool, pipeline, OUTPUT, laughs), True, True)


def utf16_dtd(pool, pipeline):
    """The DTD above in UTF-16LE without a byte order mark: expat reads the encoding from '<' NUL, and the bytes
    `<!DOCTYPE` the fragment reader refused were not there; the entities expanded (174 MiB for a 698-byte bomb)."""
    laughs = ('<!DOCTYPE S [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
              '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><S>&c;&c;&c;&c;</S>').encode("utf-16-le")
    yield fragment(100, 0, message(pool, pipeline, OUTPUT, laughs), True, True)


def not_xml(pool, pipeline):
    """CLIXML that is not well-formed: ElementTree's ParseError (a SyntaxError) ended the poll as internal_error."""
    yield fragment(100, 0, message(pool, pipeline, OUTPUT, b"<S>unclosed"), True, True)


def completed(pool, pipeline):
    """The endpoint's version (so the output is read past it), then the final Completed state."""
    version = f"<S>{windows_endpoint.endpoint_version()}</S>".encode()
    yield fragment(90, 0, message(pool, pipeline, OUTPUT, version), True, True)
    yield fragment(98, 0, message(pool, pipeline, STATE,
                                  b'<Obj RefId="0"><MS><I32 N="PipelineState">4</I32></MS></Obj>'), True, True)


def reference_bomb(pool, pipeline):
    """1.6 KB of CLIXML: 26 lists, each holding the one before it twice (<Ref RefId>). psrpcore shares the
    referenced object, so str() of the last walks 2^26 strings into 500 MB of text (2^30: hours and GiB). The size
    check itself asked psrpcore for each list's `to_string`, which is that str(): 23 levels took 8 s of CPU, 26
    levels a minute, past the poll's deadline."""
    parts = ['<Obj RefId="0"><LST><S>x</S><S>y</S></LST></Obj>']
    parts += [f'<Obj RefId="{n}"><LST><Ref RefId="{n - 1}"/><Ref RefId="{n - 1}"/></LST></Obj>' for n in range(1, 26)]
    first, state = completed(pool, pipeline)
    yield first
    yield fragment(100, 0, message(pool, pipeline, OUTPUT, f'<Obj RefId="99"><LST>{"".join(parts)}</LST></Obj>'
                                   .encode()), True, True)
    yield state


def reference_cycle(pool, pipeline):
    """An object whose property is the object itself: str() recursed until RecursionError (internal_error)."""
    first, state = completed(pool, pipeline)
    yield first
    yield fragment(100, 0, message(pool, pipeline, OUTPUT, b'<Obj RefId="0"><MS><Ref N="Self" RefId="0"/></MS></Obj>'),
                   True, True)
    yield state


def type_name_bomb(pool, pipeline):
    """107 KB: one list of 2,000 type names, then 2,000 objects naming it again (<TNRef>). psrpcore wrote each
    object's names anew: 4 million strings, 364 MB and 0.7 s (the default 4 MiB message: hundreds of GB)."""
    names = "".join(f"<T>t{n}</T>" for n in range(2000))
    objects = "".join(f'<Obj RefId="{n}"><TNRef RefId="0"/></Obj>' for n in range(1, 2001))
    first, state = completed(pool, pipeline)
    yield first
    yield fragment(100, 0, message(pool, pipeline, OUTPUT, f'<Obj RefId="0"><TN RefId="0">{names}</TN><LST>{objects}'
                                   '</LST></Obj>'.encode()), True, True)
    yield state


def many_values(pool, pipeline):
    """2 MB of empty strings (<S/>) in three lists, within the 2 MiB poll bound: psrpcore made each a Python
    object, 510,000 of them (about 110 MB, 55 times the bytes read; the default 8 MiB: 1.8 GB)."""
    first, state = completed(pool, pipeline)
    yield first
    for number in (100, 101, 102):
        yield fragment(number, 0, message(pool, pipeline, OUTPUT, b"<Obj><LST>" + b"<S/>" * 170_000 + b"</LST></Obj>"),
                       True, True)
    yield state


def stopped(pool, pipeline):
    """The endpoint's version, then the pipeline's state Stopped (which only the client asks for), no output."""
    version, _ = completed(pool, pipeline)
    yield version
    state = b'<Obj RefId="0"><MS><I32 N="PipelineState">3</I32></MS></Obj>'
    yield fragment(98, 0, message(pool, pipeline, STATE, state), True, True)


NIL = uuid.UUID(int=0)
READ_LINE = (b'<Obj RefId="0"><MS><I64 N="ci">1</I64><Obj N="mi" RefId="1"><TN RefId="0">'
             b'<T>System.Management.Automation.Remoting.RemoteHostMethodId</T><T>System.Enum</T><T>System.ValueType</T>'
             b'<T>System.Object</T></TN><ToString>ReadLine</ToString><I32>11</I32></Obj><Obj N="mp" RefId="2">'
             b'<TN RefId="1"><T>System.Collections.ArrayList</T><T>System.Object</T></TN><LST /></Obj></MS></Obj>')


def host_call(pool, pipeline):
    """Read-Host: the server waits for a line the exporter never sends (it declared no host)."""
    yield fragment(100, 0, message(pool, pipeline, 0x00041100, READ_LINE), True, True)


def pool_host_call(pool, pipeline):
    yield fragment(100, 0, message(pool, NIL, 0x00021100, READ_LINE), True, True)


def key_request(pool, pipeline):
    """PUBLIC_KEY_REQUEST: the server waits for a key the exporter never sends (it sends no SecureString)."""
    yield fragment(100, 0, message(pool, NIL, 0x00010007, b"<S />"), True, True)


def pool_broken(pool, pipeline):
    """The runspace pool's state Broken in the middle of a pipeline, which then never ends."""
    yield fragment(100, 0, message(pool, NIL, 0x00021005, b'<Obj RefId="0"><MS><I32 N="RunspaceState">5</I32></MS>'
                                                         b'</Obj>'), True, True)


ATTACKS = {"endless_fragments": (endless, "bad_output"), "huge_fragment": (huge, "output_too_large"),
           "huge_fragment_header": (huge_header, "bad_output"), "wrong_runspace_id": (wrong_runspace, "bad_output"),
           "dtd": (dtd, "bad_output"), "utf16_dtd": (utf16_dtd, "bad_output"), "not_xml": (not_xml, "bad_output"),
           "reference_bomb": (reference_bomb, "output_too_large"), "reference_cycle": (reference_cycle, "bad_output"),
           "host_call": (host_call, "bad_output"), "pool_host_call": (pool_host_call, "bad_output"),
           "key_request": (key_request, "bad_output"), "pool_broken": (pool_broken, "wsman_fault"),
           "type_name_bomb": (type_name_bomb, "bad_output"),
           "many_values": (many_values, "output_too_large"), "stopped": (stopped, "script_failed")}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with SimulatedFleet(jea_scenario(tmp_path_factory.mktemp("endpoint"))) as fleet:
        yield fleet


@pytest.fixture
def attack(monkeypatch):
    """Make every pipeline answer with the chosen attack's fragments, queued as they are (never Done)."""
    sent = {"bytes": 0, "left": 0}

    def install(name: str):
        produce = ATTACKS[name][0]

        async def hostile_run(self, pool, command, powershell):
            fragments = list(produce(pool.runspace.runspace_pool_id, command.pipeline.pipeline_id))
            command.queue.fragments.extend(fragments)
            sent["bytes"] = sum(map(len, fragments))
            await psrp._notify(pool)
            await asyncio.sleep(3600)  # never completes

        monkeypatch.setattr(psrp.PsrpService, "_run", hostile_run)
        return sent

    return install


def connection(fleet):
    config = fleet.config()
    server = config.servers[0]
    module = dataclasses.replace(config.modules[server.module], protocol="psrp", keep_runspace=False)
    return connect(f"{module.scheme}://{server.address}:{server.port}/wsman", module, max_response_bytes=MAX_RESPONSE,
                   max_poll_bytes=MAX_POLL, server_name=server.name)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_hostile_psrp_answer_fails_the_poll_within_its_bounds(fleet, attack, name):
    sent = attack(name)
    conn = connection(fleet)
    started = time.monotonic()
    with pytest.raises(PollFailure) as failure:
        conn.run(COMMAND, started + 15)
    took = time.monotonic() - started
    conn.close()
    assert failure.value.reason == ATTACKS[name][1], failure.value.message
    assert took < 10
    # what the exporter read is bounded by its limits, not by what the server had to send
    if name == "endless_fragments":
        assert sent["bytes"] > 4 * MAX_RESPONSE and "exceeds" in failure.value.message
