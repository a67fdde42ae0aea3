"""Stream the elements of one top-level JSON array (Alpaca, OIG), each with the line it starts on.

``json.load`` on a whole file gives no line for a bad element and needs the file in memory
at once. Here the array is decoded element by element with ``json.JSONDecoder.raw_decode``
over a sliding text buffer, so:

* every element carries the 1-based line where it starts and its 0-based index in the array
  (errors point at both: a file ``json.dump`` wrote is one line, where the line alone says nothing);
* a malformed element is cut out by a small string- and bracket-aware scanner and reported,
  and the elements after it are still read (``on_error="skip"``);
* memory is one chunk plus the largest element, not the file.

Bytes are decoded with ``surrogateescape`` so one bad byte does not stop the stream: it
survives as a lone surrogate in the element's raw text, and that element alone is reported
as not valid UTF-8.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

CHUNK_CHARS = 1 << 20

_DECODER = json.JSONDecoder()
_NON_WS = re.compile(r"[^ \t\r\n]")
_SPECIAL = re.compile(r'[\[\]{}",]')  # what the extent scanner stops at outside strings
_IN_STRING = re.compile(r'["\\]')  # ... and inside strings
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # how surrogateescape spells an undecodable byte


class Element(NamedTuple):
    """One array element: ``error`` is None and ``value`` is the decoded JSON, or ``error`` says why not.

    ``line`` is None only for errors about the whole file (empty file, empty array). ``index``
    is the element's 0-based position in the array (``json.load(f)[index]``); None for errors
    about the file's structure rather than one element.
    """

    line: int | None
    raw: str
    value: Any
    error: str | None
    index: int | None = None


def bad_utf8_reason(raw: str) -> str | None:
    """``"not valid UTF-8 (byte 0xNN)"`` when ``raw`` holds an undecodable byte, else None."""
    m = _ESCAPED_BYTE.search(raw)
    if m is None:
        return None
    return f"not valid UTF-8 (byte 0x{ord(m.group()) - 0xDC00:02x})"


class _Buffer:
    """Decoded text of a binary stream, read a chunk at a time; ``line`` is the line number at ``pos``."""

    def __init__(self, stream: IO[bytes], chunk_chars: int):
        self.stream = stream
        self.chunk = max(1, chunk_chars)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.text = ""
        self.pos = 0
        self.line = 1
        self.offset = 0  # characters of the file before ``pos``
        self.line_offset = 0  # characters of the file before the start of line ``line``
        self.eof = False
        self.first = True

    def fill(self) -> bool:
        """Append the next chunk; False at end of stream. Text before ``pos`` is dropped (offsets shift)."""
        if self.eof:
            return False
        data = self.stream.read(self.chunk)
        new = self.decoder.decode(data or b"", final=not data)
        if self.first and new:  # the first chunk may end before the 3 bytes of a BOM do
            new = new.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not content
            self.first = False
        self.text = self.text[self.pos :] + new
        self.pos = 0
        if not data:
            self.eof = True
        return bool(data) or bool(new)

    def advance(self, to: int) -> None:
        newlines = self.text.count("\n", self.pos, to)
        if newlines:
            self.line += newlines
            self.line_offset = self.offset + self.text.rfind("\n", self.pos, to) + 1 - self.pos
        self.offset += to - self.pos
        self.pos = to

    def where(self, at: int) -> str:
        """``"line L, column C"`` of text index ``at`` (at or after ``pos``), 1-based, for error details."""
        newlines = self.text.count("\n", self.pos, at)
        if newlines:
            return f"line {self.line + newlines}, column {at - self.text.rfind(chr(10), self.pos, at)}"
        return f"line {self.line}, column {self.offset + at - self.pos - self.line_offset + 1}"

    def skip_ws(self) -> bool:
        """Move ``pos`` to the next non-whitespace character; False if the stream ends first."""
        while True:
            m = _NON_WS.search(self.text, self.pos)
            if m is not None:
                self.advance(m.start())
                return True
            self.advance(len(self.text))
            if not self.fill():
                return False


def _scan_extent(text: str, pos: int) -> int | None:
    """Index of the ``,`` or ``]`` that ends the element starting at ``pos``, or None if not in ``text``.

    Only strings and bracket depth are tracked, so this finds the end of an element that JSON
    itself rejects (a missing comma, a bad literal) and the array can be read on after it.
    """
    depth = 0
    i = pos
    while True:
        m = _SPECIAL.search(text, i)
        if m is None:
            return None
        c = m.group()
        i = m.end()
        if c == '"':
            while True:
                s = _IN_STRING.search(text, i)
                if s is None:
                    return None
                if s.group() == "\\":
                    i = s.end() + 1  # skip the escaped character, whatever it is
                    continue
                i = s.end()
                break
        elif c in "[{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        elif depth == 0:  # a ',' or ']' outside any nesting ends the element
            return m.start()
        elif c == "]":
            depth -= 1


def iter_json_array(stream: IO[bytes], chunk_chars: int = CHUNK_CHARS) -> Iterator[Element]:
    """Yield every element of the top-level JSON array in ``stream`` (binary), good or bad, in order.

    Whole-file problems come last or alone: an empty file or empty array (line None), a file
    that is not an array, an array never closed, content after the closing ``]``.
    """
    buf = _Buffer(stream, chunk_chars)
    if not buf.skip_ws():
        yield Element(None, "", None, "empty file")
        return
    if buf.text[buf.pos] != "[":
        raw = buf.text[buf.pos : buf.pos + 2000]
        yield Element(buf.line, raw, None, bad_utf8_reason(raw) or "expected a JSON array starting with '['")
        return
    buf.advance(buf.pos + 1)
    n = 0
    while True:
        if not buf.skip_ws():
            yield Element(buf.line, "", None, "unexpected end of file: the array is not closed with ']'")
            return
        if n == 0 and buf.text[buf.pos] == "]":
            buf.advance(buf.pos + 1)
            yield Element(None, "[]", None, "empty file (an empty JSON array)")
            break
        element, delimiter = _next_element(buf)
        yield element._replace(index=n)
        n += 1
        if delimiter is None:  # the stream ended inside or right after this element
            if element.error is None:
                yield Element(buf.line, "", None, "unexpected end of file: the array is not closed with ']'")
            return
        if delimiter == "]":
            break
    if buf.skip_ws():
        raw = buf.text[buf.pos : buf.pos + 2000]
        yield Element(buf.line, raw, None, "unexpected content after the array's closing ']'")


def _next_element(buf: _Buffer) -> tuple[Element, str | None]:
    """Decode the element at ``buf.pos`` and consume it with its delimiter; returns it and ``,``/``]``/None."""
    line = buf.line
    while True:
        text, start = buf.text, buf.pos
        try:
            value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError as e:
            reason = f"malformed JSON: {e.msg} ({buf.where(e.pos)})"
            stop = _scan_extent(text, start)
            if stop is None and buf.fill():
                continue  # maybe just cut off by the chunk boundary: decode again with more text
            return _bad(buf, line, stop, reason)
        m = _NON_WS.search(text, end)
        if m is None or end == len(text):
            # A number can run on past the chunk and the delimiter may be in the next one.
            if buf.fill():
                continue
            if m is None:
                raw = text[start:end]
                buf.advance(len(buf.text))
                return Element(line, raw, None, bad_utf8_reason(raw) or "unexpected end of file: the array is not closed with ']'"), None
        delimiter = text[m.start()]
        if delimiter not in ",]":
            stop = _scan_extent(text, start)
            if stop is None and buf.fill():
                continue
            return _bad(buf, line, stop, "malformed JSON: expected ',' or ']' after the element")
        raw = text[start:end]
        buf.advance(m.end())
        bad = bad_utf8_reason(raw)
        return Element(line, raw, None if bad else value, bad), delimiter


def _bad(buf: _Buffer, line: int, stop: int | None, reason: str) -> tuple[Element, str | None]:
    """Report the element from ``buf.pos`` to ``stop`` (or to the end of the file) and skip past it."""
    end = len(buf.text) if stop is None else stop
    raw = buf.text[buf.pos : end].rstrip()
    if stop is None:
        buf.advance(len(buf.text))
        return Element(line, raw, None, bad_utf8_reason(raw) or reason), None
    delimiter = buf.text[stop]
    buf.advance(stop + 1)
    return Element(line, raw, None, bad_utf8_reason(raw) or reason), delimiter
