"""Seeded fuzzing of the parsers of hostile input (a compromised Exchange server, any client of the port): each case
a campaign found is kept here as an explicit regression test, and each campaign runs again on a fixed seed with a
bounded number of cases. Complexity checks are ratios within one run (n against 4n), never absolute times."""

from __future__ import annotations

import random
import struct
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from exporter.winrm.connection import Answer
from exporter.winrm.errors import MalformedAnswer
from exporter.winrm.session import SPNEGO, MessageSeal


def _best_of(runs: int, call) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.thread_time()  # CPU of this thread: a loaded machine does not move it
        call()
        best = min(best, time.thread_time() - started)
    return best


# ---------------------------------------------------------------- sealed answers (session.MessageSeal.unwrap)


class _EchoContext:
    """A security context whose unwrap returns the sealed data as it is: the framing is what is under test."""

    def unwrap_winrm(self, header: bytes, data: bytes) -> bytes:
        return data


def _sealed(body: bytes) -> Answer:
    headers = {"Content-Type": f'multipart/encrypted;protocol="{SPNEGO}";boundary="Encrypted Boundary"'}
    return Answer(200, SimpleNamespace(get=headers.get), body)


def _part(header: bytes, plain: bytes) -> bytes:
    return (b"--Encrypted Boundary\r\n" + header + b"--Encrypted Boundary\r\n\tContent-Type: application/octet-stream"
            b"\r\n" + struct.pack("<i", 16) + b"S" * 16 + plain)


GOOD_HEADER = (b"\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
               b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=%d\r\n")


def test_a_sealed_answer_still_unwraps():
    seal = MessageSeal(_EchoContext(), SPNEGO)
    body = _part(GOOD_HEADER % 5, b"hello") + _part(GOOD_HEADER % 3, b"abc") + b"--Encrypted Boundary--\r\n"
    assert seal.unwrap(_sealed(body)) == b"helloabc"


def test_a_part_header_of_many_original_content_lines_is_refused_in_linear_time():
    """Found by fuzzing: `_LENGTH.search` in a header repeating "\\tOriginalContent: " on one line took time
    quadratic in its length (288 KB: 9 s; a 4 MiB answer: half an hour, the GIL held, every thread stopped)."""
    seal = MessageSeal(_EchoContext(), SPNEGO)

    def unwrap(repeats: int):
        body = _part(b"\tOriginalContent: " * repeats, b"x") + b"--Encrypted Boundary--\r\n"
        return lambda: pytest.raises(MalformedAnswer, seal.unwrap, _sealed(body))

    with pytest.raises(MalformedAnswer, match="MIME header exceeds"):
        seal.unwrap(_sealed(_part(b"\tOriginalContent: " * 4000, b"x")))
    small, large = _best_of(3, unwrap(4000)), _best_of(3, unwrap(16000))
    assert large < 10 * small + 0.002, (small, large)


# ---------------------------------------------------------------- seeded mutation campaigns

SPECIAL = (b"\x00", b"\xff", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\xfe\xff", b"<!DOCTYPE a>", b"&#0;", b"&#xD800;",
           b"99999999999999999999999999", b"-1", b"1e400", b"NaN", b"<a>" * 50, b"]]>", b"\r\n", b'"', b"'", b"<", b">",
           b"&amp;", b"=", b" ", b"\t", b"-9223372036854775809", b"9999-12-31T23:59:59.9999999Z",
           b"0001-01-01T00:00:00Z", b"_xD800_", b"_x0000_", b"\xc0\x80", b"\x80")


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random edits: bit flips, insertions, deletions, duplicated runs, truncation, special tokens."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        size, op = len(data), rng.randrange(8)
        start = rng.randrange(size) if size else 0
        if op == 0 and size:
            data[start] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[start:start] = bytes([rng.randrange(256)])
        elif op == 2:
            del data[start:start + rng.randint(1, 64)]
        elif op == 3 and size:
            at = rng.randrange(size + 1)
            data[at:at] = data[start:start + rng.randint(1, 200)] * rng.randint(1, 20)
        elif op == 4:
            del data[rng.randrange(size + 1):]
        elif op == 5:
            data[start:start] = rng.choice(SPECIAL)
        elif op == 6:
            data[start:start + rng.randint(1, 16)] = rng.choice(SPECIAL)
        elif size:
            data[start] = rng.choice(b"<>/\"'=&;:, 0129aZ\r\n")
    return bytes(data)


def campaign(seed: int, samples: list[bytes], cases: int):
    rng = random.Random(seed)
    for _ in range(cases):
        yield mutate(rng, rng.choice(samples))


def _recorded_wsman_answers() -> list[bytes]:
    import yaml

    folder = Path(__file__).parent.parent / "fixtures" / "pypsrp"
    return [m["response"].encode() for f in sorted(folder.glob("*.yml"))
            for m in yaml.safe_load(f.read_text())["messages"]]


def test_mutated_wsman_answers_are_malformed_answers_or_read():
    """Every reader of a WS-Management answer, on answers recorded from real Windows, mutated."""
    from exporter.winrm import wsman

    for answer in campaign(1, _recorded_wsman_answers(), 1500):
        for reader in (wsman.shell_id, wsman.command_id, wsman.output,
                       lambda a: wsman.check_relates_to(a, uuid.UUID(int=1))):
            try:
                reader(answer)
            except MalformedAnswer:
                pass
        fault = wsman.fault(answer)
        if fault is not None:
            fault.reason.encode("utf-8")


def test_mutated_sealed_answers_are_malformed_answers_or_read():
    seal = MessageSeal(_EchoContext(), SPNEGO)
    good = _part(GOOD_HEADER % 5, b"hello") + _part(GOOD_HEADER % 5, b"world") + b"--Encrypted Boundary--\r\n"
    for body in campaign(2, [good], 1500):
        try:
            seal.unwrap(_sealed(body))
        except MalformedAnswer:
            pass


def test_mutated_psrp_fragments_are_refused_or_passed():
    from exporter.winrm.errors import PollFailure
    from exporter.winrm.psrp_fragments import FragmentReader

    pool, pipeline = uuid.UUID(int=7), uuid.UUID(int=8)
    message = (struct.pack("<II", 1, 0x41004) + pool.bytes_le + pipeline.bytes_le
               + b'<Obj RefId="0"><TN RefId="0"><T>x</T></TN><MS><S N="a">b</S></MS></Obj>')

    def fragment(object_id: int, number: int, data: bytes, flags: int = 3) -> bytes:
        return struct.pack(">QQBI", object_id, number, flags, len(data)) + data

    samples = [fragment(1, 0, message),
               fragment(2, 0, message[:30], 1) + fragment(2, 1, message[30:], 2) + fragment(3, 0, message)]
    for data in campaign(3, samples, 1500):
        reader = FragmentReader(pool, max_message_bytes=1 << 20, max_total_bytes=2 << 20)
        try:
            reader.feed(data[: len(data) // 2], pipeline)
            reader.feed(data[len(data) // 2:], pipeline)
            reader.finish()
        except PollFailure as failure:
            assert failure.reason in ("bad_output", "output_too_large"), failure.message


def test_mutated_requests_are_refused_or_routed():
    from exporter.web import handlers
    from exporter.web.transport import Refused, parse_head

    samples = [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain;version=0.0.4\r\nAccept-Encoding: gzip\r\n\r\n",
        b"GET /probe?target=EX01&module=default&debug=true HTTP/1.1\r\nHost: x\r\n"
        b"X-Prometheus-Scrape-Timeout-Seconds: 10\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
        b"POST /-/reload HTTP/1.0\r\nContent-Length: 5\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\r\n",
        b"GET http://host:9/server?name=EX01&debug=false HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ]
    for head in campaign(4, samples, 1500):
        head = head if head.endswith(b"\r\n\r\n") else head + b"\r\n\r\n"
        try:
            request, _ = parse_head(head)
        except Refused as refused:
            assert 400 <= refused.status < 600 and refused.text
            continue
        handlers.route(request)


# ---------------------------------------------------------------- PSRP objects, after psrpcore read them

_OUTPUT, _ERROR, _STATE = 0x00041004, 0x00041005, 0x00041006
_COMPLETED = b'<Obj RefId="0"><MS><I32 N="PipelineState">4</I32></MS></Obj>'
_SERVER = (b'<Obj RefId="0"><TN RefId="0"><T>Deserialized.Microsoft.Exchange.Data.Directory.Management.ExchangeServer'
           b'</T></TN><MS><S N="Name">EX01</S><S N="Fqdn">ex01.contoso.test</S><I32 N="ServerRole">2</I32>'
           b'<DT N="MitigationsAppliedTime">0001-01-01T00:00:00</DT><B N="MitigationsEnabled">true</B>'
           b'<Obj N="MitigationsApplied" RefId="1"><LST><S>M1.1</S></LST></Obj></MS></Obj>')
_ORGANIZATION = (b'<Obj RefId="0"><TN RefId="0"><T>Deserialized.Microsoft.Exchange.Data.Directory.Management.'
                 b'OrganizationConfig</T></TN><MS><B N="MitigationsEnabled">true</B></MS></Obj>')
_ERROR_RECORD = (b'<Obj RefId="0"><TN RefId="0"><T>System.Management.Automation.ErrorRecord</T><T>System.Object</T>'
                 b'</TN><MS><Obj RefId="1" N="Exception"><TN RefId="1"><T>System.Exception</T></TN><Props>'
                 b'<S N="Message">Boom</S><Nil N="Data" /><Nil N="HelpLink" /><I32 N="HResult">-2146233087</I32>'
                 b'<Nil N="InnerException" /><Nil N="Source" /><Nil N="StackTrace" /><Nil N="TargetSite" /></Props>'
                 b'</Obj><Nil N="TargetObject" /><S N="FullyQualifiedErrorId">Boom,Here</S><Nil N="InvocationInfo" />'
                 b'<I32 N="ErrorCategory_Category">1</I32><Nil N="ErrorCategory_Activity" /><S N="ErrorCategory_Reason" />'
                 b'<S N="ErrorCategory_TargetName" /><S N="ErrorCategory_TargetType" />'
                 b'<S N="ErrorCategory_Message">OpenError (:) [], </S><B N="SerializeExtendedInfo">false</B></MS></Obj>')


def _psrp_result(messages: list[tuple[int, bytes]], configuration: str):
    """What `PsrpConnection` makes of a pipeline's messages (then Completed), as `_invoke` reads them: psrpcore's
    events, the expansion bound, and the configuration's reading into a CommandResult. In process: a psrpcore
    server opens the pool; the pipeline's messages are the test's."""
    import psrpcore

    from exporter.winrm import psrp
    from exporter.winrm.errors import PollFailure
    from exporter.winrm.psrp_fragments import FragmentReader

    client, server = psrpcore.ClientRunspacePool(), psrpcore.ServerRunspacePool()
    client.open()
    for source, target in ((client, server), (server, client)):
        while (payload := source.data_to_send()) is not None:
            target.receive_data(payload)
            while target.next_event() is not None:
                pass
    shell = psrpcore.ClientPowerShell(client)
    shell.add_command("Get-Thing")
    shell.start()
    while client.data_to_send() is not None:
        pass
    pool, pipeline = client.runspace_pool_id, shell.pipeline_id
    data = b"".join(
        struct.pack(">QQBI", 100 + n, 0, 3, 40 + len(body)) + struct.pack("<II", 1, kind) + pool.bytes_le
        + pipeline.bytes_le + body for n, (kind, body) in enumerate([*messages, (_STATE, _COMPLETED)]))
    connection = object.__new__(psrp.PsrpConnection)
    connection._configuration, connection._server_name, connection._selects = configuration, "EX01", True
    outputs, errors, failure = [], [], None
    try:
        reader = FragmentReader(pool, max_message_bytes=1 << 20, max_total_bytes=2 << 20)
        for event in psrp._events(client, reader.feed(data, pipeline), pipeline):  # as PsrpConnection._receive
            failure = psrp._gather(event, outputs, errors, failure)  # as PsrpConnection._invoke
        psrp._expanded_size([*outputs, *errors, failure], 2 << 20)
        if configuration == psrp.EXCHANGE_CONFIGURATION:
            result = connection._organization(outputs, errors, failure)
        else:
            result = connection._jea([psrp.endpoint_version(), *outputs], errors, failure)
    except (PollFailure, psrp._NoSelectObject) as failure:
        return getattr(failure, "reason", "no_select")
    result.stdout.decode("utf-8")
    result.stderr.decode("ascii")
    return result


@pytest.mark.parametrize("configuration", ["Microsoft.Exchange", "ExchangeEemsReader"])
@pytest.mark.parametrize("messages, expected", [
    pytest.param([(_ERROR, _ERROR_RECORD.replace(b'<S N="Message">Boom</S>', b""))], "bad_output", id="no_message"),
    pytest.param([(_ERROR, _ERROR_RECORD.replace(b'<S N="Message">Boom</S>', b'<I32 N="Message">5</I32>'))],
                 "bad_output", id="number_message"),
    pytest.param([(_OUTPUT, b"<S>a_xD800_b</S>")], None, id="lone_surrogate"),
])
def test_psrp_cases_fuzzing_found(configuration, messages, expected):
    result = _psrp_result(messages, configuration)
    if expected is not None:
        assert result == expected
    else:
        assert not isinstance(result, str), result


@pytest.mark.parametrize("configuration", ["Microsoft.Exchange", "ExchangeEemsReader"])
def test_mutated_psrp_objects_fail_the_poll_with_a_reason_or_are_read(configuration):
    samples = [(_OUTPUT, _SERVER), (_OUTPUT, _ORGANIZATION), (_ERROR, _ERROR_RECORD), (_OUTPUT, b"<S>text</S>"),
               (_OUTPUT, b"<I32>2</I32>")]
    rng = random.Random(5)
    for _ in range(60):
        messages = [(kind, mutate(rng, body)) for kind, body in rng.sample(samples, rng.randint(1, 3))]
        result = _psrp_result(messages, configuration)
        assert not isinstance(result, str) or result in ("bad_output", "rbac_denied", "no_select",
                                                         "output_too_large", "endpoint_outdated"), result
