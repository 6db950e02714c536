"""What the test Boefje API can be told to do wrong, and what it remembers of each request.

Chaos tests inject faults per endpoint (error statuses, delays, dropped connections, malformed
bodies, gzip bombs) through :meth:`BoefjeAPIServer.inject`; this module holds the fault itself, the checks on
its arguments and the rule for which fault a request gets. :class:`RequestRecord` is the other
half of that conversation: what a test reads back to see which requests came and how they ended.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Endpoint names, as used by :meth:`BoefjeAPIServer.inject` and :meth:`BoefjeAPIServer.request_counts`.
ENDPOINTS = ("pop", "push", "patch", "get", "input", "output", "health")
#: What a ``malformed=True`` fault answers: truncated JSON.
MALFORMED_BODY = b'{"results": [{"id": '


@dataclass
class Fault:
    """One injected fault; see :meth:`BoefjeAPIServer.inject`. ``remaining`` None means forever."""

    endpoint: str
    remaining: int | None = 1
    status: int | None = None
    delay: float | None = None
    drop: bool | str = False
    malformed: bool = False
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Pad the answer with this many bytes of whitespace and send it gzip-encoded (see gzip_bomb).
    gzip_bomb: int | None = None
    hits: int = 0

    @property
    def answers(self) -> bool:
        """True when this fault replaces the real answer (so the request has no effect)."""
        return self.status is not None or self.malformed or self.body is not None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it. ``status`` is None when the connection was dropped."""

    method: str
    path: str
    endpoint: str
    status: int | None
    time: float
    #: The W3C ``traceparent`` header it carried, if any (only this header: keeping every header
    #: would cost each request of a benchmark run a dict copy).
    traceparent: str | None = None


def make_fault(
    endpoint: str,
    *,
    status: int | None,
    times: int | None,
    delay: float | None,
    drop: bool | str,
    malformed: bool,
    body: bytes | str | None,
    headers: Mapping[str, str] | None,
    gzip_bomb: int | None = None,
) -> Fault:
    """The fault :meth:`BoefjeAPIServer.inject` describes; ValueError for arguments that make no sense."""
    if endpoint != "*" and endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; known: {', '.join(ENDPOINTS)} or '*'")
    if drop not in (False, True, "before", "after"):
        raise ValueError(f"drop must be True, 'before' or 'after', not {drop!r}")
    if times is not None and times < 1:
        raise ValueError("times must be at least 1 (or None for forever)")
    if gzip_bomb is not None and (isinstance(gzip_bomb, bool) or not isinstance(gzip_bomb, int) or gzip_bomb < 0):
        raise ValueError(f"gzip_bomb must be a number of bytes (0 or more), not {gzip_bomb!r}")
    if status is None and delay is None and not drop and not malformed and body is None and gzip_bomb is None:
        raise ValueError("inject needs one of status, delay, drop, malformed, body or gzip_bomb")
    return Fault(
        endpoint=endpoint,
        remaining=times,
        status=status,
        delay=delay,
        drop="before" if drop is True else drop,
        malformed=malformed,
        body=body.encode() if isinstance(body, str) else body,
        headers={key: str(value) for key, value in (headers or {}).items()},
        gzip_bomb=gzip_bomb,
    )


#: Whitespace is compressed in blocks of this size, each flushed so that its compressed form is the
#: same every time: a bomb of any size is then that form repeated, built without the decoded bytes.
_BOMB_BLOCK = 1 << 20


def gzip_bomb(answer: bytes, padding: int) -> bytes:
    """A gzip stream that decodes to ``padding`` spaces followed by ``answer``.

    Leading whitespace is valid JSON, so a client that decodes it all reads a well-formed answer
    (the bomb costs it memory, not a parse error). About 1 KB on the wire per MiB of padding;
    building one costs a CRC pass over the padding, once per size (cached).
    """
    head, padding_crc = _padding(padding)
    tail = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)  # a raw deflate stream, ended here
    body = tail.compress(answer) + tail.flush()
    trailer = struct.pack("<II", zlib.crc32(answer, padding_crc), (padding + len(answer)) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head + body + trailer


@functools.lru_cache(maxsize=8)
def _padding(size: int) -> tuple[bytes, int]:
    """The deflate blocks of ``size`` spaces (ending byte-aligned, not final) and their CRC-32."""
    blocks, rest = divmod(size, _BOMB_BLOCK)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = b" " * _BOMB_BLOCK
    # A full flush resets the compressor, so every block compresses to the same bytes.
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH) if blocks else b""
    last = compressor.compress(b" " * rest) + compressor.flush(zlib.Z_FULL_FLUSH) if rest else b""
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    return repeated * blocks + last, zlib.crc32(b" " * rest, crc)


def take_fault(faults: list[Fault], endpoint: str) -> Fault | None:
    """Hand out the first fault in ``faults`` that applies to ``endpoint``, using up one of its times.

    Faults apply in the order injected; a used-up fault is removed from ``faults``. The caller
    holds the server's lock, so two requests never take the same last use.
    """
    for fault in faults:
        if fault.endpoint in (endpoint, "*"):
            fault.hits += 1
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining == 0:
                    faults.remove(fault)
            return fault
    return None
