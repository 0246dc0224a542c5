"""plan.Owner: the one home of the owner format (issues 12.5, 16.6)."""
import itertools

from nlportmap.plan import OWNER_COMMENT_MAX, Owner


def test_usual_names_read_as_before():
    o = Owner("c1", "eth0", "net")
    assert o.comment == "c1/eth0 net" == o.legacy_comment
    assert o.stamped(1700000000000) == "c1/eth0 net @1700000000000"
    assert Owner.parse(o.stamped(5)) == o and Owner.created_ms(o.stamped(5)) == 5


def test_interface_names_are_encoded_reversibly():
    names = ['e"0', "e_0", "e\\0", "e%220", "e@0", "e~0", "e#0", "\u00e9th0", "e" * 15,
             b"\xff\xfe".decode("utf-8", "surrogateescape")]
    owners = [Owner("c", n, "net") for n in names]
    comments = [o.comment for o in owners]
    assert len(set(comments)) == len(names)
    assert all('"' not in c and "\\" not in c and c.isascii() for c in comments)
    assert [Owner.parse(c + " @1") for c in comments] == owners
    assert len({o.hash for o in owners}) == len(names)


def test_network_is_part_of_identity_and_hash():
    a, b = Owner("same", "eth0", "net-a"), Owner("same", "eth0", "net-b")
    assert a.comment != b.comment and a.hash != b.hash
    assert not a.owns(b.stamped(1)) and a.owns(a.stamped(1))


def test_long_names_get_a_hashed_form_that_stays_injective():
    long = [Owner("f" * 200, "\\" * 15, "n" * 300), Owner("f" * 200, "\\" * 15, "n" * 299),
            Owner("f" * 64, "eth0", "n" * 300), Owner("f" * 64, "eth0", "n" * 301)]
    for o in long:
        assert len(o.comment.encode()) == OWNER_COMMENT_MAX and o.owns(o.stamped(1))
    assert len({o.comment for o in long}) == len(long)
    p = Owner.parse(long[2].stamped(1))
    assert (p.container_id, p.ifname) == ("f" * 64, "eth0") and ("n" * 300).startswith(p.network)
    # the longest full form stays below the hashed form's length
    edge = Owner("c", "eth0", "n" * (OWNER_COMMENT_MAX - len("c/eth0 ") - 1))
    assert len(edge.comment) == OWNER_COMMENT_MAX - 1 and "~" not in edge.comment


def test_older_format_is_owned_unless_it_is_another_owners_identity():
    assert Owner("c", "e@0", "n").owns("c/e@0 n @1")          # older format, unambiguous
    assert Owner("c", "eth0", "n" * 300).owns("c/eth0 " + "n" * (OWNER_COMMENT_MAX - 7) + " @1")  # older cut
    # e"0 was written as c/e_0 by older releases: that is e_0's identity now
    assert not Owner("c", 'e"0', "n").owns("c/e_0 n @1")
    assert Owner("c", "e_0", "n").owns("c/e_0 n @1")
    assert Owner.hash_of("c/e@0 n @1") == Owner("c", "e@0", "n").legacy_hash
    assert Owner.hash_of("c/eth0 n @1") == Owner("c", "eth0", "n").hash


def test_no_two_owners_claim_one_comment():
    owners = [Owner(c, i, n) for c, i, n in itertools.product(("c", "d"), ('e"0', "e_0", "e%220", "e@0", "eth0"),
                                                              ("n", "m"))]
    for o in owners:
        for c in (o.stamped(1), o.legacy_comment + " @1"):
            assert sum(x.owns(c) for x in owners) <= 1, c
