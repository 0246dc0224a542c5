"""NftBackend.forward and the proxy_vips refresh (issue 15), against a fake socket."""
import json

from nlportmap.config import parse_config
from nlportmap.nft import layout as L
from nlportmap.nft import netlink as N
from nlportmap.nft.backend import NftBackend
from nlportmap.plan import Owner, make_plan

VIP4, VIP6 = bytes([10, 96, 0, 1]), bytes(15) + b"\x01"


class FakeSock:
    """A table whose skeleton is current and holds no elements; records committed batches."""

    def __init__(self):
        self.batches = []

    def table_inventory(self, family, tbl, sets=True):
        fam = 4 if family == N.NFPROTO_IPV4 else 6
        fp = L.fingerprint(fam, ())
        return ({c: [fp] * n for c, n in L.expected_rules(fam, ()).items()}, (set(L.ALL_SETS) if sets else None),
                N.TableInfo(0, L.TABLE_COMMENT))

    def get_elems(self, queries):
        return [None] * len(queries)

    def commit(self, ops):
        self.batches.append(ops)


def plan(**conf):
    c = parse_config(json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "portmap", **conf,
                                 "runtimeConfig": {"portMappings": [
                                     {"hostPort": 443, "containerPort": 8443, "protocol": "tcp"}]}}), "ADD")
    return make_plan(c, {4: "10.244.1.5/24", 6: "fd00:244::5/64"}, Owner("c1", "eth0", "n"))


def sets_touched(ops):
    return [(o[0], o[2].family, o[2].names[1]) for o in ops if isinstance(o[2], N.RawMsg)]


def test_forward_refreshes_proxy_vips_first_in_the_same_batch():
    sock = FakeSock()
    p = plan().replace(proxy_vips={4: [VIP4], 6: []})
    NftBackend(sock).forward(p)
    assert len(sock.batches) == 1
    touched = sets_touched(sock.batches[0])
    assert touched[:3] == [(N.DELSETELEM, N.NFPROTO_IPV4, L.PROXY_VIPS),
                           (N.NEWSETELEM, N.NFPROTO_IPV4, L.PROXY_VIPS),
                           (N.DELSETELEM, N.NFPROTO_IPV6, L.PROXY_VIPS)]  # v6: flushed, nothing to add
    assert all(s != L.PROXY_VIPS for _, _, s in touched[3:])
    assert any(s == L.HOSTPORTS for _, _, s in touched[3:])


def test_forward_without_proxy_vips_leaves_the_set_alone():
    sock = FakeSock()
    NftBackend(sock).forward(plan())
    assert all(s != L.PROXY_VIPS for _, _, s in sets_touched(sock.batches[0]))
