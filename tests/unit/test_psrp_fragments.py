"""FragmentReader: what a hostile server's PSRP fragments can and cannot make the exporter do."""

from __future__ import annotations

import struct
import uuid

import pytest

from exporter.winrm.errors import PollFailure
from exporter.winrm.psrp_fragments import MAX_OPEN_MESSAGES, FragmentReader

POOL, PIPE = uuid.uuid4(), uuid.uuid4()
OUTPUT = 0x00041004


def message(data: bytes, pool: uuid.UUID = POOL, pipeline: uuid.UUID | None = PIPE) -> bytes:
    return struct.pack("<II", 1, OUTPUT) + pool.bytes_le + (pipeline or uuid.UUID(int=0)).bytes_le + data


def fragment(object_id: int, fragment_id: int, data: bytes, start: bool = True, end: bool = True) -> bytes:
    flags = (1 if start else 0) | (2 if end else 0)
    return struct.pack(">QQBI", object_id, fragment_id, flags, len(data)) + data


def reader(**bounds) -> FragmentReader:
    return FragmentReader(POOL, max_message_bytes=bounds.get("message", 1 << 16), max_total_bytes=bounds.get("total", 1 << 20))


def test_good_fragments_pass_unchanged_even_split_across_answers():
    data = fragment(1, 0, message(b"<S>first</S>"), end=False) + fragment(1, 1, b"<S>rest</S>", start=False)
    r = reader()
    assert r.feed(data[:30], PIPE) == b""  # half a header, then half a fragment: held back
    assert r.feed(data[30:], PIPE) == data
    r.finish()


def reason(feed) -> str:
    with pytest.raises(PollFailure) as failure:
        feed()
    return failure.value.reason + ": " + failure.value.message


def test_a_huge_fragment_is_refused_from_its_header():
    r = reader(message=4096)
    header_only = struct.pack(">QQBI", 1, 0, 3, 100 << 20)  # claims 100 MiB; nothing of it is read
    assert reason(lambda: r.feed(header_only, PIPE)).startswith("bad_output: a PSRP fragment of 104857600 bytes")


def test_endless_fragments_of_one_message_are_cut_at_the_message_bound():
    r = reader(message=4096, total=1 << 30)
    r.feed(fragment(7, 0, message(b"x" * 1000), end=False), PIPE)

    def endless():
        for number in range(1, 1000):
            r.feed(fragment(7, number, b"y" * 1000, start=False, end=False), PIPE)

    assert "a PSRP message exceeds" in reason(endless)
    assert r.total < 10_000  # refused after a few KiB, not after the 1 MB sent


def test_endless_small_messages_are_cut_at_the_poll_bound():
    r = reader(total=50_000)

    def endless():
        for number in range(100_000):
            r.feed(fragment(number, 0, message(b"<S>x</S>")), PIPE)

    assert reason(endless).startswith("output_too_large")


def test_many_unfinished_messages_are_refused():
    r = reader()

    def begun():
        for number in range(MAX_OPEN_MESSAGES + 1):
            r.feed(fragment(number, 0, message(b"x"), end=False), PIPE)

    assert "begun and not finished" in reason(begun)


@pytest.mark.parametrize("pool, pipeline, expected", [
    (uuid.uuid4(), PIPE, "for runspace pool"),
    (POOL, uuid.uuid4(), "for pipeline"),
])
def test_a_message_for_another_runspace_or_pipeline_is_refused(pool, pipeline, expected):
    assert expected in reason(lambda: reader().feed(fragment(1, 0, message(b"<S/>", pool, pipeline)), PIPE))


def test_the_nil_pool_id_windows_sends_with_its_session_capability_is_accepted():
    data = fragment(1, 0, message(b"<Obj/>", pool=uuid.UUID(int=0), pipeline=None))
    assert reader().feed(data, None) == data


def test_a_pool_message_is_accepted_while_reading_a_pipeline():
    r = reader()
    data = fragment(1, 0, message(b"<S/>", pipeline=None))
    assert r.feed(data, PIPE) == data


@pytest.mark.parametrize("payload", [
    b'<!DOCTYPE x [<!ENTITY a "aaaa">]><Obj>&a;</Obj>',
    b"<!ENTITY lol 'lol'>",
    b"<!doctype Obj SYSTEM 'file:///etc/passwd'>",
])
def test_a_dtd_is_refused_before_any_parser(payload):
    assert "declares a DTD" in reason(lambda: reader().feed(fragment(1, 0, message(payload)), PIPE))


def test_a_dtd_split_across_fragments_is_found():
    r = reader()
    r.feed(fragment(1, 0, message(b"<Obj><!DOC"), end=False), PIPE)
    assert "declares a DTD" in reason(lambda: r.feed(fragment(1, 1, b"TYPE x>", start=False), PIPE))


def test_fragments_out_of_order_are_refused():
    r = reader()
    r.feed(fragment(1, 0, message(b"a"), end=False), PIPE)
    assert "out of order" in reason(lambda: r.feed(fragment(1, 2, b"b", start=False), PIPE))
    assert "out of order" in reason(lambda: reader().feed(fragment(9, 3, b"b", start=False), PIPE))


def test_an_answer_ending_inside_a_fragment_is_refused_at_the_end():
    r = reader()
    r.feed(fragment(1, 0, message(b"abc"))[:-1], PIPE)
    assert "ended inside a fragment" in reason(r.finish)


def type_name_bomb(objects: int, names: int) -> bytes:
    """One list of `names` type names, then `objects` objects naming it again by <TNRef>."""
    names_xml = "".join(f"<T>Type{n}</T>" for n in range(names))
    refs = "".join(f'<Obj RefId="{n}"><TNRef RefId="0" /></Obj>' for n in range(1, objects + 1))
    return f'<Obj RefId="0"><TN RefId="0">{names_xml}</TN><LST>{refs}</LST></Obj>'.encode()


def test_many_objects_naming_a_long_type_name_list_again_are_refused():
    data = message(type_name_bomb(1100, 1000))  # 66 KB: psrpcore would write 1.1 million names
    r = reader(message=1 << 20)
    assert "type names" in reason(lambda: r.feed(fragment(1, 0, data[:30_000], end=False) +
                                          fragment(1, 1, data[30_000:], start=False), PIPE))


def test_tags_split_across_fragments_are_counted_once():
    data = message(type_name_bomb(40, 30))
    r = reader()
    for number, start in enumerate(range(0, len(data), 7)):  # every tag split somewhere
        r.feed(fragment(1, number, data[start : start + 7], start=number == 0, end=False), PIPE)
    assert (r._open[1].objects, r._open[1].type_names) == (41, 30)


def test_many_small_values_are_cut_at_the_poll_bound_in_tags():
    r = reader(message=1 << 20, total=1 << 20)  # 32,768 tags at most

    def small():
        for number in range(3):
            r.feed(fragment(number, 0, message(b"<Obj><LST>" + b"<S/>" * 15_000 + b"</LST></Obj>")), PIPE)

    assert reason(small) == "output_too_large: PowerShell remoting output of more than 32768 XML tags in one poll " \
                            "(one in 32 bytes of limits.max_poll_bytes)"
    assert r.total < 200_000  # 180 KB read of the 1 MiB allowed


def test_a_new_poll_counts_its_tags_from_zero():
    """A kept pool reads many polls: 90,000 tags in three polls, each within its 32,768."""
    r = reader(message=1 << 20, total=1 << 20)
    for poll in range(3):
        r.new_poll()
        r.feed(fragment(poll, 0, message(b"<Obj><LST>" + b"<S/>" * 30_000 + b"</LST></Obj>")), PIPE)
