"""Each backend has one error boundary (errors.kernel_boundary): an OSError escaping any
of its commands -- a failed netlink read included -- becomes a KernelError naming the
backend and the command, never a raw errno text (issue 13)."""
import pytest

from nlportmap.errors import CNIError, KernelError, kernel_boundary
from nlportmap.nft.backend import NftBackend
from nlportmap.plan import Forward, Owner, Plan


class _FailingSocket:
    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise OSError(22, "Invalid argument")
        return fail


PLAN = Plan(Owner("c1", "eth0", "net"), forwards=(Forward(4, "tcp", None, 8080, "10.0.0.5", 80),))


@pytest.mark.parametrize("call, word", [
    (lambda b: b.forward(PLAN), "ADD"), (lambda b: b.unforward(PLAN), "DEL"),
    (lambda b: b.check(PLAN), "CHECK"), (lambda b: b.gc(set(), "net"), "GC"), (lambda b: b.list(), "list"),
])
def test_nft_read_failures_become_kernel_errors(call, word):
    with pytest.raises(KernelError) as e:
        call(NftBackend(_FailingSocket()))
    assert e.value.code == 999 and e.value.msg.startswith(f"nftables {word}: ")
    assert "Invalid argument" in e.value.msg and "[Errno" not in e.value.msg


def test_cni_errors_pass_through_unchanged():
    class Refuses(CNIError):
        code = 7

    @kernel_boundary("x")
    class B:
        def forward(self):
            raise Refuses("no")

    with pytest.raises(Refuses):
        B().forward()
