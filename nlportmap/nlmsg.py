"""Netlink reply framing shared by the small request/answer exchanges (stdlib only).

Header layout ``struct nlmsghdr`` (linux/netlink.h): u32 len, u16 type, u16 flags,
u32 seq, u32 pid; an ``NLMSG_ERROR`` payload starts with the negative errno (s32).
"""
from __future__ import annotations

import posix
import struct

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_MULTI = 0x2


def collect(buf: bytes, seq: int, out: list[bytes]) -> bool:
    """Append the messages of ``buf`` that answer ``seq`` to ``out``.

    Returns True once the answer is complete: ``NLMSG_DONE`` (dumps), a zero
    ack, or a single message without ``NLM_F_MULTI``.  Raises OSError(errno)
    for an error reply.  Messages of other sequence numbers are skipped.
    """
    off = 0
    while off + 16 <= len(buf):
        ln, typ, flg, sq, _ = struct.unpack_from("=IHHII", buf, off)
        if ln < 16:
            return True
        if sq == seq:
            if typ == NLMSG_DONE:
                return True
            if typ == NLMSG_ERROR:
                code = -struct.unpack_from("=i", buf, off + 16)[0]
                if code:
                    raise OSError(code, posix.strerror(code))
                return True
            out.append(buf[off: off + ln])
            if not flg & NLM_F_MULTI:
                return True
        off += (ln + 3) & ~3
    return False
