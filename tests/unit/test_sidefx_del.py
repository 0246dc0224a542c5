"""DEL's conntrack clean-up (issue 12.2) without a kernel: the filtered request's bytes,
the dump fallback's parser, and that a failure never fails DEL."""
import struct

from nlportmap import sidefx as S
from nlportmap.plan import Forward, Owner, Plan
from nlportmap.plugin import Plugin


def _attrs(buf, off=0, end=None):
    end = len(buf) if end is None else end
    out = {}
    while off + 4 <= end:
        ln, ty = struct.unpack_from("=HH", buf, off)
        out[ty & 0x3FFF] = buf[off + 4: off + ln]
        off += (ln + 3) & ~3
    return out


def test_delete_request_filters_orig_proto_dport_and_reply_source():
    pod = bytes([10, 244, 1, 21])
    msg = S._ct_msg(S.IPCTNL_MSG_CT_DELETE, 5, 4, 17, 8125, 77, pod)
    ln, mtype, _, seq, _ = struct.unpack_from("=IHHII", msg)
    assert ln == len(msg) and mtype == (1 << 8) | 2 and seq == 77  # NFNL_SUBSYS_CTNETLINK, CT_DELETE
    top = _attrs(msg, 20)
    orig = _attrs(_attrs(top[1])[2])                             # CTA_TUPLE_ORIG / CTA_TUPLE_PROTO
    assert orig == {1: b"\x11", 3: struct.pack("!H", 8125)}       # CTA_PROTO_NUM, CTA_PROTO_DST_PORT
    assert _attrs(_attrs(top[2])[1]) == {1: pod}                  # CTA_TUPLE_REPLY / _IP / CTA_IP_V4_SRC
    flt = _attrs(top[25])                                         # CTA_FILTER
    assert struct.unpack("=I", flt[1])[0] == (1 << 3) | (1 << 5)  # ORIG: PROTO_NUM | PROTO_DST_PORT
    assert struct.unpack("=I", flt[2])[0] == 1 << 0               # REPLY: IP_SRC


def test_ipv6_reply_source_attribute():
    pod = bytes(15) + b"\x05"
    top = _attrs(S._ct_msg(S.IPCTNL_MSG_CT_GET, 0x301, 6, 132, 9000, 1, pod), 20)
    assert _attrs(_attrs(top[2])[1]) == {3: pod}                  # CTA_IP_V6_SRC


def test_add_request_is_unchanged_without_reply_source():
    assert 2 not in _attrs(S._ct_msg(S.IPCTNL_MSG_CT_DELETE, 5, 4, 17, 53, 1), 20)


def test_dump_fallback_reads_the_reply_source():
    reply = S._nla(2, S._nla(1, S._nla(1, bytes([10, 0, 0, 9])) + S._nla(2, bytes([10, 0, 0, 1]))))
    msg = bytes(20) + S._nla(1, b"") + reply
    assert S._reply_src(msg) == bytes([10, 0, 0, 9])
    assert S._reply_src(bytes(20)) is None


def test_pod_flows_skip_tcp_and_duplicates():
    flows = [(4, "udp", 8125, "10.0.0.9"), (4, "udp", 8125, "10.0.0.9"), (4, "tcp", 80, "10.0.0.9"),
             (6, "sctp", 9, "fd00::9")]
    assert [f[:4] for f in S._pod_flows(flows)] == [(4, "udp", 8125, "10.0.0.9"), (6, "sctp", 9, "fd00::9")]


def test_conntrack_failure_is_a_warning_and_del_goes_on(monkeypatch, capsys):
    calls = []

    def unavailable(fam, proto, port, reply_src=None, keep=None):
        calls.append((fam, proto, port, reply_src))
        raise OSError(93, "Protocol not supported")  # EPROTONOSUPPORT: no nf_conntrack_netlink

    monkeypatch.setattr(S, "delete_conntrack_sync", unavailable)
    plan = Plan(Owner("c1", "eth0", "net"), forwards=(Forward(4, "udp", None, 8125, "10.0.0.9", 53),))
    removed = [(4, "udp", 8125, "10.0.0.9"), (6, "udp", 8125, "fd00::9")]
    Plugin(cold=True)._delete_pod_flows(plan, removed)  # must not raise
    assert [c[:3] for c in calls] == [(4, "udp", 8125), (6, "udp", 8125)]
    err = capsys.readouterr().err
    assert "warning: failed to delete UDP conntrack entries of ipv4 port 8125 to the deleted pod 10.0.0.9" in err


def test_plan_names_the_flows_del_deletes():
    plan = Plan(Owner("c1", "eth0"), forwards=(Forward(4, "udp", None, 8125, "10.0.0.9", 53),
                                               Forward(4, "tcp", None, 80, "10.0.0.9", 80)))
    assert plan.pod_flows() == [(4, "udp", 8125, "10.0.0.9")]
    assert "on DEL: conntrack delete ipv4 udp dport 8125 reply src 10.0.0.9" in plan.describe()
