"""Our hand-written hot-path messages are byte-identical to pyroute2's encoding.

The set-element, element-get and rule-dump messages are encoded by
nlportmap.nft.netlink without pyroute2's NLA machinery (speed); pyroute2's
message classes remain the reference.  Any difference fails here.
"""
from hypothesis import given, settings
from hypothesis import strategies as st

from nlportmap.nft import netlink as N
from pyroute2.netlink.nfnetlink import nftsocket as nfts

NAME = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=30)
KEY = st.binary(min_size=4, max_size=40).map(lambda b: b + b"\0" * (-len(b) % 4))
COMMENT = st.one_of(st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1, max_size=240))


def reference(mtype, flags, family, tbl, set_name, items, seq, *, with_data):
    els = []
    for k, d, c in items:
        a = [("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", k)]})]
        if with_data and d is not None:
            a.append(("NFTA_SET_ELEM_DATA", {"attrs": [("NFTA_DATA_VALUE", d)]}))
        if with_data and c:
            a.append(("NFTA_SET_ELEM_USERDATA", [("NFTNL_UDATA_SET_ELEM_COMMENT", c)]))
        els.append({"attrs": a})
    m = nfts.nft_set_elem_list_msg()
    m["nfgen_family"] = family
    m["attrs"] = [["NFTA_SET_ELEM_LIST_TABLE", tbl], ["NFTA_SET_ELEM_LIST_SET", set_name],
                  ["NFTA_SET_ELEM_LIST_ELEMENTS", els]]
    m["header"].update(type=(10 << 8) | mtype, flags=flags, sequence_number=seq, pid=0)
    m.encode()
    return bytes(m.data)


@settings(max_examples=200, deadline=None)
@given(family=st.sampled_from([2, 10]), tbl=NAME, set_name=NAME, add=st.booleans(),
       items=st.lists(st.tuples(KEY, st.one_of(st.none(), KEY), COMMENT), min_size=1, max_size=5),
       seq=st.integers(1, 2**31))
def test_set_elems_match_pyroute2(family, tbl, set_name, add, items, seq):
    op = N.set_elems(add, family, tbl, set_name, items)
    mtype = N.NEWSETELEM if add else N.DELSETELEM
    flags = N.NLM_F_REQUEST | N.NLM_F_ACK | (N.NLM_F_CREATE if add else 0)
    assert N.encode(op, seq) == reference(mtype, flags, family, tbl, set_name, items, seq, with_data=add)


@settings(max_examples=100, deadline=None)
@given(family=st.sampled_from([2, 10]), tbl=NAME, set_name=NAME, key=KEY)
def test_element_get_matches_pyroute2(family, tbl, set_name, key):
    body = N.elem_list(family, tbl, set_name, N._elem(key, None, None)).body
    raw = N._header(len(body), N.GETSETELEM, N.NLM_F_REQUEST, 77) + body
    assert raw == reference(N.GETSETELEM, N.NLM_F_REQUEST, family, tbl, set_name, [(key, None, None)], 77,
                            with_data=False)


def test_op_name_of_raw_messages():
    op = N.set_elems(True, 10, "nlportmap", "hostports", [(b"\0" * 8, b"\0" * 20, "c/eth0")])
    assert N.op_name(op) == "NEWSETELEM ip6 nlportmap/hostports"
