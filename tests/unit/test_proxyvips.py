"""nlportmap.proxyvips without root: request bytes, reply parsing, and the request flow
against a fake netlink connection.  Replies are built by hand from the kernel's
structs (nlmsghdr, ifinfomsg, ifaddrmsg, nlattr), not with the module's own encoders.
(tests/integration/test_ipvs.py reads a real namespace.)"""
import socket
import struct
import subprocess
import sys

import pytest

from nlportmap import proxyvips as P


def nlattr(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + bytes(-n % 4)


def nlmsg(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 4242) + body


def newlink(seq: int, index: int, name: str = "kube-ipvs0") -> bytes:
    # ifinfomsg: family 0, pad, type ARPHRD_ETHER (1), index, flags, change
    return nlmsg(16, 0, seq, struct.pack("=BxHiII", 0, 1, index, 0, 0) + nlattr(3, name.encode() + b"\0"))


def newaddr(seq: int, family: int, index: int, address: bytes | None = None, local: bytes | None = None,
            multi: bool = True) -> bytes:
    body = struct.pack("=BBBBI", family, 32 if family == 2 else 128, 0, 0, index)
    if address is not None:
        body += nlattr(1, address)
    if local is not None:
        body += nlattr(2, local)
    body += nlattr(3, b"kube-ipvs0\0")  # IFA_LABEL, ignored
    return nlmsg(20, 2 if multi else 0, seq, body)


def done(seq: int) -> bytes:
    return nlmsg(3, 2, seq, struct.pack("=i", 0))


def error(seq: int, errno: int) -> bytes:
    return nlmsg(2, 0, seq, struct.pack("=i", -errno) + bytes(16))


V4 = socket.inet_pton(socket.AF_INET, "10.96.0.1")
V4B = socket.inet_pton(socket.AF_INET, "10.96.0.10")
V6 = socket.inet_pton(socket.AF_INET6, "fd00:96::1")


# --------------------------------------------------------------------- requests
def test_getlink_request_is_a_get_by_name_without_stats():
    req = P.getlink_request("kube-ipvs0", 7)
    assert req == (struct.pack("=IHHII", len(req), 18, 0x1, 7, 0)   # RTM_GETLINK, NLM_F_REQUEST only
                   + bytes(16)                                       # ifinfomsg all zero (strict check)
                   + struct.pack("=HH", 15, 3) + b"kube-ipvs0\0" + b"\0"  # IFLA_IFNAME, NUL, padded
                   + struct.pack("=HHI", 8, 29, 1 << 3))            # IFLA_EXT_MASK = SKIP_STATS
    assert len(req) % 4 == 0


def test_getaddr_request_is_a_dump_filtered_by_index():
    assert P.getaddr_request(42, 9) == (struct.pack("=IHHII", 24, 22, 0x301, 9, 0)  # RTM_GETADDR, dump
                                        + struct.pack("=BBBBI", 0, 0, 0, 0, 42))     # AF_UNSPEC, ifa_index


# --------------------------------------------------------------------- parsing
def test_messages_splits_a_buffer_and_stops_at_a_truncated_one():
    buf = newlink(1, 5) + error(2, 19) + done(3)
    got = list(P.messages(buf + done(4)[:10]))
    assert [(t, s) for t, _, s, _ in got] == [(16, 1), (2, 2), (3, 3)]
    assert P.link_index(got[0][3]) == 5
    assert P.error_code(got[1][3]) == 19


def test_address_of_prefers_the_local_address_and_filters():
    assert P.address_of(newaddr(1, 2, 5, address=V4)) == (4, V4)
    # point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL ours
    assert P.address_of(newaddr(1, 2, 5, address=V4B, local=V4)) == (4, V4)
    assert P.address_of(newaddr(1, 10, 5, address=V6)) == (6, V6)
    assert P.address_of(newaddr(1, 10, 5, address=V6), ifindex=6) is None  # another interface
    assert P.address_of(newaddr(1, 17, 5, address=V4)) is None              # another family
    assert P.address_of(newaddr(1, 2, 5)) is None                           # no address attribute
    assert P.address_of(newaddr(1, 2, 5, address=V6)) is None               # wrong length


# --------------------------------------------------------------------- flow
class FakeConn:
    """Stands in for the netlink connection: answers from a table, records requests."""

    def __init__(self, links: dict, addrs: dict, errors: dict | None = None):
        self.links, self.addrs, self.errors = links, addrs, errors or {}
        self.sent: list[list[bytes]] = []
        self.closed = False
        self.s = self

    def close(self):
        self.closed = True

    def exchange(self, reqs, seqs):
        self.sent.append(reqs)
        replies = b""
        for req in reqs:
            _, mtype, _, seq, _ = struct.unpack_from("=IHHII", req)
            if mtype == 18:
                name = req[36:].split(b"\0")[0].decode()
                if name in self.errors:
                    replies += error(seq, self.errors[name])
                elif name in self.links:
                    replies += newlink(seq, self.links[name], name)
                else:
                    replies += error(seq, 19)
            else:
                index = struct.unpack_from("=I", req, 20)[0]
                for fam, a in self.addrs.get(index, []):
                    replies += newaddr(seq, fam, index, address=a)
                replies += newaddr(seq, 2, index + 1, address=V4B)  # an unfiltering kernel's extra
                replies += done(seq)
        out = {q: [] for q in seqs}
        for typ, _, seq, msg in P.messages(replies):
            if typ == 2:
                out[seq] = P.error_code(msg)
            elif typ != 3:
                out[seq].append(msg)
        return out


@pytest.fixture
def fake(monkeypatch):
    made = []

    def install(*a, **kw):
        conn = FakeConn(*a, **kw)
        monkeypatch.setattr(P, "_Conn", lambda timeout: made.append(conn) or conn)
        return conn
    return install


def test_absent_interfaces_cost_one_round_trip(fake):
    conn = fake({}, {})
    assert P.proxy_addresses(["kube-ipvs0", "kube-dummy-if"]) == {4: [], 6: []}
    assert len(conn.sent) == 1 and len(conn.sent[0]) == 2  # both gets in one write, no dump
    assert conn.closed


def test_present_interface_gets_one_filtered_dump(fake):
    conn = fake({"kube-ipvs0": 7}, {7: [(2, V4), (10, V6), (2, V4B), (2, V4)]})
    assert P.proxy_addresses(["kube-ipvs0", "kube-dummy-if", "kube-ipvs0"]) == {4: [V4, V4B], 6: [V6]}
    assert [len(r) for r in conn.sent] == [2, 1]  # duplicates asked once; one dump


def test_errors_other_than_enodev_raise(fake):
    fake({}, {}, errors={"kube-ipvs0": 1})
    with pytest.raises(OSError) as exc:
        P.proxy_addresses(["kube-ipvs0"])
    assert exc.value.errno == 1


def test_no_names_open_no_socket(monkeypatch):
    monkeypatch.setattr(P, "_Conn", lambda timeout: pytest.fail("opened a socket"))
    assert P.proxy_addresses([]) == {4: [], 6: []}
    # a name longer than IFNAMSIZ - 1 cannot exist: not asked
    assert P.proxy_addresses(["x" * 16, ""]) == {4: [], 6: []}


def test_import_is_lean():
    """A lean exec path imports this module: nothing beyond _socket and struct."""
    code = ("import sys; before = set(sys.modules); import nlportmap.proxyvips; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-S", "-B", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": ":".join(p for p in sys.path if p)}).stdout.split()
    assert set(out) <= {"nlportmap", "nlportmap.proxyvips", "_socket", "struct", "_struct"}, out
