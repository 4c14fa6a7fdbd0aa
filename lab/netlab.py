"""The LVS-DR lab topology: a LAN bridge, a client, a director and real servers, each a netns.

::

    client 198.51.100.10 ---+
    lb1    198.51.100.2  ---+  br0 (in its own "lan" namespace)      optional br1 (203.0.113.0/24)
      + VIP 198.51.100.100  |                                         for a real server's 2nd NIC
    rs1    198.51.100.11 ---+
    rs2    198.51.100.12 ---+

Every host has ``eth0`` with MAC ``02:00:00:00:00:<last octet in hex>`` (``eth1`` on the second
LAN: ``02:00:00:00:01:<last octet>``), so a MAC on the wire names its host. The director holds
the VIP on its LAN interface; this kernel has no IPVS, so :meth:`Lab.director_standin` forwards
client->VIP frames to the real servers with an nftables netdev ingress rule, the way IPVS-DR does
(same IP packet, the director's own MAC as source, a real server's MAC as destination).

Nothing here touches the calling process's namespace: every change goes through ``ip -n NS``,
``ip netns exec NS`` or a child forked into the namespace (:meth:`lab.netns.Netns.call`).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lab import probes
from lab.netns import Netns

REPO = Path(__file__).resolve().parent.parent
LAN = ipaddress.ip_network("198.51.100.0/24")
LAN2 = ipaddress.ip_network("203.0.113.0/24")
LAN6 = ipaddress.ip_network("2001:db8::/64")
VIP = "198.51.100.100"
VIP6 = "2001:db8::100"
CLIENT = "198.51.100.10"
DIRECTOR = "198.51.100.2"
REALSERVERS = {"rs1": "198.51.100.11", "rs2": "198.51.100.12"}


def mac_for(address: str) -> str:
    """The fixed MAC of the NIC holding ``address``: 02:00:00:00:<lan>:<last octet>."""
    addr = ipaddress.ip_address(address)
    lan = 0 if addr in LAN else 1
    return f"02:00:00:00:{lan:02x}:{int(addr) & 0xFF:02x}"


@dataclass
class Nic:
    name: str
    mac: str
    address: str
    prefixlen: int
    bridge: str
    address6: str | None = None


@dataclass
class Host:
    name: str
    role: str  # client | director | realserver | host
    ns: Netns
    nics: dict[str, Nic] = field(default_factory=dict)

    @property
    def mac(self) -> str:
        return self.nics["eth0"].mac

    @property
    def address(self) -> str:
        return self.nics["eth0"].address

    @property
    def netns(self) -> str:
        return self.ns.name

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n NS ...`` (no fork of a shell inside the namespace needed)."""
        proc = subprocess.run(["ip", "-n", self.ns.name, *args], capture_output=True, text=True)
        if check and proc.returncode:
            raise RuntimeError(f"{self.name}: ip {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def sysctl(self, key: str) -> str:
        return self.ns.sysctl(key)

    def arp_sysctls(self) -> dict[str, tuple[int, int]]:
        """{interface: (arp_ignore, arp_announce)} for all, default, lo and every NIC."""
        return self.ns.call(_read_arp_sysctls, ["all", "default", "lo", *self.nics])

    def addresses(self, dev: str) -> list[str]:
        out = json.loads(self.ip("-j", "addr", "show", "dev", dev).stdout or "[]")
        return [f"{a['local']}/{a['prefixlen']}" for link in out for a in link.get("addr_info", [])]


def _read_arp_sysctls(ifaces):
    result = {}
    for iface in ifaces:
        vals = []
        for key in ("arp_ignore", "arp_announce"):
            with open(f"/proc/sys/net/ipv4/conf/{iface}/{key}", encoding="ascii") as fh:
                vals.append(int(fh.read()))
        result[iface] = tuple(vals)
    return result


class Lab:
    """The topology as a context manager; every namespace is removed on every exit path.

    ``realservers`` maps a real server's name (its minion id) to its LAN address.
    ``second_nic`` maps real server names to an address on 203.0.113.0/24 for an ``eth1`` on a
    second bridge that does not face the VIP network. ``extra_hosts`` maps more host names to an
    address on either LAN. ``ipv6`` also gives every eth0 an address in 2001:db8::/64 (rs1:
    2001:db8::11, as in pillar.example) and the director the IPv6 VIP ``vip6``.
    """

    def __init__(self, realservers: dict[str, str] | None = None, *, vip: str = VIP,
                 vip6: str = VIP6,
                 second_nic: dict[str, str] | None = None,
                 extra_hosts: dict[str, str] | None = None, ipv6: bool = True,
                 director_vip: bool = True,
                 python: str = sys.executable, repo: Path = REPO):
        self.vip = vip
        self.vip6 = vip6
        self.realserver_addresses = dict(REALSERVERS if realservers is None else realservers)
        self.second_nic = dict(second_nic or {})
        self.extra_hosts = dict(extra_hosts or {})
        self.ipv6 = ipv6
        # False: the director starts without the VIP (a real director's state adds it)
        self.director_vip = director_vip
        self.python = python
        self.repo = Path(repo)
        self.id = uuid.uuid4().hex[:4]  # several labs in one process must not share a netns name
        self.hosts: dict[str, Host] = {}
        self.lan: Netns | None = None
        self._procs: list[subprocess.Popen] = []
        self._veths = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> "Lab":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build(self) -> None:
        self.lan = Netns(f"{self.id}-lan")
        bridges = ["br0"] + (["br1"] if self._needs_lan2() else [])
        for br in bridges:
            self._ip(self.lan, "link", "add", br, "type", "bridge")
            self._ip(self.lan, "link", "set", br, "up")
        self.add_host("client", CLIENT, role="client")
        self.add_host("lb1", DIRECTOR, role="director")
        for name, address in self.realserver_addresses.items():
            self.add_host(name, address, role="realserver")
            if name in self.second_nic:
                self.add_nic(name, "eth1", self.second_nic[name])
        for name, address in self.extra_hosts.items():
            self.add_host(name, address, role="host")
        if not self.director_vip:
            return
        self.director.ip("addr", "add", f"{self.vip}/{LAN.prefixlen}", "dev", "eth0")
        if self.ipv6:
            self.director.ip("addr", "add", f"{self.vip6}/{LAN6.prefixlen}", "dev", "eth0", "nodad")

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        for host in reversed(list(self.hosts.values())):
            host.ns.delete()
        if self.lan is not None:
            self.lan.delete()

    def _needs_lan2(self) -> bool:
        return bool(self.second_nic) or any(
            ipaddress.ip_address(a) in LAN2 for a in self.extra_hosts.values())

    @staticmethod
    def _ip(ns: Netns, *args: str) -> None:
        proc = subprocess.run(["ip", "-n", ns.name, *args], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{ns.name}: ip {' '.join(args)}: {proc.stderr.strip()}")

    # -- topology -------------------------------------------------------------------------------

    def add_host(self, name: str, address: str, role: str = "host") -> Host:
        host = Host(name=name, role=role, ns=Netns(f"{self.id}-{name}"))
        self.hosts[name] = host
        self.add_nic(name, "eth0", address)
        return host

    def add_nic(self, name: str, ifname: str, address: str) -> Nic:
        host = self.hosts[name]
        addr = ipaddress.ip_address(address)
        net = LAN if addr in LAN else LAN2 if addr in LAN2 else None
        if net is None:
            raise ValueError(f"{address} is on neither lab LAN ({LAN}, {LAN2})")
        bridge = "br0" if net is LAN else "br1"
        self._veths += 1
        peer = f"v{self._veths}-{name}"[:15]
        nic = Nic(ifname, mac_for(address), address, net.prefixlen, bridge)
        self._ip(self.lan, "link", "add", peer, "type", "veth", "peer", "name", ifname,
                 "netns", host.ns.name)
        self._ip(self.lan, "link", "set", peer, "master", bridge, "up")
        host.ip("link", "set", ifname, "address", nic.mac)
        host.ip("addr", "add", f"{address}/{net.prefixlen}", "dev", ifname)
        if self.ipv6 and net is LAN:
            # 198.51.100.11 -> 2001:db8::11, as in pillar.example
            nic.address6 = str(ipaddress.ip_address(f"{LAN6.network_address}{int(addr) & 0xFF}"))
            host.ip("addr", "add", f"{nic.address6}/{LAN6.prefixlen}", "dev", ifname, "nodad")
        host.ip("link", "set", ifname, "up")
        host.nics[ifname] = nic
        return nic

    @property
    def client(self) -> Host:
        return self.hosts["client"]

    @property
    def director(self) -> Host:
        return self.hosts["lb1"]

    @property
    def realservers(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.role == "realserver"]

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def name_of(self, mac: str) -> str:
        """The host owning ``mac`` (``host/ethN`` for a second NIC), else the MAC itself."""
        for host in self.hosts.values():
            for nic in host.nics.values():
                if nic.mac == mac.lower():
                    return host.name if nic.name == "eth0" else f"{host.name}/{nic.name}"
        return mac

    # -- the common broken setup and the director stand-in ---------------------------------------

    def naive_realserver(self, name: str) -> None:
        """VIP /32 on lo with the kernel's default ARP sysctls: the copy-paste setup that races."""
        self.hosts[name].ip("addr", "add", f"{self.vip}/32", "dev", "lo")

    def director_standin(self, ports=(80, 443), realservers: list[str] | None = None) -> str:
        """Load the IPVS-DR stand-in into the director: client->VIP:port frames are re-sent to a
        real server chosen by a hash of the client's address and port (sticky per connection),
        with the director's MAC as source as IPVS does (without it the bridge would learn the
        client's MAC on the director's port and the real server's replies would go astray)."""
        names = realservers or [h.name for h in self.realservers]
        macs = [self.hosts[n].mac for n in names]
        elements = ", ".join(f"{i} : {mac}" for i, mac in enumerate(macs))
        port_set = ", ".join(str(p) for p in ports)
        d = self.director
        rule = " ".join([
            f"ether daddr {d.mac} ip daddr {self.vip} tcp dport {{ {port_set} }} counter",
            f"meta mark set jhash ip saddr . tcp sport mod {len(macs)}",
            f"ether saddr set {d.mac} ether daddr set meta mark map @rs_mac",
            'fwd to "eth0"',
        ])
        ruleset = f"""
table netdev lvsdr {{
  map rs_mac {{ type mark : ether_addr; elements = {{ {elements} }} }}
  chain ingress {{
    type filter hook ingress device "eth0" priority 0; policy accept;
    {rule}
  }}
}}
"""
        d.ns.run("nft", "-f", "-", input=ruleset)
        return ruleset

    # -- probes from the client -----------------------------------------------------------------

    def arp_probe(self, ip: str | None = None, src: str = "client", window: float = 0.3) -> dict:
        return self.hosts[src].ns.call(probes.arp_probe, "eth0", ip or self.vip, window)

    def arp_responders(self, ip: str | None = None, src: str = "client",
                       window: float = 0.3) -> set[str]:
        """Names of the hosts that answer one broadcast who-has for ``ip`` (default: the VIP)."""
        return {self.name_of(m) for m in self.arp_probe(ip, src, window)["macs"]}

    def ndp_responders(self, ip: str | None = None, src: str = "client",
                       window: float = 0.3) -> set[str]:
        """IPv6: names of the hosts that advertise ``ip`` (default: the IPv6 VIP)."""
        host = self.hosts[src]
        res = host.ns.call(probes.ndp_probe, "eth0", ip or self.vip6, window,
                           host.nics["eth0"].address6)
        return {self.name_of(m) for m in res["macs"]}

    def arp_watch(self, ip: str | None = None, src: str = "client") -> "ArpWatch":
        return ArpWatch(self, ip or self.vip, src)

    def probe_cmd(self, *args: str) -> list[str]:
        return [self.python, "-m", "lab.probes", *args]

    def spawn_probe(self, host: str, *args: str, ready_timeout: float = 60.0) -> subprocess.Popen:
        """Start a long-running probe inside ``host`` and wait until it says it is listening."""
        proc = self.hosts[host].ns.popen(*self.probe_cmd(*args), cwd=str(self.repo),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._procs.append(proc)
        deadline = time.monotonic() + ready_timeout
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = proc.stderr.readline()
            if line.strip() == "ready" or not line:
                break
        if line.strip() != "ready":
            proc.kill()
            out, err = proc.communicate()
            raise RuntimeError(f"probe {args} in {host} did not start: {line}{err}{out}")
        return proc

    def finish_probe(self, proc: subprocess.Popen, timeout: float = 10.0,
                     stop: bool = True) -> dict:
        if stop and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc in self._procs:
            self._procs.remove(proc)
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RuntimeError(f"probe exited {proc.returncode} without a result: {err}{out}")

    def own_arp_senders(self, name: str, window: float = 2.0) -> set[str]:
        """Sender IPs in the ARP requests ``name`` sends when it must resolve the client while
        answering from the VIP: flush its neighbour cache, send one UDP datagram bound to the VIP
        to the client, capture on the client. Anything but the real server's own address here
        would overwrite the client's (a router's) cache entry for that address."""
        host = self.hosts[name]
        cap = self.spawn_probe("client", "arp-senders", "eth0", "--mac", host.mac,
                               "--window", str(window), "--count", "1",
                               "--target", self.client.address)
        host.ip("neigh", "flush", "all")
        host.ns.call(probes.udp_send, self.vip, self.client.address, 9)
        return set(self.finish_probe(cap, timeout=window + 5, stop=False)["sender_ips"])

    def neighbour(self, host: str, ip: str) -> str | None:
        """The MAC ``host`` has cached for ``ip`` (None when there is no usable entry)."""
        out = json.loads(self.hosts[host].ip("-j", "neigh", "show", ip).stdout or "[]")
        for entry in out:
            if entry.get("lladdr") and "FAILED" not in entry.get("state", []):
                return entry["lladdr"]
        return None

    def flush_neighbours(self, host: str) -> None:
        self.hosts[host].ip("neigh", "flush", "all")

    # -- TCP through the director ----------------------------------------------------------------

    def start_tcp_servers(self, port: int = 80, names: list[str] | None = None,
                          echo: bool = False) -> None:
        for name in names or [h.name for h in self.realservers]:
            self.spawn_probe(name, "tcp-server", "--port", str(port), "--name", name,
                             *(["--echo"] if echo else []))

    def tcp_request(self, ip: str | None = None, port: int = 80, src: str = "client") -> dict:
        """Connect from ``src`` to ip:port; the result says who answered, with which local
        address, and from which MACs the reply frames came (names resolved)."""
        res = self.hosts[src].ns.call(probes.tcp_client, ip or self.vip, port, "eth0")
        res["sent_to"] = sorted(self.name_of(m) for m in res.get("sent_to_macs", []))
        res["reply_from"] = sorted(self.name_of(m) for m in res.get("reply_from_macs", []))
        return res


class ArpWatch:
    """A continuous ARP probe (who-has every ~2 ms) running while the caller changes something.

    ``with lab.arp_watch() as w: ...`` then ``w.result`` (raw summary) and ``w.responders``
    ({host name: reply count}).
    """

    def __init__(self, lab: Lab, ip: str, src: str):
        self.lab, self.ip, self.src = lab, ip, src
        self.proc: subprocess.Popen | None = None
        self.result: dict | None = None

    def start(self) -> "ArpWatch":
        self.proc = self.lab.spawn_probe(self.src, "arp-watch", "eth0", self.ip,
                                         "--deadline", "300")
        return self

    def stop(self) -> dict:
        if self.result is None and self.proc is not None:
            self.result = self.lab.finish_probe(self.proc)
        return self.result

    def __enter__(self) -> "ArpWatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def responders(self) -> dict[str, int]:
        return {self.lab.name_of(mac): r["count"] for mac, r in self.stop()["replies"].items()}


def _probe_ipvs() -> bool:
    """In a namespace: can the IPVS netlink family be had (the kernel loads ip_vs on demand)?"""
    spec = importlib.util.spec_from_file_location("lab_lvs_director",
                                                  REPO / "_modules" / "lvs_director.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.Genl().close()
    except (module.IPVSNotAvailable, OSError):
        return False
    return True


def ipvs_available() -> bool:
    """Whether this kernel can run a real IPVS director, asked with the project's own netlink
    code in a throwaway namespace."""
    with Netns("ipvs-probe") as ns:
        return ns.call(_probe_ipvs)
