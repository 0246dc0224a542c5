"""The node/outside/pod topology used by nlportmap's tests, demos and benchmarks.

::

    client ns                host ns ("node")                         pod ns (one per pod)
    eth0 10.99.0.2/24  <-->  eth0 10.99.0.1/24     cni0 10.244.0.1/24  <-->  eth0 10.244.0.N
         fd00:99::2/64            fd00:99::1/64         fd00:244::1/64         fd00:244::N
    default via host         ip_forward=1 (v4+v6)  (bridge + veth made by the
                                                    bridge plugin, or add_pod_manual)

All of it lives in namespaces named ``<prefix>-<role>-<suffix>``; nothing is
configured in the caller's namespace.  CNI plugins run inside the host namespace.
"""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Any, Iterable, Mapping

from . import netns as _netns
from .cni import CNIRuntime, make_conflist
from .netns import Netns, make_temp_dir, new_suffix

__all__ = ["Topology", "new_container_id", "pod_ips"]


def new_container_id() -> str:
    """A random 64-hex container ID, like the ones runtimes send."""
    return os.urandom(32).hex()


def pod_ips(result: Mapping[str, Any], pod: Netns | str,
            ifname: str | None = None) -> tuple[str | None, str | None]:
    """First IPv4 and IPv6 address (without prefix length) that ``result`` puts on an
    interface whose ``sandbox`` is the pod's netns path (and named ``ifname``)."""
    path = pod.path if isinstance(pod, Netns) else pod
    ifaces = result.get("interfaces") or []
    ip4 = ip6 = None
    for ip in result.get("ips") or []:
        idx = ip.get("interface")
        if idx is None or not 0 <= idx < len(ifaces):
            continue
        iface = ifaces[idx]
        if iface.get("sandbox") != path or (ifname and iface.get("name") != ifname):
            continue
        addr = ipaddress.ip_interface(ip["address"]).ip
        if addr.version == 4 and ip4 is None:
            ip4 = str(addr)
        elif addr.version == 6 and ip6 is None:
            ip6 = str(addr)
    return ip4, ip6


class Topology:
    """Context manager building the host/client namespaces (see module doc).

    ``with Topology() as t:`` → ``t.host``, ``t.client`` (:class:`Netns`), pods from
    :meth:`add_netns` + :meth:`cni_chain_add` (or :meth:`add_pod_manual`).  On exit —
    also on exceptions, atexit, SIGTERM — processes started in the namespaces are
    killed by PID, all namespaces are deleted and the private temp dir (host-local
    ``dataDir``) removed.  :meth:`close` is idempotent.

    Parameters: ``ipv6`` (dual stack when true), ``prefix`` (namespace name prefix),
    ``pod_subnet4``/``pod_subnet6``, ``plugin_dirs`` (searched for plugin types and
    used as ``CNI_PATH``), ``plugin_paths`` (``type -> executable``, e.g.
    ``{"portmap": "/path/to/nlportmap"}``), ``plugin_timeout`` (s per exec),
    ``ipv6_dad`` (default False: the host namespace gets
    ``net.ipv6.conf.default.accept_dad=0`` so that the IPv6 gateway address the
    bridge plugin puts on ``cni0`` is usable at once; with DAD it stays
    *tentative* for ~1.5 s after the first ADD and IPv6 to/from pods fails in that
    window — use :meth:`Netns.wait_ipv6_settled` then).

    ``timings``: ``{"build": s, "teardown": s}``; ``cni.timings``: per plugin exec.
    """

    host_ip4 = "10.99.0.1"
    client_ip4 = "10.99.0.2"
    host_ip6 = "fd00:99::1"
    client_ip6 = "fd00:99::2"
    uplink_prefixlen4 = 24
    uplink_prefixlen6 = 64

    def __init__(self, *, ipv6: bool = True, prefix: str = "nlpm",
                 pod_subnet4: str = "10.244.0.0/24", pod_subnet6: str = "fd00:244::/64",
                 plugin_dirs: Iterable[str] = ("/usr/lib/cni",),
                 plugin_paths: Mapping[str, str] | None = None,
                 plugin_timeout: float = 30, ipv6_dad: bool = False) -> None:
        self.ipv6 = ipv6
        self.ipv6_dad = ipv6_dad
        self.prefix = prefix
        self.pod_subnet4 = ipaddress.ip_network(pod_subnet4)
        self.pod_subnet6 = ipaddress.ip_network(pod_subnet6)
        self.plugin_dirs = list(plugin_dirs)
        self.plugin_paths = dict(plugin_paths or {})
        self.plugin_timeout = plugin_timeout
        self.suffix = new_suffix()
        self.pods: list[Netns] = []
        self.timings: dict[str, float] = {}
        self.tmpdir: str | None = None
        self.host: Netns = None  # type: ignore[assignment]  # set by start()
        self.client: Netns = None  # type: ignore[assignment]
        self.cni: CNIRuntime = None  # type: ignore[assignment]
        self._conflists: dict[tuple[str, str], dict[str, Any]] = {}
        self._manual = 0
        self._started = self._closed = False

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Topology":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> "Topology":
        """Build the host and client namespaces (called by ``__enter__``)."""
        if self._started:
            return self
        if self._closed:
            raise RuntimeError("topology already closed")
        self._started = True
        t0 = time.perf_counter()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        self.timings["build"] = time.perf_counter() - t0
        return self

    def _build(self) -> None:
        self.tmpdir = make_temp_dir(f"{self.prefix}-{self.suffix}")
        self.host = Netns.create(self.prefix, "host", self.suffix)
        self.client = Netns.create(self.prefix, "client", self.suffix)
        h, c = self.host, self.client
        # both ends are created directly inside our namespaces, never in the caller's
        h.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", c.name)
        h.ip("addr", "add", f"{self.host_ip4}/{self.uplink_prefixlen4}", "dev", "eth0")
        c.ip("addr", "add", f"{self.client_ip4}/{self.uplink_prefixlen4}", "dev", "eth0")
        if self.ipv6:
            h.ip("addr", "add", f"{self.host_ip6}/{self.uplink_prefixlen6}", "dev", "eth0", "nodad")
            c.ip("addr", "add", f"{self.client_ip6}/{self.uplink_prefixlen6}", "dev", "eth0", "nodad")
        h.ip("link", "set", "eth0", "up")
        c.ip("link", "set", "eth0", "up")
        c.ip("route", "add", "default", "via", self.host_ip4)
        if self.ipv6:
            c.ip("-6", "route", "add", "default", "via", self.host_ip6)
        h.sysctl("net.ipv4.ip_forward", 1)
        if self.ipv6:
            h.sysctl("net.ipv6.conf.all.forwarding", 1)
            if not self.ipv6_dad:  # inherited by cni0 and the host-side veths
                h.sysctl("net.ipv6.conf.default.accept_dad", 0)
        self.cni = CNIRuntime(h, plugin_dirs=self.plugin_dirs, plugin_paths=self.plugin_paths,
                              timeout=self.plugin_timeout)

    def close(self) -> None:
        """Kill our processes, delete all namespaces, remove the temp dir.  Idempotent;
        keeps going past individual failures and raises the first one at the end."""
        if self._closed:
            return
        self._closed = True
        t0 = time.perf_counter()
        first_error: BaseException | None = None
        for ns in [*reversed(self.pods), self.client, self.host]:
            if ns is None:
                continue
            try:
                ns.delete()
            except BaseException as e:
                first_error = first_error or e
        if self.tmpdir:
            _netns.remove_dir(self.tmpdir)
        self.timings["teardown"] = time.perf_counter() - t0
        if first_error is not None:
            raise first_error

    def namespaces(self) -> list[Netns]:
        return [ns for ns in (self.host, self.client, *self.pods) if ns is not None]

    # ---------------------------------------------------------------- pods
    def add_netns(self, role: str = "pod") -> Netns:
        """A new empty namespace (``lo`` up) owned by the topology — a pod sandbox.
        Repeated roles get numbered: ``pod``, ``pod2``, ``pod3`` ..."""
        self._require_started()
        taken = {ns.role for ns in self.namespaces()}
        name, n = role, 1
        while name in taken:
            n += 1
            name = f"{role}{n}"
        ns = Netns.create(self.prefix, name, self.suffix)
        self.pods.append(ns)
        return ns

    def make_conflist(self, portmap_conf: Mapping[str, Any] | None = None, *,
                      name: str = "nlpm-test", portmap_type: str = "portmap",
                      **kw: Any) -> dict[str, Any]:
        """:func:`~netns_fixtures.make_conflist` with this topology's subnets, ipv6
        setting and private host-local ``dataDir``.  ``portmap_conf=None`` gives a
        bridge + host-local only list."""
        self._require_started()
        assert self.tmpdir
        kw.setdefault("ipv6", self.ipv6)
        kw.setdefault("pod_subnet4", str(self.pod_subnet4))
        kw.setdefault("pod_subnet6", str(self.pod_subnet6))
        return make_conflist(name, portmap_conf, ipam_data_dir=os.path.join(self.tmpdir, "ipam"),
                             portmap_type=portmap_type, **kw)

    def cni_chain_add(self, pod: Netns, container_id: str, *, ifname: str = "eth0",
                      plugins_conf: Mapping[str, Any],
                      capability_args: Mapping[str, Any] | None = None,
                      cni_args: str = "IgnoreUnknown=1",
                      extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """ADD ``pod`` to the conflist ``plugins_conf`` like a runtime (libcni): every
        plugin in order, each exec'ed inside the host namespace with
        ``CNI_NETNS=pod.path``; ``capability_args`` (e.g. ``{"portMappings":
        [port_mapping(8080, 80)]}``) become ``runtimeConfig`` of plugins declaring
        the capability.  Returns the final result (also cached for DEL/CHECK) and
        sets ``pod.ip4``/``pod.ip6``.  Raises :class:`CNIError` with the failing
        plugin's stdout/stderr/stdin.  No automatic DEL after a failed ADD (libcni
        does not; runtimes do) — call :meth:`cni_chain_del` if you want that."""
        self._require_started()
        self._conflists[(container_id, ifname)] = dict(plugins_conf)
        result = self.cni.add(plugins_conf, container_id=container_id, netns=pod.path,
                              ifname=ifname, capability_args=capability_args,
                              cni_args=cni_args, extra_env=extra_env)
        pod.ip4, pod.ip6 = pod_ips(result, pod, ifname)
        return result

    _FROM_ADD: Any = object()  # sentinel: reuse what the ADD had

    def cni_chain_del(self, pod: Netns, container_id: str, *, ifname: str = "eth0",
                      plugins_conf: Mapping[str, Any] | None = None,
                      capability_args: Any = _FROM_ADD,
                      cni_args: str = "IgnoreUnknown=1",
                      extra_env: Mapping[str, str] | None = None) -> None:
        """DEL in reverse order, ``prevResult`` = cached ADD result.  ``plugins_conf``
        and ``capability_args`` default to those of the ADD (a runtime passes the
        same port mappings again)."""
        conf, caps = self._prev(container_id, ifname, plugins_conf, capability_args)
        self.cni.delete(conf, container_id=container_id, netns=pod.path, ifname=ifname,
                        capability_args=caps, cni_args=cni_args, extra_env=extra_env)

    def cni_chain_check(self, pod: Netns, container_id: str, *, ifname: str = "eth0",
                        plugins_conf: Mapping[str, Any] | None = None,
                        capability_args: Any = _FROM_ADD,
                        cni_args: str = "IgnoreUnknown=1",
                        extra_env: Mapping[str, str] | None = None) -> None:
        """CHECK in order, ``prevResult`` = cached ADD result; raises CNIError."""
        conf, caps = self._prev(container_id, ifname, plugins_conf, capability_args)
        self.cni.check(conf, container_id=container_id, netns=pod.path, ifname=ifname,
                       capability_args=caps, cni_args=cni_args, extra_env=extra_env)

    def cni_result(self, container_id: str, ifname: str = "eth0",
                   plugins_conf: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The cached final ADD result (None after DEL / before ADD)."""
        conf = plugins_conf or self._conflists.get((container_id, ifname))
        entry = self.cni.cached(conf, container_id, ifname) if conf else None
        return entry["result"] if entry else None

    def _prev(self, container_id: str, ifname: str, conf: Any, caps: Any):
        self._require_started()
        conf = conf or self._conflists.get((container_id, ifname))
        if conf is None:
            raise ValueError(f"no conflist given and no ADD seen for {container_id}/{ifname}")
        if caps is self._FROM_ADD:
            entry = self.cni.cached(conf, container_id, ifname)
            caps = entry["capability_args"] if entry else None
        return conf, caps

    def add_pod_manual(self, role: str = "pod", *, ip4: str | None = None,
                       ip6: str | None = None, bridge: str = "cni0") -> Netns:
        """A pod without CNI: a veth from ``bridge`` (created here with the gateway
        addresses, the way the bridge plugin would, if missing) into a new namespace,
        hairpin on.  Addresses default to the top of the pod subnets (.254, .253, ...
        / ::fffe ...) so they do not collide with host-local, which allocates from
        the bottom.  Sets ``pod.ip4``/``pod.ip6``."""
        self._require_started()
        self._manual += 1
        n = self._manual
        net4, net6 = self.pod_subnet4, self.pod_subnet6
        gw4, gw6 = net4.network_address + 1, net6.network_address + 1
        ip4 = ip4 or str(net4.broadcast_address - n)
        if self.ipv6:
            ip6 = ip6 or str(net6.broadcast_address - n)
        h = self.host
        if h.ip("link", "show", bridge, check=False).returncode != 0:
            h.ip("link", "add", bridge, "type", "bridge")
            h.ip("addr", "add", f"{gw4}/{net4.prefixlen}", "dev", bridge)
            if self.ipv6:
                h.ip("addr", "add", f"{gw6}/{net6.prefixlen}", "dev", bridge, "nodad")
            h.ip("link", "set", bridge, "up")
        pod = self.add_netns(role)
        veth = f"vm{self.suffix[:4]}{n}"[:15]
        h.ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod.name)
        h.ip("link", "set", veth, "master", bridge)
        h.ip("link", "set", veth, "type", "bridge_slave", "hairpin", "on")
        h.ip("link", "set", veth, "up")
        pod.ip("addr", "add", f"{ip4}/{net4.prefixlen}", "dev", "eth0")
        if self.ipv6 and ip6:
            pod.ip("addr", "add", f"{ip6}/{net6.prefixlen}", "dev", "eth0", "nodad")
        pod.ip("link", "set", "eth0", "up")
        pod.ip("route", "add", "default", "via", str(gw4))
        if self.ipv6:
            pod.ip("-6", "route", "add", "default", "via", str(gw6))
        pod.ip4, pod.ip6 = ip4, (ip6 if self.ipv6 else None)
        return pod

    def _require_started(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError("use the topology inside `with Topology() as t:` (or call start())")

    def __repr__(self) -> str:
        names = [ns.name for ns in self.namespaces()]
        return f"Topology(prefix={self.prefix!r}, suffix={self.suffix!r}, namespaces={names})"
