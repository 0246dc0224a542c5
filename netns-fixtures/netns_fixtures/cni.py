"""Run CNI plugin chains the way a runtime does (libcni semantics), inside a namespace.

What libcni does, and so what :class:`CNIRuntime` does:

* ADD: plugins in conflist order.  Each gets its conflist entry with ``name`` and
  ``cniVersion`` of the list injected, ``prevResult`` = the previous plugin's result
  (absent for the first), and ``runtimeConfig`` = the capability args the runtime
  has for the capabilities the entry declares ``true`` (replacing any static
  ``runtimeConfig``; nothing added when none match).  The final result is cached.
* DEL: plugins in *reverse* order, each with ``prevResult`` = the cached final
  result (absent if there is none, e.g. after a failed ADD); stops at the first
  error; the cache entry is dropped only on success.
* CHECK: plugins in order, ``prevResult`` = cached result (needs cniVersion >= 0.4.0).
* Environment: the caller's whole environment plus ``CNI_COMMAND``,
  ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH``.
  stdin is JSON with sorted keys (Go marshals maps sorted).
* Errors: non-zero exit; stdout carries ``{"code", "msg", "details"}``.

Plugins are exec'ed through ``ip netns exec <exec_ns>``, so everything they do
(links, sysctls, nftables, conntrack) happens in that namespace — the topology's
host namespace — never in the caller's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Iterable, Mapping

from .netns import Netns

__all__ = ["CNIError", "CNIRuntime", "make_conflist", "port_mapping"]


class CNIError(RuntimeError):
    """A plugin failed.  Attributes: command, plugin (type), exe, returncode,
    code/msg/details (parsed CNI error, if any), stdout, stderr, stdin (config sent)."""

    def __init__(self, *, command: str, plugin: str, exe: str, returncode: int | None,
                 stdout: str, stderr: str, stdin: str, reason: str = "") -> None:
        self.command, self.plugin, self.exe = command, plugin, exe
        self.returncode, self.stdout, self.stderr, self.stdin = returncode, stdout, stderr, stdin
        self.code: int | None = None
        self.msg = reason
        self.details = ""
        try:
            err = json.loads(stdout)
            if isinstance(err, dict) and "code" in err:
                self.code, self.msg = err.get("code"), err.get("msg", "")
                self.details = err.get("details", "")
        except ValueError:
            pass
        super().__init__(
            f"CNI {command} failed in plugin {plugin!r} ({exe}), exit {returncode}: "
            f"code={self.code} msg={self.msg!r} details={self.details!r}\n"
            f"--- stdout:\n{stdout.strip()}\n--- stderr:\n{stderr.strip()}\n"
            f"--- stdin:\n{stdin}")


def port_mapping(host_port: int, container_port: int, protocol: str = "tcp",
                 host_ip: str | None = None) -> dict[str, Any]:
    """One ``runtimeConfig.portMappings`` entry, as runtimes send it (no ``hostIP``
    unless given)."""
    m: dict[str, Any] = {"hostPort": host_port, "containerPort": container_port,
                         "protocol": protocol}
    if host_ip is not None:
        m["hostIP"] = host_ip
    return m


def make_conflist(name: str, portmap_conf: Mapping[str, Any] | None = None,
                  ipv6: bool = True, *, ipam_data_dir: str,
                  pod_subnet4: str = "10.244.0.0/24", pod_subnet6: str = "fd00:244::/64",
                  bridge: str = "cni0", hairpin: bool = True,
                  portmap_type: str = "portmap", cni_version: str = "1.0.0"
                  ) -> dict[str, Any]:
    """The test conflist: ``bridge`` (isGateway, no ipMasq, hairpinMode) with
    ``host-local`` IPAM storing its state in ``ipam_data_dir`` (required: never
    ``/var/lib/cni``), then — unless ``portmap_conf`` is None — the portmap plugin
    (``type`` = ``portmap_type``, ``capabilities.portMappings``) with the extra
    options in ``portmap_conf`` (e.g. ``{"snat": True}``; ``{}`` for defaults).

    Routes ``0.0.0.0/0`` (and ``::/0``) via the bridge gateway go into the pod so
    that DNATed traffic from outside can be answered.
    """
    ranges: list[list[dict[str, str]]] = [[{"subnet": pod_subnet4}]]
    routes: list[dict[str, str]] = [{"dst": "0.0.0.0/0"}]
    if ipv6:
        ranges.append([{"subnet": pod_subnet6}])
        routes.append({"dst": "::/0"})
    plugins: list[dict[str, Any]] = [{
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": hairpin,
        "ipam": {"type": "host-local", "dataDir": ipam_data_dir,
                 "ranges": ranges, "routes": routes},
    }]
    if portmap_conf is not None:
        plugins.append({"type": portmap_type, "capabilities": {"portMappings": True},
                        **portmap_conf})
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


class CNIRuntime:
    """A minimal libcni: finds plugins, builds their stdin, execs them in ``exec_ns``
    and caches ADD results per (network name, container id, ifname).

    ``plugin_dirs``: searched in order for a binary named like ``type``; joined into
    ``CNI_PATH`` (so ``bridge`` finds ``host-local``).  ``plugin_paths``: explicit
    ``type -> executable`` overrides (e.g. ``{"portmap": "/path/to/nlportmap"}``).
    ``timings`` records ``(command, type, seconds)`` of every exec.
    """

    def __init__(self, exec_ns: Netns, *, plugin_dirs: Iterable[str] = ("/usr/lib/cni",),
                 plugin_paths: Mapping[str, str] | None = None, timeout: float = 30) -> None:
        self.exec_ns = exec_ns
        self.plugin_dirs = list(plugin_dirs)
        self.plugin_paths = dict(plugin_paths or {})
        self.timeout = timeout
        self.cache: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.timings: list[tuple[str, str, float]] = []

    # ---- one plugin
    def find_plugin(self, type_: str) -> str:
        if type_ in self.plugin_paths:
            return self.plugin_paths[type_]
        for d in self.plugin_dirs:
            p = os.path.join(d, type_)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        raise FileNotFoundError(f"CNI plugin {type_!r} not in plugin_paths nor in {self.plugin_dirs}")

    def exec_plugin(self, command: str, conf: Mapping[str, Any], *, container_id: str,
                    netns: str, ifname: str = "eth0", cni_args: str = "IgnoreUnknown=1",
                    extra_env: Mapping[str, str] | None = None,
                    exe: str | None = None, type_: str | None = None
                    ) -> dict[str, Any] | None:
        """Exec one plugin (``conf["type"]``, or ``exe``; ``type_`` only labels
        errors/timings) with ``command`` and ``conf``
        as stdin; return the parsed stdout (None if empty).  Raises :class:`CNIError`.

        Use directly for hand-made configs (e.g. portmap with a synthetic prevResult,
        or ``VERSION``)."""
        type_ = type_ or str(conf.get("type", ""))
        exe = exe or self.find_plugin(type_)
        env = {**os.environ,
               "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": cni_args,
               "CNI_PATH": os.pathsep.join(self.plugin_dirs), **(extra_env or {})}
        stdin = json.dumps(conf, sort_keys=True, separators=(",", ":"))
        t0 = time.perf_counter()
        try:
            cp = subprocess.run(["ip", "netns", "exec", self.exec_ns.name, exe],
                                input=stdin, capture_output=True, text=True, env=env,
                                timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise CNIError(command=command, plugin=type_, exe=exe, returncode=None,
                           stdout=_s(e.stdout), stderr=_s(e.stderr), stdin=stdin,
                           reason=f"timed out after {self.timeout}s") from None
        finally:
            self.timings.append((command, type_, time.perf_counter() - t0))
        if cp.returncode != 0:
            raise CNIError(command=command, plugin=type_, exe=exe, returncode=cp.returncode,
                           stdout=cp.stdout, stderr=cp.stderr, stdin=stdin)
        if not cp.stdout.strip():
            return None
        try:
            return json.loads(cp.stdout)
        except ValueError:
            raise CNIError(command=command, plugin=type_, exe=exe, returncode=0,
                           stdout=cp.stdout, stderr=cp.stderr, stdin=stdin,
                           reason="stdout is not JSON") from None

    def version(self, type_: str) -> dict[str, Any] | None:
        """``VERSION`` exactly as libcni sends it: stdin ``{"cniVersion":"1.0.0"}``,
        ``CNI_NETNS``/``CNI_IFNAME``/``CNI_PATH`` = ``dummy``, empty container ID and
        ``CNI_ARGS``."""
        return self.exec_plugin("VERSION", {"cniVersion": "1.0.0"}, container_id="",
                                netns="dummy", ifname="dummy", cni_args="",
                                extra_env={"CNI_PATH": "dummy"},
                                exe=self.find_plugin(type_), type_=type_)

    # ---- chains
    @staticmethod
    def build_conf(conflist: Mapping[str, Any], plugin: Mapping[str, Any],
                   prev_result: Any, capability_args: Mapping[str, Any] | None
                   ) -> dict[str, Any]:
        """libcni ``buildOneConfig``: inject name, cniVersion, prevResult, runtimeConfig."""
        conf = dict(plugin)
        conf["name"] = conflist["name"]
        conf["cniVersion"] = conflist["cniVersion"]
        if prev_result is not None:
            conf["prevResult"] = prev_result
        rc = {cap: capability_args[cap]
              for cap, on in (plugin.get("capabilities") or {}).items()
              if on and capability_args and cap in capability_args}
        if rc:
            conf["runtimeConfig"] = rc
        return conf

    def _key(self, conflist: Mapping[str, Any], container_id: str, ifname: str):
        return (str(conflist["name"]), container_id, ifname)

    def add(self, conflist: Mapping[str, Any], *, container_id: str, netns: str,
            ifname: str = "eth0", capability_args: Mapping[str, Any] | None = None,
            cni_args: str = "IgnoreUnknown=1", extra_env: Mapping[str, str] | None = None
            ) -> dict[str, Any]:
        """ADD the whole chain; returns (and caches) the final result."""
        result = None
        for plugin in conflist["plugins"]:
            conf = self.build_conf(conflist, plugin, result, capability_args)
            result = self.exec_plugin("ADD", conf, container_id=container_id, netns=netns,
                                      ifname=ifname, cni_args=cni_args, extra_env=extra_env)
            if result is None:
                raise CNIError(command="ADD", plugin=str(plugin.get("type")),
                               exe=self.find_plugin(str(plugin.get("type"))), returncode=0,
                               stdout="", stderr="", stdin=json.dumps(conf),
                               reason="plugin printed no result")
        assert result is not None
        self.cache[self._key(conflist, container_id, ifname)] = {
            "result": result, "netns": netns, "capability_args": capability_args}
        return result

    def cached(self, conflist: Mapping[str, Any], container_id: str,
               ifname: str = "eth0") -> dict[str, Any] | None:
        return self.cache.get(self._key(conflist, container_id, ifname))

    def delete(self, conflist: Mapping[str, Any], *, container_id: str, netns: str,
               ifname: str = "eth0", capability_args: Mapping[str, Any] | None = None,
               cni_args: str = "IgnoreUnknown=1",
               extra_env: Mapping[str, str] | None = None) -> None:
        """DEL the chain in reverse order with the cached result as prevResult."""
        key = self._key(conflist, container_id, ifname)
        entry = self.cache.get(key)
        prev = entry["result"] if entry else None
        if _version_tuple(conflist["cniVersion"]) < (0, 4, 0):
            prev = None
        for plugin in reversed(conflist["plugins"]):
            conf = self.build_conf(conflist, plugin, prev, capability_args)
            self.exec_plugin("DEL", conf, container_id=container_id, netns=netns,
                             ifname=ifname, cni_args=cni_args, extra_env=extra_env)
        self.cache.pop(key, None)

    def check(self, conflist: Mapping[str, Any], *, container_id: str, netns: str,
              ifname: str = "eth0", capability_args: Mapping[str, Any] | None = None,
              cni_args: str = "IgnoreUnknown=1",
              extra_env: Mapping[str, str] | None = None) -> None:
        """CHECK the chain in order with the cached result as prevResult."""
        if _version_tuple(conflist["cniVersion"]) < (0, 4, 0):
            raise ValueError(f"configuration version {conflist['cniVersion']!r} does not support CHECK")
        if conflist.get("disableCheck"):
            return
        entry = self.cache.get(self._key(conflist, container_id, ifname))
        prev = entry["result"] if entry else None
        for plugin in conflist["plugins"]:
            conf = self.build_conf(conflist, plugin, prev, capability_args)
            self.exec_plugin("CHECK", conf, container_id=container_id, netns=netns,
                             ifname=ifname, cni_args=cni_args, extra_env=extra_env)


def _s(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode(errors="replace")
    return x or ""
