"""ReplyReader and EHLO keyword parsing: each case fed whole, byte by byte, and with trailing bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scanner.smtp.reply import (
    MalformedReply,
    NotSmtp,
    Reply,
    ReplyReader,
    ReplyTooLong,
    parse_ehlo_keywords,
    split_enhanced,
)

CASES = [
    # (bytes, code, lines, enhanced)
    (b"220 mx.example.test ESMTP\r\n", 220, ("mx.example.test ESMTP",), None),
    (b"220-first\r\n220-second\r\n220 third\r\n", 220, ("first", "second", "third"), None),
    (b"250\r\n", 250, ("",), None),
    (b"220 bare lf\n", 220, ("bare lf",), None),
    (b"220-one\n\r\n\n220 two\n", 220, ("one", "two"), None),
    (b"550 5.1.1 User unknown\r\n", 550, ("User unknown",), "5.1.1"),
    (b"451-4.7.1 Greylisted\r\n451 4.7.1 try later\r\n", 451, ("Greylisted", "try later"), "4.7.1"),
    # An enhanced code whose class disagrees with the reply code stays in the text.
    (b"550 2.1.0 odd\r\n", 550, ("2.1.0 odd",), None),
    (b"220 caf\xc3\xa9\r\n", 220, ("caf\u00e9",), None),
    (b"220 bad \xff\xfe bytes\r\n", 220, ("bad \\xff\\xfe bytes",), None),
    (b"220 nul \x00 and \x1b[31m escape\r\n", 220, ("nul \\x00 and \\x1b[31m escape",), None),
    (b"220 c1 \xc2\x9b and del \x7f\r\n", 220, ("c1 \\x9b and del \\x7f",), None),
    (b"220 back\\slash \\xff\r\n", 220, ("back\\\\slash \\\\xff",), None),
    (b"220 tab\there\r\n", 220, ("tab\\x09here",), None),
]


def read_all(chunks: list[bytes], reader: ReplyReader | None = None) -> list[Reply]:
    reader = reader or ReplyReader()
    replies = []
    for chunk in chunks:
        reader.feed(chunk)
        while (reply := reader.next_reply()) is not None:
            replies.append(reply)
    return replies


@pytest.mark.parametrize("data,code,lines,enhanced", CASES)
def test_reply_whole(data, code, lines, enhanced):
    [reply] = read_all([data])
    assert reply.code == code
    assert reply.lines == lines
    assert reply.enhanced == enhanced


@pytest.mark.parametrize("data,code,lines,enhanced", CASES)
def test_reply_byte_by_byte(data, code, lines, enhanced):
    replies = read_all([data[i:i + 1] for i in range(len(data))])
    assert replies == [Reply(code, lines, enhanced)]


@pytest.mark.parametrize("data,code,lines,enhanced", CASES)
def test_reply_with_trailing_bytes(data, code, lines, enhanced):
    reader = ReplyReader()
    [reply] = read_all([data + b"250-partial"], reader)
    assert reply == Reply(code, lines, enhanced)
    assert reader.buffered == len(b"250-partial")


@pytest.mark.parametrize("data,error", [
    (b"HTTP/1.1 400 Bad Request\r\n", NotSmtp),
    (b"SSH-2.0-OpenSSH_9.2\r\n", NotSmtp),
    (b"22 short\r\n", NotSmtp),
    (b"220x no separator\r\n", NotSmtp),
    (b"999 out of range\r\n", MalformedReply),
    (b"220-first\r\n250 second\r\n", MalformedReply),
])
def test_reply_rejects_non_smtp(data, error):
    with pytest.raises(error):
        read_all([data])


def test_line_without_newline_is_capped():
    reader = ReplyReader(max_line_bytes=1024)
    reader.feed(b"220 " + b"a" * 1020)
    assert reader.next_reply() is None
    reader.feed(b"a" * 10)
    with pytest.raises(ReplyTooLong):
        reader.next_reply()


def test_endless_multiline_is_capped():
    reader = ReplyReader(max_reply_bytes=4096)
    with pytest.raises(ReplyTooLong):
        for _ in range(1000):
            reader.feed(b"220-more and more\r\n")
            assert reader.next_reply() is None


def test_one_mebibyte_line_stops_early():
    reader = ReplyReader()
    with pytest.raises(ReplyTooLong):
        for _ in range(256):
            reader.feed(b"x" * 4096)
            reader.next_reply()
    assert reader.buffered <= 2 * 8192 + 4096


def test_split_enhanced():
    assert split_enhanced(250, b"2.1.5 Ok") == ("2.1.5", b"Ok")
    assert split_enhanced(250, b"2.1.5") == ("2.1.5", b"")
    assert split_enhanced(250, b"2.1 Ok") == (None, b"2.1 Ok")
    assert split_enhanced(421, b"4.7.0 closing") == ("4.7.0", b"closing")


def test_ehlo_keywords():
    reply = Reply(250, ("mx.test greets you", "PIPELINING", "SIZE 10240000", "auth=LOGIN PLAIN", "AUTH CRAM-MD5", "8BITMIME", "-bad", ""))
    keywords = parse_ehlo_keywords(reply)
    assert keywords["PIPELINING"] == ""
    assert keywords["SIZE"] == "10240000"
    assert keywords["AUTH"] == "LOGIN PLAIN CRAM-MD5"
    assert "8BITMIME" in keywords
    assert "-BAD" not in keywords


server_line = st.tuples(
    st.sampled_from([b"220", b"250", b"421", b"554", b"HTT", b"22"]),
    st.sampled_from([b" ", b"-", b"", b"x"]),
    st.binary(max_size=40).filter(lambda text: b"\n" not in text),
    st.sampled_from([b"\r\n", b"\n"]),
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(server_line, max_size=8), cut=st.integers(min_value=0))
def test_any_split_gives_same_replies(lines, cut):
    data = b"".join(code + sep + text + end for code, sep, text, end in lines)
    cut = cut % (len(data) + 1)

    def outcome(chunks):
        try:
            return ("ok", read_all(chunks))
        except (NotSmtp, MalformedReply, ReplyTooLong) as exc:
            return ("error", type(exc))

    assert outcome([data]) == outcome([data[:cut], data[cut:]])
