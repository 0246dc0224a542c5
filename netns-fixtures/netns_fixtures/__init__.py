"""netns_fixtures — throw-away network topologies for nlportmap's tests, demos and
benchmarks (stdlib only; drives ``ip`` via subprocess).  Always tears down.

Quick use::

    from netns_fixtures import (Topology, echo_server, new_container_id,
                                port_mapping, tcp_request)

    with Topology(plugin_paths={"portmap": "/path/to/nlportmap"}) as t:
        pod = t.add_netns("pod")
        conf = t.make_conflist({})              # bridge + host-local + portmap
        cid = new_container_id()
        t.cni_chain_add(pod, cid, plugins_conf=conf,
                        capability_args={"portMappings": [port_mapping(8080, 80)]})
        with echo_server(pod, proto="tcp", port=80):
            assert tcp_request(t.client, t.host_ip4, 8080) is not None
        t.cni_chain_del(pod, cid)

See the README next to this package and the docstrings of each module.
"""

from .cni import CNIError, CNIRuntime, make_conflist, port_mapping
from .netns import CommandError, Netns, cleanup_all, cleanup_stale, kill_process
from .topology import Topology, new_container_id, pod_ips
from .traffic import (EchoHit, EchoReply, EchoServer, Reply, echo_server, parse_echo,
                      tcp_probe, tcp_request, udp_probe, udp_request)

__all__ = [
    "CNIError", "CNIRuntime", "CommandError", "EchoHit", "EchoReply", "EchoServer",
    "Netns", "Reply", "Topology", "cleanup_all", "cleanup_stale", "echo_server",
    "kill_process", "make_conflist", "new_container_id", "parse_echo", "pod_ips",
    "port_mapping", "tcp_probe", "tcp_request", "udp_probe", "udp_request",
]
