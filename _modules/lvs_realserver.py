"""
LVS real servers (direct routing and IP tunnel): hold the VIP locally, never answer ARP for it.

In LVS-DR and LVS-TUN the director and every real server hold the VIP. Only the director may
answer ARP for it. Linux answers ARP for any local address on any interface unless told
otherwise, and it decides with ``max(conf/all, conf/<ingress NIC>)`` for ``arp_ignore`` and
``arp_announce``: ``conf/lo/*`` does nothing for a request arriving on ``eth0``.

This module works in four steps, each a function of its own:

- model: arguments or pillar become a validated :class:`Spec` (errors name the key);
- observe: one read of the kernel (links and addresses by netlink dump, ``/proc/sys`` directly);
- plan: a pure function ``(spec, observed, record) -> Plan`` that orders the actions safely:
  ARP suppression before any VIP is added; VIPs removed before suppression is relaxed, and
  relaxed only when no remaining managed VIP needs it;
- apply: the actions run in that order, address changes batched in one netlink round trip;
  the first failure stops the run and is reported with what was and was not applied.

``test=True`` returns the plan's changes without touching anything; a real run reports the same.

Where the module keeps things (minion config, all optional):

.. code-block:: yaml

    lvs_realserver:
      state_file: /var/lib/saltext-lvs/realserver.json      # what this module manages
      sysctl_file: /etc/sysctl.d/90-lvs-realserver.conf     # ARP sysctls at boot
      vip_file: /etc/saltext-lvs/realserver-vips.batch      # VIPs at boot (ip -batch)
      unit_file: /etc/systemd/system/lvs-realserver.service # applies both, sysctls first
      nft_file: <vip_file's folder>/realserver.nft          # nftables methods: rules at boot
      arptables_file: <vip_file's folder>/realserver-arptables.sh  # arptables method at boot
      arptables_bin: arptables                              # or arptables-legacy, arptables-nft

``arp_method`` (pillar ``lvs:realserver:arp_method``, or the ``arp_method`` argument) chooses how
ARP is kept quiet: ``sysctl`` (``arp_ignore``/``arp_announce`` on the ARP-facing NICs),
``nftables`` (a table ``arp saltext_lvs`` of its own: requests for a VIP dropped, a VIP sender
rewritten to the interface's address), ``arptables`` (the same two rules in chains of its own) or
``redirect`` (no VIP on the host at all: traffic to VIP:port is redirected to the host by
nftables nat, or iptables where the host has no nft). Switching converges without a window: the
new method is in force before the old one is removed.

Netlink is spoken directly (stdlib ``socket``) rather than through pyroute2 here: dumping and
parsing 1000 addresses took 60 ms with pyroute2 0.9.7 and 5 ms this way, and the no-op check
of 1000 VIPs has to stay under 50 ms. pyroute2 remains the library for IPVS (``lvs_director``).

:depends: Linux 2.6.4+ (arp_ignore, arp_announce), iproute2 and procps at boot (persistence)
:platform: Linux
"""

import errno
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from dataclasses import field

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "lvs_realserver"

PROC_CONF = "/proc/sys/net/ipv4/conf"
ARP_KEYS = ("arp_ignore", "arp_announce")
# read with them: TUN real servers need rp_filter effectively 0 or 2 on the tunnel device
CONF_KEYS = (*ARP_KEYS, "rp_filter")
# Effective arp_ignore values that keep an interface quiet about a VIP held on lo or tunl0.
# 3 does not: it still answers for scope-global addresses; 4-7 are "reply" in arp.c.
QUIET_ARP_IGNORE = (1, 2, 8)
WANT_ARP_IGNORE = 1
WANT_ARP_ANNOUNCE = 2
DEFAULT_PATHS = {
    "state_file": "/var/lib/saltext-lvs/realserver.json",
    "sysctl_file": "/etc/sysctl.d/90-lvs-realserver.conf",
    "vip_file": "/etc/saltext-lvs/realserver-vips.batch",
    "unit_file": "/etc/systemd/system/lvs-realserver.service",
    # None: next to vip_file (so a config that moves vip_file moves these too)
    "nft_file": None,
    "arptables_file": None,
    "arptables_bin": "arptables",
    "iptables_file": None,
    "ip6tables_file": None,
    "iptables_bin": "iptables",
    # redirect: nftables nat, or iptables where the host has no nft (auto), or forced
    "redirect_backend": "auto",
}
DERIVED_FILES = {
    "nft_file": "realserver.nft",
    "arptables_file": "realserver-arptables.sh",
    "iptables_file": "realserver-redirect.iptables",
    "ip6tables_file": "realserver-redirect.ip6tables",
}
REDIRECT_BACKENDS = ("auto", "nftables", "iptables")
SYSCTL_BIN = "/sbin/sysctl"
IP_BIN = "/sbin/ip"
NFT_BIN = "/usr/sbin/nft"
SH_BIN = "/bin/sh"
ARP_METHODS = ("sysctl", "nftables", "arptables", "redirect")


def __virtual__():
    try:
        kernel = __grains__.get("kernel")  # pylint: disable=undefined-variable
    except NameError:
        kernel = None
    if kernel not in (None, "Linux"):
        return False, f"lvs_realserver: this module is for Linux real servers (kernel {kernel})"
    if not sys.platform.startswith("linux"):
        return False, "lvs_realserver: this version supports Linux real servers only"
    if not os.path.exists(f"{PROC_CONF}/all/arp_ignore"):
        return False, "lvs_realserver: the kernel has no arp_ignore sysctl (needs Linux 2.6.4+)"
    return __virtualname__


# --------------------------------------------------------------------------------------------
# Netlink (rtnetlink) in the standard library: dumps and batched address changes
# --------------------------------------------------------------------------------------------

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_FLAGS = 8
IFA_CACHEINFO = 6
IFA_F_NODAD = 0x02
IFA_F_DEPRECATED = 0x20
NLM_F_REPLACE = 0x100
INFINITY_LIFE_TIME = 0xFFFFFFFF
IFLA_IFNAME = 3
IFLA_MTU = 4
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80
ARPHRD_ETHER = 1
ARPHRD_IEEE802 = 6
ARPHRD_INFINIBAND = 32
ARP_LINK_TYPES = (ARPHRD_ETHER, ARPHRD_IEEE802, ARPHRD_INFINIBAND)
_HDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTA = struct.Struct("=HH")
BATCH = 256  # requests per send; keeps acks well inside the socket buffer


def _align(n):
    return (n + 3) & ~3


def _rta(kind, payload):
    length = _RTA.size + len(payload)
    return _RTA.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def _attrs(data, offset):
    attrs = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = _RTA.unpack_from(data, offset)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += _align(length)
    return attrs


class Netlink:
    """A NETLINK_ROUTE socket for dumps and for batches of address requests."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _messages(self):
        while True:
            data = self.sock.recv(1 << 17)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, _flags, seq, _pid = _HDR.unpack_from(data, offset)
                yield kind, seq, data[offset + _HDR.size : offset + length]
                offset += _align(length)

    def dump(self, kind, payload):
        self.seq += 1
        seq = self.seq
        self.sock.send(
            _HDR.pack(_HDR.size + len(payload), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            + payload
        )
        out = []
        for mtype, mseq, body in self._messages():
            if mseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                code = -struct.unpack_from("=i", body)[0]
                raise OSError(code, f"netlink dump {kind}: {os.strerror(code)}")
            out.append(body)

    def batch(self, requests):
        """Send ``(kind, flags, payload)`` requests; return the errno of each (0 = done).

        Requests go out in chunks of :data:`BATCH`; every request asks for an ack so each one
        has its own result and a failure in the middle is reported exactly.
        """
        results = []
        for start in range(0, len(requests), BATCH):
            chunk = requests[start : start + BATCH]
            buf = bytearray()
            first = self.seq + 1
            for kind, flags, payload in chunk:
                self.seq += 1
                buf += _HDR.pack(
                    _HDR.size + len(payload), kind, flags | NLM_F_REQUEST | NLM_F_ACK, self.seq, 0
                )
                buf += payload
            self.sock.send(bytes(buf))
            codes = {}
            for mtype, mseq, body in self._messages():
                if mtype == NLMSG_ERROR and first <= mseq <= self.seq:
                    codes[mseq] = -struct.unpack_from("=i", body)[0]
                    if len(codes) == len(chunk):
                        break
            results.extend(codes[s] for s in range(first, self.seq + 1))
        return results


def addr_request(kind, addr, prefixlen, index, label=None, replace=False):
    """The rtnetlink payload that adds (RTM_NEWADDR) or deletes (RTM_DELADDR) one address.

    An IPv6 VIP is added with ``nodad`` and a preferred lifetime of 0 (valid forever): a
    deprecated address still accepts connections, but source address selection (RFC 6724 rule
    3) never picks it for new outgoing traffic while another address of the same scope exists,
    so the real server's own connections do not leave from the VIP. ``replace`` updates the
    lifetimes of an address already there.
    """
    packed = addr.packed
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    flags = IFA_F_NODAD if addr.version == 6 else 0
    payload = _IFADDRMSG.pack(family, prefixlen, flags, 0, index)
    payload += _rta(IFA_LOCAL, packed) + _rta(IFA_ADDRESS, packed)
    if label and addr.version == 4 and kind == RTM_NEWADDR:
        payload += _rta(IFA_LABEL, label.encode() + b"\0")
    if addr.version == 6 and kind == RTM_NEWADDR:
        payload += _rta(IFA_CACHEINFO, struct.pack("=IIII", 0, INFINITY_LIFE_TIME, 0, 0))
    if kind != RTM_NEWADDR:
        nl_flags = 0
    elif replace:
        nl_flags = NLM_F_REPLACE
    else:
        nl_flags = NLM_F_CREATE | NLM_F_EXCL
    return kind, nl_flags, payload


def link_up_request(index):
    """The rtnetlink payload that sets IFF_UP on a link (``ip link set DEV up``)."""
    return RTM_NEWLINK, 0, _IFINFOMSG.pack(0, 0, index, IFF_UP, IFF_UP)


# --------------------------------------------------------------------------------------------
# Observe
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    flags: int
    type: int
    mtu: int = 0

    @property
    def arp_capable(self):
        """True for links that take part in ARP (Ethernet-like, not loopback, not NOARP)."""
        return (
            self.type in ARP_LINK_TYPES
            and not self.flags & (IFF_LOOPBACK | IFF_NOARP)
        )


@dataclass(frozen=True)
class Addr:
    address: object  # ipaddress.IPv4Address | IPv6Address
    prefixlen: int
    index: int
    label: str = None
    flags: int = 0  # IFA_F_*: IFA_F_DEPRECATED for an IPv6 VIP guarded against source selection

    @property
    def deprecated(self):
        return bool(self.flags & IFA_F_DEPRECATED)

    def network(self):
        return ipaddress.ip_network(f"{self.address}/{self.prefixlen}", strict=False)


@dataclass
class Observed:
    """One reading of the kernel: links, addresses, and the ARP sysctls of every conf dir."""

    links: dict  # name -> Link
    addrs: list  # [Addr]
    conf: dict  # conf dir name (all, default, lo, eth0...) -> {"arp_ignore": int, ...}
    # the rule methods' view of netfilter (observe_rules); empty: nothing of ours, tools there
    rules: dict = field(default_factory=dict)
    legacy: dict = field(default_factory=dict)  # hidden sysctl, noarp module (audit only)

    def link_by_index(self, index):
        return _lookups(self)[2].get(index)

    def addrs_of(self, address):
        return list(_lookups(self)[1].get(address, ()))

    def effective(self, iface, key):
        """The value the kernel uses on ``iface``: max(conf/all, conf/<iface>)."""
        return max(self.conf["all"].get(key, 0), self.conf.get(iface, {}).get(key, 0))


def _lookups(observed):
    """Lookups built once per reading of ``observed`` (anything with ``links`` and ``addrs``).

    A plan asks per VIP; scanning every address for each of 1000 VIPs cost 300-470 ms of a
    1000-VIP no-op (benchmarks/realserver.py). Rebuilt when the links or the addresses are
    replaced, grow or shrink (tests edit them in place); the key is cheap because it is
    checked on every call (a tuple of every link's id cost 2 us x 6000 calls).
    """
    links, addrs = observed.links, observed.addrs
    key = (id(links), len(links), id(addrs), len(addrs), id(addrs[-1]) if addrs else None)
    cache = getattr(observed, "_lookups_cache", None)
    if cache is None or cache[0] != key:
        by_address = {}
        for a in observed.addrs:
            by_address.setdefault(a.address, []).append(a)
        by_index = {link.index: link for link in observed.links.values()}
        nets, with_v4 = [], set()
        for a in observed.addrs:
            link = by_index.get(a.index)
            if link is None or not link.arp_capable or a.address.version != 4:
                continue
            with_v4.add(link.name)
            if a.prefixlen < 32:
                nets.append((a.network(), link.name))
        cache = (key, by_address, by_index, nets, sorted(with_v4))
        try:
            observed._lookups_cache = cache
        except AttributeError:  # a read-only view: compute each time
            pass
    return cache


def _read_int(path):
    with open(path, encoding="ascii") as fh:
        return int(fh.read())


def read_arp_conf(names):
    conf = {}
    for name in names:
        values = {}
        for key in CONF_KEYS:
            try:
                values[key] = _read_int(f"{PROC_CONF}/{name}/{key}")
            except FileNotFoundError:
                if key in ARP_KEYS:
                    values = None
                    break
        if values is not None:
            conf[name] = values
    return conf


def observe():
    """Read links and addresses (one netlink dump each) and the ARP sysctls from /proc/sys."""
    with Netlink() as nl:
        links = {}
        for body in nl.dump(RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0)):
            _fam, ltype, index, flags, _change = _IFINFOMSG.unpack_from(body)
            attrs = _attrs(body, _IFINFOMSG.size)
            name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
            mtu = attrs.get(IFLA_MTU)
            links[name] = Link(index, name, flags, ltype,
                               struct.unpack_from("=I", mtu)[0] if mtu and len(mtu) >= 4 else 0)
        addrs = []
        for body in nl.dump(RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0)):
            family, prefixlen, flags, _scope, index = _IFADDRMSG.unpack_from(body)
            attrs = _attrs(body, _IFADDRMSG.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) >= 4:
                flags = struct.unpack_from("=I", attrs[IFA_FLAGS])[0]
            label = attrs.get(IFA_LABEL)
            addrs.append(
                Addr(
                    ipaddress.ip_address(raw),
                    prefixlen,
                    index,
                    label.rstrip(b"\0").decode() if label else None,
                    flags,
                )
            )
    conf = read_arp_conf(["all", "default", *links])
    return Observed(links=links, addrs=addrs, conf=conf)


# --------------------------------------------------------------------------------------------
# Rule methods: nftables (arp family, nat for redirect) and arptables, observed and rendered
# --------------------------------------------------------------------------------------------

NFT_TABLE = "saltext_lvs"
TAG = "saltext-lvs"
ARP_TABLE = f"table arp {NFT_TABLE}"
REDIRECT_FAMILIES = {4: "ip", 6: "ip6"}


def _nft_bin():
    return NFT_BIN if os.access(NFT_BIN, os.X_OK) else shutil.which("nft")


def _nft_json(*args):
    """``nft -j ARGS`` -> (list of objects, None) or (None, error text)."""
    binary = _nft_bin()
    if binary is None:
        return None, "the nft command is not installed (package nftables)"
    proc = subprocess.run([binary, "-j", *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        return None, proc.stderr.strip() or f"nft exited {proc.returncode}"
    try:
        return json.loads(proc.stdout or "{}").get("nftables", []), None
    except ValueError as err:
        return None, f"nft -j printed no JSON: {err}"


def _elements(values):
    out = []
    for value in values or []:
        if isinstance(value, dict):  # {"elem": {"val": ..., "counter": ...}}
            value = value.get("elem", {}).get("val", value.get("val"))
        if isinstance(value, str):
            out.append(value)
    return out


def _match(expr, protocol=None, field_name=None, meta=None):
    """The right-hand side of an ``==`` match on a payload field or a meta key, else None."""
    m = expr.get("match")
    if not m or m.get("op") not in ("==", "in"):
        return None
    left = m.get("left", {})
    if meta is not None:
        return m["right"] if left.get("meta", {}).get("key") == meta else None
    payload = left.get("payload", {})
    if payload.get("protocol") == protocol and payload.get("field") == field_name:
        return m["right"]
    return None


def arp_rules_model(vips, rewrite):
    """What the arp-family rules hold: VIPs (no reply, never a sender) and the sender address
    each interface puts in their place. None when there is nothing to protect."""
    vips = sorted({str(v) for v in vips}, key=ipaddress.ip_address)
    if not vips:
        return None
    return {"vips": vips, "rewrite": dict(sorted(rewrite.items()))}


def render_arp_table(model):
    """The whole ``table arp saltext_lvs`` (nft syntax)."""
    lines = [
        f"table arp {NFT_TABLE} {{",
        f"  set vips {{ type ipv4_addr; elements = {{ {', '.join(model['vips'])} }}; }}",
        "  chain input {",
        "    type filter hook input priority 0; policy accept;",
        f'    arp operation request arp daddr ip @vips drop comment "{TAG}: no reply for a VIP"',
        "  }",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
    ]
    for iface, address in model["rewrite"].items():
        lines.append(
            f'    oifname "{iface}" arp saddr ip @vips arp saddr ip set {address} '
            f'comment "{TAG}: sender {iface}"'
        )
    lines += [
        f'    arp saddr ip @vips drop comment "{TAG}: never a VIP as sender"',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def parse_arp_table(objects):
    """``nft -j list table arp saltext_lvs`` -> the model it enforces, or None (no table).

    Anything that is not exactly what :func:`render_arp_table` writes marks the model
    ``incomplete`` (it then never equals a desired model, so the next run rewrites the table).
    """
    if objects is None:
        return None
    vips, rewrite, drop_in, drop_out, odd = [], {}, False, False, False
    for obj in objects:
        if "set" in obj and obj["set"].get("name") == "vips":
            vips = _elements(obj["set"].get("elem"))
        rule = obj.get("rule")
        if not rule:
            continue
        exprs = rule.get("expr", [])
        verdict_drop = any("drop" in e for e in exprs)
        if rule.get("chain") == "input":
            target = next((_match(e, "arp", "daddr ip") for e in exprs
                           if _match(e, "arp", "daddr ip")), None)
            if target == "@vips" and verdict_drop:
                drop_in = True
            else:
                odd = True
        elif rule.get("chain") == "output":
            sender = next((_match(e, "arp", "saddr ip") for e in exprs
                           if _match(e, "arp", "saddr ip")), None)
            iface = next((_match(e, meta="oifname") for e in exprs if _match(e, meta="oifname")),
                         None)
            mangled = next((e["mangle"].get("value") for e in exprs if "mangle" in e), None)
            if sender == "@vips" and iface and mangled:
                rewrite[iface] = mangled
            elif sender == "@vips" and verdict_drop and not iface:
                drop_out = True
            else:
                odd = True
        else:
            odd = True
    model = arp_rules_model(vips, rewrite) or {"vips": [], "rewrite": rewrite}
    if odd or not drop_in or not drop_out or not vips:
        model["incomplete"] = True
    return model


def redirect_model(vips, version):
    """{VIP: ["tcp/80", ...]} for the VIPs of one address family, None when there are none."""
    out = {}
    for vip in vips:
        if vip.address.version == version and vip.ports:
            ports = out.setdefault(str(vip.address), set())
            ports.update(f"{proto}/{port}" for proto, port in vip.ports)
    if not out:
        return None
    return {addr: _sorted_ports(ports) for addr, ports in sorted(out.items())}


def _sorted_ports(ports):
    return sorted(set(ports), key=lambda p: (p.split("/")[0], int(p.split("/")[1])))


def render_redirect_table(model, version):
    family = REDIRECT_FAMILIES[version]
    lines = [
        f"table {family} {NFT_TABLE} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority -100; policy accept;",
    ]
    for addr, ports in model.items():
        by_proto = {}
        for item in ports:
            proto, port = item.split("/")
            by_proto.setdefault(proto, []).append(port)
        for proto, plist in sorted(by_proto.items()):
            lines.append(
                f"    {family} daddr {addr} {proto} dport {{ {', '.join(plist)} }} redirect "
                f'comment "{TAG}: redirect {addr} {proto}"'
            )
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def parse_redirect_table(objects, version):
    if objects is None:
        return None
    family = REDIRECT_FAMILIES[version]
    out, odd = {}, False
    for obj in objects:
        rule = obj.get("rule")
        if not rule:
            continue
        exprs = rule.get("expr", [])
        addr = next((_match(e, family, "daddr") for e in exprs if _match(e, family, "daddr")),
                    None)
        proto, ports = None, None
        for e in exprs:
            for candidate in PORT_PROTOCOLS:
                right = _match(e, candidate, "dport")
                if right is not None:
                    proto, ports = candidate, right
        if isinstance(ports, dict):
            ports = ports.get("set", [])
        if isinstance(ports, int):
            ports = [ports]
        if not (addr and proto and ports and any("redirect" in e for e in exprs)):
            odd = True
            continue
        out.setdefault(str(addr), set()).update(f"{proto}/{p}" for p in ports
                                                if isinstance(p, int))
    model = {a: _sorted_ports(p) for a, p in sorted(out.items())}
    if odd or not model:
        model["incomplete"] = True
    return model


def nft_table_script(family, body):
    """One nft transaction that leaves exactly ``body`` as table ``family saltext_lvs`` (or no
    such table when ``body`` is None): declare, delete, re-create, all or nothing."""
    text = f"table {family} {NFT_TABLE}\ndelete table {family} {NFT_TABLE}\n"
    return text + (body or "")


IPT_CHAIN = "SALTEXT_LVS"
IPT_FAMILIES = {4: "ip", 6: "ip6"}


def iptables_binary(base, version):
    """``iptables``/``iptables-legacy``/``iptables-nft`` for IPv4, the ip6tables twin for IPv6."""
    return base if version == 4 else base.replace("iptables", "ip6tables", 1)


def _which(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def parse_iptables_nat(text, version):
    """``iptables-save -t nat`` -> our redirect model ({VIP: ["tcp/80"]}), None when our chain
    is not there; ``incomplete`` when the jump from PREROUTING is missing or a rule is odd."""
    declared, jumps, out, odd = False, 0, {}, False
    for line in (text or "").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == f":{IPT_CHAIN}":
            declared = True
        elif parts[:2] == ["-A", "PREROUTING"] and parts[2:] == ["-j", IPT_CHAIN]:
            jumps += 1
        elif parts[:2] == ["-A", IPT_CHAIN]:
            dst, proto, port = _opt(parts, "-d"), _opt(parts, "-p"), _opt(parts, "--dport")
            if not (dst and proto in PORT_PROTOCOLS and port and port.isdigit()
                    and _opt(parts, "-j") == "REDIRECT"):
                odd = True
                continue
            addr = str(ipaddress.ip_interface(dst).ip)
            out.setdefault(addr, set()).add(f"{proto}/{port}")
    if not declared and not jumps:
        return None
    model = {a: _sorted_ports(p) for a, p in sorted(out.items())}
    if odd or not jumps or not model:
        model["incomplete"] = True
    return model


def render_iptables_restore(model, version, jump_present):
    """An ``iptables-restore --noflush`` script: declaring our chain flushes it, the whole nat
    table is committed at once (legacy: one table replace; nft: one transaction)."""
    full = 32 if version == 4 else 128
    lines = ["*nat", f":{IPT_CHAIN} - [0:0]"]
    if model is not None:
        for addr, ports in model.items():
            if addr == "incomplete":
                continue
            for item in ports:
                proto, port = item.split("/")
                lines.append(f"-A {IPT_CHAIN} -d {addr}/{full} -p {proto} -m {proto} "
                             f"--dport {port} -j REDIRECT")
        if not jump_present:
            lines.append(f"-I PREROUTING 1 -j {IPT_CHAIN}")
    else:
        if jump_present:
            lines.append(f"-D PREROUTING -j {IPT_CHAIN}")
        lines.append(f"-X {IPT_CHAIN}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def observe_iptables(base):
    """Our nat chain in iptables and ip6tables (``<binary>-save -t nat``)."""
    out = {"binary": base, "available": False}
    for version, family in IPT_FAMILIES.items():
        save = _which(f"{iptables_binary(base, version)}-save")
        if save is None:
            out[family] = None
            continue
        proc = subprocess.run([save, "-t", "nat"], capture_output=True, text=True, check=False)
        if proc.returncode:
            out[family] = None
            out.setdefault("error", proc.stderr.strip())
            continue
        out["available"] = out["available"] or version == 4
        out[family] = parse_iptables_nat(proc.stdout, version)
        out.setdefault("jumps", {})[family] = f"-A PREROUTING -j {IPT_CHAIN}" in proc.stdout
    return out


def observe_rules(want_nft=True, want_arptables=False, arptables_bin="arptables",
                  want_iptables=False, iptables_bin="iptables"):
    """Read our own netfilter tables (and chains): what the rule methods need to plan."""
    rules = {"nft": False}
    if want_iptables:
        rules["iptables"] = observe_iptables(iptables_bin)
    if want_nft:
        tables, error = _nft_json("list", "tables")
        rules["nft"] = tables is not None
        rules["nft_error"] = error
        present = {(t["table"]["family"], t["table"]["name"]) for t in tables or [] if "table" in t}
        for family in ("arp", "ip", "ip6"):
            objects = None
            if (family, NFT_TABLE) in present:
                objects, error = _nft_json("list", "table", family, NFT_TABLE)
                if objects is None:
                    raise CommandExecutionError(f"nft list table {family} {NFT_TABLE}: {error}")
            if family == "arp":
                rules["arp"] = parse_arp_table(objects)
            else:
                version = 4 if family == "ip" else 6
                rules.setdefault("redirect", {})[family] = parse_redirect_table(objects, version)
    if want_arptables:
        rules["arptables"] = observe_arptables(arptables_bin)
    return rules


ARPT_CHAINS = {"in": "LVS_RS_IN_", "out": "LVS_RS_OUT_"}
ARPT_HOOKS = {"in": "INPUT", "out": "OUTPUT"}


def arptables_flavour(binary):
    """``legacy`` (arptables 0.0.x, its own kernel table) or ``nft`` (arptables-nft, rules in
    nftables' ``table arp filter``), from ``arptables -V``; None when it cannot run."""
    try:
        proc = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    text = proc.stdout + proc.stderr
    if "arptables" not in text:
        return None
    return "nft" if "nf_tables" in text else "legacy"


def parse_arptables_save(text):
    """``arptables-save`` -> {"chains": set, "jumps": {hook: [chain...]}, "rules": {chain: [argv]}}."""
    chains, jumps, rules = set(), {"INPUT": [], "OUTPUT": []}, {}
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith(":"):
            chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            parts = line.split()
            chain, rest = parts[1], parts[2:]
            rules.setdefault(chain, []).append(rest)
            if chain in jumps and rest[:1] == ["-j"] and len(rest) == 2:
                jumps[chain].append(rest[1])
    return {"chains": chains, "jumps": jumps, "rules": rules}


def _opt(argv, name):
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def arptables_model(saved):
    """Our generation (A or B) in force and the model its chains enforce (like the nft one)."""
    gens = [c[len(ARPT_CHAINS["in"]):] for c in saved["jumps"]["INPUT"]
            if c.startswith(ARPT_CHAINS["in"])]
    ours = sorted(c for c in saved["chains"] if c.startswith(("LVS_RS_IN_", "LVS_RS_OUT_")))
    if not gens and not ours:
        return None, None, ours
    gen = gens[0] if gens else None
    vips, rewrite, drop_out, odd = [], {}, set(), len(gens) != 1
    if gen and f"{ARPT_CHAINS['out']}{gen}" not in saved["jumps"]["OUTPUT"]:
        odd = True
    for argv in saved["rules"].get(f"{ARPT_CHAINS['in']}{gen}", []):
        dst = _opt(argv, "-d")
        if _opt(argv, "-j") == "DROP" and dst and _opt(argv, "--opcode") in ("1", "Request"):
            vips.append(dst.split("/")[0])
        else:
            odd = True
    for argv in saved["rules"].get(f"{ARPT_CHAINS['out']}{gen}", []):
        src, target, iface = _opt(argv, "-s"), _opt(argv, "-j"), _opt(argv, "-o")
        iface = None if iface == "*" else iface
        src = src.split("/")[0] if src else None
        if target == "mangle" and iface and src:
            rewrite.setdefault(iface, set()).add((src, _opt(argv, "--mangle-ip-s")))
        elif target == "DROP" and src and not iface:
            drop_out.add(src)
        else:
            odd = True
    flat = {}
    for iface, pairs in rewrite.items():
        if {p[0] for p in pairs} != set(vips) or len({p[1] for p in pairs}) != 1:
            odd = True
        flat[iface] = sorted(pairs)[0][1]
    model = arp_rules_model(vips, flat) or {"vips": [], "rewrite": flat}
    if odd or drop_out != set(vips) or not vips or len(ours) != 2:
        model["incomplete"] = True
    return model, gen, ours


def arptables_listing(binary):
    """``arptables -L -n`` in ``arptables-save`` form. Not ``arptables-save`` itself: Debian's
    ``arptables-legacy-save`` is a script that lists with whatever ``/usr/sbin/arptables``
    points to, which is arptables-nft once iptables is installed."""
    proc = subprocess.run([binary, "-L", "-n"], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise CommandExecutionError(f"{binary} -L -n failed: {proc.stderr.strip()}")
    out, chain = [], None
    for line in proc.stdout.splitlines():
        line = line.split("# Warning", 1)[0].strip()
        header = re.match(r"^Chain (\S+) \((policy (\S+)|.*references?)\)", line)
        if header:
            chain = header.group(1)
            out.append(f":{chain} {header.group(3) or '-'}")
        elif line and chain:
            out.append(f"-A {chain} {line}")
    return "\n".join(out) + "\n"


def observe_arptables(binary):
    flavour = arptables_flavour(binary)
    out = {"flavour": flavour, "binary": binary, "model": None, "generation": None, "chains": []}
    if flavour is None:
        return out
    out["model"], out["generation"], out["chains"] = arptables_model(
        parse_arptables_save(arptables_listing(binary)))
    return out


def arptables_rule_args(model, gen):
    """The rules of one generation of our chains, as arptables arguments after ``-A CHAIN``."""
    chain_in, chain_out = (f"{ARPT_CHAINS[k]}{gen}" for k in ("in", "out"))
    out = [[chain_in, "-d", vip, "--opcode", "Request", "-j", "DROP"] for vip in model["vips"]]
    for iface, address in model["rewrite"].items():
        out += [[chain_out, "-o", iface, "-s", vip, "-j", "mangle", "--mangle-ip-s", address]
                for vip in model["vips"]]
    out += [[chain_out, "-s", vip, "-j", "DROP"] for vip in model["vips"]]
    return out


def arptables_commands(binary, model, observed_arpt):
    """Commands that swap generations: the new chains are filled and jumped to (first in
    INPUT/OUTPUT) before the old jumps and chains go, so a VIP is covered at every moment."""
    old_gen = observed_arpt.get("generation")
    existing = set(observed_arpt.get("chains") or [])
    cmds = []
    new_gen = None
    if model is not None:
        new_gen = "B" if old_gen == "A" else "A"
        for kind in ("in", "out"):
            chain = f"{ARPT_CHAINS[kind]}{new_gen}"
            cmds.append([binary, "-F" if chain in existing else "-N", chain])
        cmds += [[binary, "-A", *args] for args in arptables_rule_args(model, new_gen)]
        for kind in ("in", "out"):
            cmds.append([binary, "-I", ARPT_HOOKS[kind], "1", "-j",
                         f"{ARPT_CHAINS[kind]}{new_gen}"])
    for gen in ("A", "B"):
        if gen == new_gen:
            continue
        for kind in ("in", "out"):
            chain = f"{ARPT_CHAINS[kind]}{gen}"
            if gen == old_gen:
                cmds.append([binary, "-D", ARPT_HOOKS[kind], "-j", chain])
            if chain in existing:
                cmds += [[binary, "-F", chain], [binary, "-X", chain]]
    return cmds


def render_arptables_script(binary, model):
    """The boot script: our chains from scratch (anything of ours left over goes first)."""
    lines = [
        "#!/bin/sh",
        HEADER.rstrip("\n"),
        "# ARP rules for LVS real server VIPs, loaded by lvs-realserver.service before the VIPs.",
        f"A={binary}",
    ]
    for gen in ("A", "B"):
        for kind in ("in", "out"):
            chain = f"{ARPT_CHAINS[kind]}{gen}"
            lines.append(f'"$A" -D {ARPT_HOOKS[kind]} -j {chain} 2>/dev/null; '
                         f'"$A" -F {chain} 2>/dev/null; "$A" -X {chain} 2>/dev/null')
    lines.append("set -e")
    for kind in ("in", "out"):
        lines.append(f'"$A" -N {ARPT_CHAINS[kind]}A')
    lines += [f'"$A" -A {" ".join(args)}' for args in arptables_rule_args(model, "A")]
    for kind in ("in", "out"):
        lines.append(f'"$A" -I {ARPT_HOOKS[kind]} 1 -j {ARPT_CHAINS[kind]}A')
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vip:
    address: object
    device: str = "lo"
    label: str = None
    ports: tuple = ()  # ("tcp", 80), ...: what the redirect method redirects

    @property
    def prefixlen(self):
        return 32 if self.address.version == 4 else 128

    def describe(self):
        text = f"{self.address}/{self.prefixlen} dev {self.device}"
        return text + (f" label {self.label}" if self.label and self.address.version == 4 else "")

    @property
    def key(self):
        return f"{self.address}/{self.prefixlen} dev {self.device}"


@dataclass(frozen=True)
class Spec:
    vips: tuple
    scope: str = "interfaces"
    interfaces: tuple = None
    persist: bool = True
    arp_method: str = "sysctl"


PORT_PROTOCOLS = ("tcp", "udp", "sctp")


def parse_ports(raw, protocol, key, errors):
    """``[80, "udp/53", {"protocol": "tcp", "port": 443}]`` -> (("tcp", 80), ("udp", 53), ...)."""
    if raw is None:
        return ()
    if isinstance(raw, (int, str)) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        errors.append(f"{key}: expected a list of ports such as [80, udp/53]")
        return ()
    out = set()
    for idx, item in enumerate(raw):
        proto, port = protocol, item
        if isinstance(item, dict):
            proto, port = item.get("protocol", protocol), item.get("port")
        elif isinstance(item, str) and "/" in item:
            proto, port = item.split("/", 1)
        try:
            port = int(port)
        except (TypeError, ValueError):
            port = None
        if proto not in PORT_PROTOCOLS:
            errors.append(f"{key}:{idx}: protocol '{proto}' is not one of tcp, udp, sctp")
        elif port is None or not 1 <= port <= 65535:
            errors.append(f"{key}:{idx}: '{item}' is not a port from 1 to 65535")
        else:
            out.add((proto, port))
    return tuple(sorted(out))


def _label_ok(label, device):
    return label == device or (label.startswith(device + ":") and len(label) <= 15)


def parse_vips(vips, device="lo", label=None, key="vips"):
    """Turn ``["198.51.100.100", {"address": ..., "device": ..., "label": ...}]`` into Vips."""
    errors = []
    if isinstance(vips, str):
        vips = [v.strip() for v in vips.split(",") if v.strip()]
    if not isinstance(vips, (list, tuple)):
        raise SaltInvocationError(f"{key}: expected a list of addresses")
    out = []
    for idx, item in enumerate(vips):
        ikey = f"{key}:{idx}"
        entry = item if isinstance(item, dict) else {"address": item}
        raw = entry.get("address")
        if isinstance(raw, str) and "/" in raw:
            errors.append(f"{ikey}: '{raw}' has a prefix; give the bare address")
            continue
        try:
            address = ipaddress.ip_address(raw)
        except (ValueError, TypeError):
            errors.append(f"{ikey}: '{raw}' is not an IP address")
            continue
        dev = entry.get("device") or device
        lab = entry.get("label", label)
        if lab and not _label_ok(lab, dev):
            errors.append(
                f"{ikey}:label: '{lab}' must be '{dev}' or start with '{dev}:' "
                "and have at most 15 characters"
            )
            continue
        ports = parse_ports(entry.get("ports"), entry.get("protocol", "tcp"), f"{ikey}:ports",
                            errors)
        out.append(Vip(address, dev, lab or None, ports))
    seen = set()
    for vip in out:
        if vip.address in seen:
            errors.append(f"{key}: {vip.address} is listed twice")
        seen.add(vip.address)
    if errors:
        raise SaltInvocationError("\n".join(errors))
    return tuple(out)


def make_spec(vips, scope="interfaces", interfaces=None, persist=True, device="lo", label=None,
              arp_method="sysctl"):
    errors = []
    if scope not in ("interfaces", "all"):
        errors.append(f"scope: '{scope}' is not one of interfaces, all")
    if arp_method not in ARP_METHODS:
        errors.append(f"arp_method: '{arp_method}' is not one of {', '.join(ARP_METHODS)}")
    if isinstance(interfaces, str):
        interfaces = [i.strip() for i in interfaces.split(",") if i.strip()]
    if interfaces is not None and not all(isinstance(i, str) and i for i in interfaces):
        errors.append("interfaces: expected a list of interface names")
    if errors:
        raise SaltInvocationError("\n".join(errors))
    parsed = parse_vips(vips, device=device, label=label)
    if arp_method == "redirect":
        for idx, vip in enumerate(parsed):
            if not vip.ports:
                errors.append(
                    f"vips:{idx}:ports: arp_method redirect needs the ports of {vip.address} "
                    "(the services' protocol and ports): nothing else tells what to redirect"
                )
            if vip.device != "lo":
                errors.append(
                    f"vips:{idx}:device: arp_method redirect holds no VIP, so it works for "
                    f"direct routing only; '{vip.device}' (TUN) needs the VIP on the device"
                )
    if errors:
        raise SaltInvocationError("\n".join(errors))
    return Spec(
        vips=parsed,
        scope=scope,
        interfaces=tuple(interfaces) if interfaces else None,
        persist=bool(persist),
        arp_method=arp_method,
    )


# --------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------


def sysctl_name(conf, key):
    """The name an operator reads and sysctl.d accepts (slash form when the name has a dot)."""
    if "." in conf:
        return f"net/ipv4/conf/{conf}/{key}"
    return f"net.ipv4.conf.{conf}.{key}"


def arp_facing_interfaces(vip, observed):
    """The ARP-capable interfaces on which a request for ``vip`` can arrive and be answered.

    Those holding an IPv4 subnet that contains the VIP (the DR case); when none does (TUN, or
    a routed VIP), every ARP-capable interface with an IPv4 address, because a neighbour on any
    of them may still ask. IPv6 has no ARP: Linux answers Neighbour Solicitations only for
    addresses on the receiving interface.
    """
    if vip.address.version != 4:
        return []
    nets, with_v4 = _lookups(observed)[3:]
    onlink = {name for net, name in nets if vip.address in net}
    return sorted(onlink) if onlink else list(with_v4)


@dataclass
class Action:
    """One step of a plan. ``kind``: sysctl, addr_add, addr_del, file, record."""

    kind: str
    target: str
    old: object = None
    new: object = None
    data: dict = field(default_factory=dict)


@dataclass
class Plan:
    actions: list
    warnings: list
    record: dict  # the state record after a complete run

    def changes(self):
        """The changes a run makes, as reported by the state: old/new per sysctl, address, file."""
        out = {}
        for act in self.actions:
            if act.kind == "record":
                continue
            group = {"addr_add": "address", "addr_del": "address", "addr_set": "address",
                     "link_del": "link"}.get(act.kind, act.kind)
            bucket = out.setdefault(group, {})
            if act.target in bucket:  # a file written twice: report first old, last new
                bucket[act.target]["new"] = act.new
                if bucket[act.target]["old"] == bucket[act.target]["new"]:
                    del bucket[act.target]
            else:
                bucket[act.target] = {"old": act.old, "new": act.new}
        return {k: v for k, v in out.items() if v}


def empty_record():
    return {"version": 1, "vips": {}, "sysctl": {}}


def _needed_conf(spec_vips, observed, spec, errors):
    """conf dirs that must be quiet, mapped to the VIPs that need them."""
    needed = {}
    for vip in spec_vips:
        if vip.address.version != 4:
            continue
        if spec.scope == "all":
            facing = ["all"]
        elif spec.interfaces:
            facing = list(spec.interfaces)
            for name in facing:
                if name not in observed.links:
                    errors.append(f"interfaces: '{name}' does not exist on this host")
        else:
            facing = arp_facing_interfaces(vip, observed)
        for name in facing:
            needed.setdefault(name, []).append(str(vip.address))
    return needed


def rewrite_addresses(spec, observed):
    """{interface: its own IPv4 address}: where the rule methods rewrite a VIP sender address.

    The interfaces named in ``interfaces``, else every ARP-capable interface with an IPv4
    address: a rewrite touches only ARP packets that carry a VIP as sender, so unlike
    ``conf/all`` it has no side effect on other traffic (veths included). The address is the
    interface's primary IPv4 address (the first in the kernel's dump), the one
    ``arp_announce=2`` would most likely pick. A VIP sender on an interface without an IPv4
    address is dropped by the rule that follows the rewrites."""
    capable = {link.index: link for link in observed.links.values() if link.arp_capable}
    wanted = set(spec.interfaces) if spec.interfaces else None
    vips = {v.address for v in spec.vips}
    out = {}
    for addr in observed.addrs:
        link = capable.get(addr.index)
        if link is None or addr.address.version != 4 or link.name in out:
            continue
        if addr.address in vips or (wanted is not None and link.name not in wanted):
            continue
        out[link.name] = str(addr.address)
    return dict(sorted(out.items()))


def _merge_rule_models(kind, observed, final):
    """What must be in force during a run: the final rules plus whatever the observed rules
    still cover (lifted only after the VIPs they protect are gone)."""
    if final is None:
        return observed
    if observed is None:
        return final
    if kind == "redirect":
        merged = {a: list(p) for a, p in observed.items() if a != "incomplete"}
        for addr, ports in final.items():
            merged[addr] = _sorted_ports(set(merged.get(addr, [])) | set(ports))
        return dict(sorted(merged.items()))
    return arp_rules_model(set(observed.get("vips", [])) | set(final["vips"]),
                           {**observed.get("rewrite", {}), **final["rewrite"]})


def _rule_action(step, old, new, arpt_state=None):
    kind, target, family = step
    if kind == "arptables":
        binary = arpt_state["binary"]
        cmds = arptables_commands(binary, new, arpt_state)
        return Action("arptables", target, old, new, {"commands": cmds})
    if kind == "iptables":
        binary = target.split()[0]
        script = render_iptables_restore(new, family, arpt_state.get("jump", False))
        restore = _which(f"{binary}-restore") or f"{binary}-restore"
        return Action("iptables", target, old, new,
                      {"argv": [restore, "--noflush"], "stdin": script})
    body = None
    if new is not None:
        body = (render_arp_table(new) if family == "arp"
                else render_redirect_table(new, 4 if family == "ip" else 6))
    return Action("nftables", target, old, new, {"script": nft_table_script(family, body)})


def plan_changes(spec, observed, record, paths, exclusive=True, created=()):
    """Decide, without touching anything, which actions converge the host to ``spec``.

    Order (the safety rule lives here, once):
    1. put in force what keeps the host quiet about every VIP it will hold: the ARP sysctls
       (``sysctl``), the arp table (``nftables``) or chains (``arptables``), the nat redirect
       (``redirect``), live and then in the boot files; rules a run removes stay in force
       until step 4;
    2. record the VIPs about to be managed (so a crash never leaves an unmanaged VIP);
    3. add missing VIPs (and the boot VIP list);
    4. remove managed VIPs no longer desired (``exclusive``; with ``redirect`` every VIP goes,
       the host holds none), then relax the suppression and remove the rules no remaining
       managed VIP needs (the sysctls back to the value found before this module raised them);
    5. write the final record.

    Switching ``arp_method`` is this same order: the new method is in force (step 1) before
    the VIPs change (3, 4) and before the old method is removed (4).
    """
    errors = []
    warnings = []
    record = record or empty_record()
    actions = []
    paths = complete_paths(paths)
    method = spec.arp_method
    rules = observed.rules or {}
    host_vips = () if method == "redirect" else spec.vips
    desired = {str(v.address): v for v in host_vips}
    managed = dict(record.get("vips", {}))

    for vip in host_vips:
        if vip.device not in observed.links:
            hint = " (load the ipip module: it creates tunl0)" if vip.device == "tunl0" else ""
            errors.append(f"vips: {vip.address}: device '{vip.device}' does not exist{hint}")
    for vip in spec.vips:
        for held in observed.addrs_of(vip.address):
            link = observed.link_by_index(held.index)
            if link is not None and link.name != vip.device and link.arp_capable:
                errors.append(
                    f"vips: {vip.address} is configured on {link.name}, an ARP-facing interface:"
                    f" a real server must hold the VIP on {vip.device} only; remove it from "
                    f"{link.name} first (nothing was changed)"
                )
    ipt_state = rules.get("iptables") or {}
    ipt_prev = rules.get("iptables_prev") or {}
    backend = paths["redirect_backend"]
    if backend == "auto":  # nftables wherever nft runs; iptables where that is all there is
        backend = "iptables" if rules.get("nft") is False and ipt_state.get("available") else (
            "nftables")
    if (method == "nftables" or (method == "redirect" and backend == "nftables")) and rules.get(
            "nft") is False:
        hint = " (or install iptables: redirect then uses iptables nat)" if (
            method == "redirect") else ""
        errors.append(f"arp_method: '{method}' needs nftables: {rules.get('nft_error')}{hint}")
    if method == "redirect" and backend == "iptables" and not ipt_state.get("available"):
        errors.append(
            f"arp_method: 'redirect' with redirect_backend iptables needs "
            f"{paths['iptables_bin']}-save and -restore: {ipt_state.get('error') or 'not found'}"
        )
    arpt_state = rules.get("arptables") or {}
    if method == "arptables" and "arptables" in rules and arpt_state.get("flavour") is None:
        errors.append(
            f"arp_method: 'arptables' needs the arptables command ('{arpt_state.get('binary')}' "
            "does not run; package arptables, or iptables for arptables-nft)"
        )

    # 1. suppression
    if method == "sysctl":
        needed = _needed_conf(host_vips, observed, spec, errors)
    else:
        needed = {}
        for name in spec.interfaces or ():
            if name not in observed.links:
                errors.append(f"interfaces: '{name}' does not exist on this host")
    if spec.scope == "all" and needed:
        warnings.append(
            "scope all: net.ipv4.conf.all.arp_ignore and arp_announce change ARP on every "
            "interface, including container veths and bridges (kubernetes #71555, #72779)"
        )
    if spec.scope == "interfaces" and needed:
        all_ignore = observed.conf["all"]["arp_ignore"]
        if all_ignore not in (0, *QUIET_ARP_IGNORE):
            errors.append(
                f"net.ipv4.conf.all.arp_ignore is {all_ignore}: the kernel uses max(all, "
                f"interface) = {all_ignore}, which still answers ARP for the VIP; set it to 0, "
                "1 or 2, or use scope: all"
            )
    if errors:
        raise SaltInvocationError("\n".join(errors))

    rec_sysctl = {k: dict(v) for k, v in record.get("sysctl", {}).items()}
    persist_values = {}
    for conf in sorted(needed):
        current = observed.conf.get(conf)
        if current is None:
            raise SaltInvocationError(f"interfaces: no ARP sysctls for '{conf}'")
        for key, want, quiet in (
            ("arp_ignore", WANT_ARP_IGNORE, QUIET_ARP_IGNORE),
            ("arp_announce", WANT_ARP_ANNOUNCE, (WANT_ARP_ANNOUNCE,)),
        ):
            name = sysctl_name(conf, key)
            value = current[key]
            if value in quiet:
                persist_values[name] = value
                continue
            persist_values[name] = want
            actions.append(
                Action("sysctl", name, value, want, {"path": f"{PROC_CONF}/{conf}/{key}"})
            )
            rec_sysctl.setdefault(name, {"original": value, "path": f"{PROC_CONF}/{conf}/{key}"})
            rec_sysctl[name]["set"] = want

    # TUN: the tunnel device must be up, and rp_filter on it effectively 0 or 2: after
    # decapsulation the client's packet arrives on tunl0, which strict mode (1) drops because
    # the route back to the client is not via tunl0. Loose (2) on the device wins over
    # all=1 without touching conf/all (the kernel takes the max).
    brought_up = set()
    for vip in host_vips:
        link = observed.links[vip.device]
        if vip.device == "lo":
            continue
        if not link.flags & IFF_UP and vip.device not in brought_up:
            brought_up.add(vip.device)
            actions.append(Action("link", vip.device, "down", "up", {"index": link.index}))
        if not _is_tunnel(link):
            continue  # a dedicated dummy: packets for the VIP still arrive on the NIC
        name = sysctl_name(vip.device, "rp_filter")
        if vip.address.version == 4 and observed.effective(vip.device, "rp_filter") == 1:
            path = f"{PROC_CONF}/{vip.device}/rp_filter"
            if name not in (a.target for a in actions):
                current = observed.conf.get(vip.device, {}).get("rp_filter", 0)
                actions.append(Action("sysctl", name, current, 2, {"path": path}))
                rec_sysctl.setdefault(name, {"original": current, "path": path})
                rec_sysctl[name]["set"] = 2
                persist_values[name] = 2
        elif vip.address.version == 4 and name in rec_sysctl:
            persist_values[name] = observed.conf.get(vip.device, {}).get("rp_filter", 0)

    # What stays managed after this run, and which suppression it needs.
    keep = {str(v.address): v for v in spec.vips}
    if not exclusive:
        for addr, info in managed.items():
            keep.setdefault(
                addr,
                Vip(ipaddress.ip_address(addr), info["device"], info.get("label"),
                    tuple(tuple(p) for p in info.get("ports", []))),
            )
    keep_host = {} if method == "redirect" else keep
    if method == "sysctl":
        # exclusive: what stays is exactly what step 1 planned for (the same VIPs)
        still_needed = needed if exclusive else _needed_conf(tuple(keep_host.values()),
                                                             observed, spec, [])
    else:
        still_needed = {}
    tunnel_devices = {
        v.device for v in keep_host.values()
        if v.device != "lo" and v.address.version == 4
        and (v.device not in observed.links or _is_tunnel(observed.links[v.device]))
    }
    # dedicated dummies this module created: kept while a VIP uses them, deleted after
    devices = {**record.get("devices", {}), **{d: DEDICATED_KIND for d in created}}
    in_use = {v.device for v in keep_host.values()}
    drop_devices = sorted(d for d in devices if d not in in_use and d in observed.links)

    def needed(path):
        conf, key = path.split("/")[-2:]
        return conf in (tunnel_devices if key == "rp_filter" else still_needed)

    relax = []
    for name, info in sorted(rec_sysctl.items()):
        conf = info["path"].split("/")[-2]
        if needed(info["path"]):
            continue
        key = info["path"].rsplit("/", 1)[1]
        current = observed.conf.get(conf, {}).get(key)
        if current is None:  # the interface is gone: nothing to relax
            continue
        if current != info.get("set"):
            warnings.append(
                f"{name} is {current}, not the {info.get('set')} this module set: "
                "someone changed it since; left as it is"
            )
            continue
        relax.append(Action("sysctl", name, current, info["original"], {"path": info["path"]}))

    # The rule methods: what each of our tables (chains) holds now, after step 1, and at the end.
    v4_host = [v.address for v in keep_host.values() if v.address.version == 4]
    rewrite = rewrite_addresses(spec, observed) if method in ("nftables", "arptables") else {}
    want_arp = arp_rules_model(v4_host, rewrite)
    rule_steps = [(("nftables", ARP_TABLE, "arp"), "arp", rules.get("arp"),
                   want_arp if method == "nftables" else None)]
    if "arptables" in rules:
        arpt_target = f"arptables ({arpt_state.get('flavour') or 'missing'})"
        rule_steps.append((("arptables", arpt_target, None), "arp", arpt_state.get("model"),
                           want_arp if method == "arptables" else None))
    prev = rules.get("arptables_prev") or {}
    if prev.get("model") is not None:  # rules left in another flavour's table: removed last
        rule_steps.append((("arptables", f"arptables ({prev['flavour']}) {prev['binary']}",
                            None), "arp", prev["model"], None))
    for version, family in REDIRECT_FAMILIES.items():
        final = redirect_model(keep.values(), version) if method == "redirect" else None
        rule_steps.append(((("nftables", f"table {family} {NFT_TABLE}", family)), "redirect",
                           (rules.get("redirect") or {}).get(family),
                           final if backend == "nftables" else None))
        if "iptables" in rules:
            binary = iptables_binary(ipt_state.get("binary") or paths["iptables_bin"], version)
            rule_steps.append(((("iptables", f"{binary} nat {IPT_CHAIN}", version)), "redirect",
                               ipt_state.get(family), final if backend == "iptables" else None))
        ipt_prev = rules.get("iptables_prev") or {}
        if ipt_prev.get(family) is not None:
            binary = iptables_binary(ipt_prev["binary"], version)
            rule_steps.append(((("iptables", f"{binary} nat {IPT_CHAIN}", version)), "redirect",
                               ipt_prev[family], None))
    raise_rules, lower_rules, final_rules = [], [], {}
    arpt_after = dict(arpt_state)
    for step, kind, old, final in rule_steps:
        during = _merge_rule_models(kind, old, final)
        current = old
        state = prev if step[1].endswith(f") {prev.get('binary')}") else arpt_state
        if step[0] == "iptables":
            source = ipt_prev if step[1].split()[0] == iptables_binary(
                ipt_prev.get("binary") or "", step[2]) else ipt_state
            state = {"jump": bool(source.get("jumps", {}).get(IPT_FAMILIES[step[2]]))}
        if during is not None and during != old:
            raise_rules.append(_rule_action(step, old, during, state))
            current = during
            if step[0] == "arptables":
                gen = "B" if arpt_state.get("generation") == "A" else "A"
                arpt_after = {**arpt_state, "generation": gen,
                              "chains": [f"{ARPT_CHAINS[k]}{gen}" for k in ("in", "out")]}
            state = arpt_after if step[0] == "arptables" else {"jump": True}
        if final != current:
            lower_rules.append(_rule_action(step, current, final, state))
        final_rules[step[1]] = (step, final, during)
    actions.extend(raise_rules)

    def nft_text(which):
        parts = []
        for step, final, during in final_rules.values():
            model = final if which == "final" else during
            if step[0] != "nftables" or model is None:
                continue
            body = (render_arp_table(model) if step[2] == "arp"
                    else render_redirect_table(model, 4 if step[2] == "ip" else 6))
            parts.append(nft_table_script(step[2], body))
        return (HEADER + "".join(parts)) if parts else None

    def arpt_text(which):
        for step, final, during in final_rules.values():
            model = final if which == "final" else during
            if step[0] == "arptables" and model is not None:
                return render_arptables_script(arpt_state.get("binary") or "arptables", model)
        return None

    def ipt_text(version, which):
        for step, final, during in final_rules.values():
            model = final if which == "final" else during
            if step[0] == "iptables" and step[2] == version and model is not None:
                return HEADER + render_iptables_restore(model, version, jump_present=False)
        return None

    files = {}
    if spec.persist:
        files["raise"] = render_sysctl_file({**_persisted_sysctls(paths), **persist_values})
    # 2. record the intent before any address appears
    record_after = empty_record()
    for addr, vip in keep.items():
        entry = {"device": vip.device, "label": vip.label}
        if vip.ports:
            entry["ports"] = [list(p) for p in vip.ports]
        record_after["vips"][addr] = entry
    intent = empty_record()
    intent["vips"] = {**managed, **record_after["vips"]}
    intent["sysctl"] = rec_sysctl
    if devices:
        intent["devices"] = dict(devices)
    old_method = (record.get("options") or {}).get("arp_method", "sysctl")
    intent["options"] = {**(record.get("options") or {}),
                         "arp_methods_in_flight": sorted({old_method, method})}

    if spec.persist:
        _file_action(actions, paths["sysctl_file"], files["raise"])
        _file_action(actions, paths["nft_file"], nft_text("during"))
        _file_action(actions, paths["arptables_file"], arpt_text("during"))
        _file_action(actions, paths["iptables_file"], ipt_text(4, "during"))
        _file_action(actions, paths["ip6tables_file"], ipt_text(6, "during"))
    actions.append(Action("record", paths["state_file"], new=intent))

    # 3. add VIPs
    for addr, vip in desired.items():
        held = [
            a for a in observed.addrs_of(vip.address)
            if observed.links.get(vip.device) and a.index == observed.links[vip.device].index
        ]
        right = [a for a in held if a.prefixlen == vip.prefixlen]
        wrong = [a for a in held if a.prefixlen != vip.prefixlen]
        for bad in wrong:
            # a wider prefix on lo makes the whole subnet local: replace it
            actions.append(
                Action(
                    "addr_del",
                    f"{vip.address}/{bad.prefixlen} dev {vip.device}",
                    f"{vip.address}/{bad.prefixlen} dev {vip.device}",
                    None,
                    {"address": vip.address, "prefixlen": bad.prefixlen, "device": vip.device},
                )
            )
        if not right:
            actions.append(
                Action(
                    "addr_add",
                    vip.key,
                    None,
                    vip.describe(),
                    {
                        "address": vip.address,
                        "prefixlen": vip.prefixlen,
                        "device": vip.device,
                        "label": vip.label,
                    },
                )
            )
        elif vip.address.version == 6 and not right[0].deprecated:
            # held but preferred: it may be picked as the source of this host's own traffic
            actions.append(
                Action(
                    "addr_set",
                    vip.key,
                    f"{vip.describe()} (preferred: may be chosen as a source address)",
                    f"{vip.describe()} (deprecated: never chosen as a source address)",
                    {"address": vip.address, "prefixlen": vip.prefixlen, "device": vip.device,
                     "replace": True},
                )
            )
        elif addr not in managed:
            actions.append(Action("address", vip.key, "present, unmanaged", "present, managed"))

    # 4. remove VIPs no longer desired, then relax
    if exclusive or method == "redirect":
        remove = {a: i for a, i in managed.items() if exclusive or a in keep}
        if method == "redirect":  # named but held: the host must hold none of them
            for vip in spec.vips:
                remove.setdefault(str(vip.address), {"device": vip.device})
        for addr, info in sorted(remove.items()):
            if addr in desired:
                continue
            address = ipaddress.ip_address(addr)
            dev = info["device"]
            link = observed.links.get(dev)
            prefix = 32 if address.version == 4 else 128
            held = [
                a for a in observed.addrs_of(address)
                if link is not None and a.index == link.index and a.prefixlen == prefix
            ]
            if held:
                key = f"{address}/{prefix} dev {dev}"
                actions.append(
                    Action(
                        "addr_del",
                        key,
                        key,
                        None,
                        {"address": address, "prefixlen": prefix, "device": dev},
                    )
                )
    for act in relax:
        rec_sysctl.pop(act.target, None)
    for name, info in list(rec_sysctl.items()):
        conf = info["path"].split("/")[-2]
        if not needed(info["path"]) and observed.conf.get(conf) is None:
            rec_sysctl.pop(name)  # interface gone
        elif not needed(info["path"]) and any(w.startswith(name + " ") for w in warnings):
            rec_sysctl.pop(name)  # changed by someone else: no longer ours
    final_sysctl = None
    if spec.persist:
        final_persist = {
            name: value
            for name, value in {**_persisted_sysctls(paths), **persist_values}.items()
            if needed(_sysctl_path(name))
        }
        final_sysctl = render_sysctl_file(final_persist) if final_persist else None
        vip_text = render_vip_file(keep_host.values(), kept_devices_for_boot(devices, in_use)) \
            if keep_host else None
        final_nft = nft_text("final")
        final_arpt = arpt_text("final")
        _file_action(actions, paths["vip_file"], vip_text)
        final_ipt = {v: ipt_text(v, "final") for v in IPT_FAMILIES}
        steps = unit_steps(paths, final_sysctl, final_nft, final_arpt, vip_text, final_ipt)
        _file_action(actions, paths["unit_file"], render_unit(paths, steps) if steps else None)
        _wants_action(actions, paths["unit_file"], bool(steps))
    actions.extend(relax)
    actions.extend(lower_rules)
    for dev in drop_devices:
        actions.append(Action("link_del", dev, devices[dev], None,
                              {"index": observed.links[dev].index}))
    if spec.persist:
        _file_action(actions, paths["sysctl_file"], final_sysctl)
        _file_action(actions, paths["nft_file"], final_nft)
        _file_action(actions, paths["arptables_file"], final_arpt)
        _file_action(actions, paths["iptables_file"], final_ipt[4])
        _file_action(actions, paths["ip6tables_file"], final_ipt[6])
    else:
        for key in ("vip_file", "unit_file", "sysctl_file", "nft_file", "arptables_file",
                    "iptables_file", "ip6tables_file"):
            _file_action(actions, paths[key], None)
        _wants_action(actions, paths["unit_file"], False)

    record_after["sysctl"] = rec_sysctl
    kept_devices = {d: k for d, k in devices.items() if d in in_use}
    if kept_devices:
        record_after["devices"] = kept_devices
    record_after["options"] = {"scope": spec.scope, "interfaces": list(spec.interfaces or []),
                               "arp_method": method}
    # the binaries whose kernel tables hold our rules, so a later change of binary (legacy to
    # nft-backed) still finds and removes them
    if method == "arptables":
        record_after["options"]["arptables_bin"] = arpt_state.get("binary") or paths[
            "arptables_bin"]
    if method == "redirect" and backend == "iptables":
        record_after["options"]["iptables_bin"] = ipt_state.get("binary") or paths["iptables_bin"]
    actions.append(Action("record", paths["state_file"], new=record_after))
    return Plan(actions=_drop_noop_files(actions), warnings=warnings, record=record_after)


def _sysctl_path(name):
    """net.ipv4.conf.eth0.arp_ignore (or the slash form) -> /proc/sys/net/ipv4/conf/eth0/..."""
    if name.startswith("net/"):
        return f"/proc/sys/{name}"
    conf, key = name[len("net.ipv4.conf.") :].rsplit(".", 1)
    return f"{PROC_CONF}/{conf}/{key}"


def _conf_of(name):
    if name.startswith("net/"):
        return name.split("/")[3]
    return name[len("net.ipv4.conf.") :].rsplit(".", 1)[0]


def _persisted_sysctls(paths):
    """Values our drop-in holds now (so a run that does not raise keeps what is persisted)."""
    try:
        with open(paths["sysctl_file"], encoding="utf-8") as fh:
            text = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        name, value = (part.strip() for part in line.split("=", 1))
        try:
            out[name.lstrip("-")] = int(value)
        except ValueError:
            continue
    return out


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _file_action(actions, path, text):
    actions.append(Action("file", path, _read_text(path), text, {"path": path}))


def _wants_path(unit_file):
    unit_dir, unit_name = os.path.split(unit_file)
    return os.path.join(unit_dir, "sysinit.target.wants", unit_name)


def _wants_action(actions, unit_file, enabled):
    link = _wants_path(unit_file)
    old = os.path.realpath(link) if os.path.lexists(link) else None
    new = unit_file if enabled else None
    actions.append(Action("file", link, f"-> {old}" if old else None, f"-> {new}" if new else None,
                          {"path": link, "symlink": new}))


def _drop_noop_files(actions):
    """A file written with what it already holds is no change; two writes of one file in a plan
    stay (the first raises, the second relaxes) unless the second one writes nothing new."""
    out = []
    last = {}
    for act in actions:
        if act.kind == "file":
            old = last.get(act.target, act.old)
            if old == act.new:
                continue
            act.old = old
            last[act.target] = act.new
        out.append(act)
    return out


HEADER = "# Managed by saltext-lvs (lvs_realserver). Changes here are overwritten.\n"


def render_sysctl_file(values):
    lines = [
        HEADER,
        "# ARP suppression for LVS real server VIPs: the kernel uses max(all, <interface>).\n",
        "# lvs-realserver.service applies this file again right before it adds the VIPs.\n",
    ]
    for name in sorted(values):
        lines.append(f"{name} = {values[name]}\n")
    return "".join(lines)


def kept_devices_for_boot(devices, in_use):
    return sorted(d for d in devices if d in in_use)


def render_vip_file(vips, dummies=()):
    lines = [HEADER, "# VIPs restored at boot by lvs-realserver.service, after the ARP sysctls.\n"]
    for dev in dummies:  # dedicated interfaces first (a dummy is NOARP by itself)
        lines.append(f"link add name {dev} type {DEDICATED_KIND}\n")
        lines.append(f"link set dev {dev} up\n")
    for vip in sorted(vips, key=lambda v: (v.address.version, v.address)):
        line = f"address replace {vip.address}/{vip.prefixlen} dev {vip.device}"
        if vip.address.version == 4 and vip.label:
            line += f" label {vip.label}"
        if vip.address.version == 6:
            # deprecated at once: never chosen as a source address (see addr_request)
            line += " nodad preferred_lft 0"
        lines.append(line + "\n")
    return "".join(lines)


def unit_steps(paths, sysctl_text, nft_text, arptables_text, vip_text, ipt_texts=None):
    """The unit's ExecStart commands, in the safety order: everything that keeps the host quiet
    about a VIP (sysctls, nft tables, arptables chains) before the VIPs."""
    steps = []
    if sysctl_text:
        steps.append(f"{SYSCTL_BIN} -q -e -p {paths['sysctl_file']}")
    if nft_text:
        steps.append(f"{NFT_BIN} -f {paths['nft_file']}")
    if arptables_text:
        steps.append(f"{SH_BIN} {paths['arptables_file']}")
    for version, text in (ipt_texts or {}).items():
        if text:
            binary = iptables_binary(paths["iptables_bin"], version)
            restore = _which(f"{binary}-restore") or f"/usr/sbin/{binary}-restore"
            key = "iptables_file" if version == 4 else "ip6tables_file"
            steps.append(f"{restore} --noflush {paths[key]}")
    if vip_text:
        steps.append(f"{IP_BIN} -force -batch {paths['vip_file']}")
    return steps


def render_unit(paths, steps=None):
    if steps is None:
        steps = [f"{SYSCTL_BIN} -q -e -p {paths['sysctl_file']}",
                 f"{IP_BIN} -force -batch {paths['vip_file']}"]
    execs = "".join(f"ExecStart={step}\n" for step in steps)
    return (
        HEADER
        + "[Unit]\n"
        "Description=LVS real server VIPs: ARP suppression first, then the VIPs (saltext-lvs)\n"
        "DefaultDependencies=no\n"
        "After=systemd-sysctl.service systemd-modules-load.service local-fs.target\n"
        "Before=network-pre.target shutdown.target\n"
        "Wants=network-pre.target\n"
        "Conflicts=shutdown.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"{execs}"
        "\n"
        "[Install]\n"
        "WantedBy=sysinit.target\n"
    )


# --------------------------------------------------------------------------------------------
# Apply
# --------------------------------------------------------------------------------------------


def write_atomic(path, text):
    """Write a file so that readers see the old or the new content, never a mix."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lvs-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _apply_file(act):
    path = act.data["path"]
    if "symlink" in act.data:
        target = act.data["symlink"]
        if os.path.lexists(path):
            os.unlink(path)
        if target:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(target, path)
        return
    if act.new is None:
        if os.path.exists(path):
            os.unlink(path)
    else:
        write_atomic(path, act.new)


def _write_sysctl(path, value):
    with open(path, "w", encoding="ascii") as fh:
        fh.write(str(value))


def execute(plan, observed):
    """Run the plan's actions in order and return the journal of what was done.

    Consecutive address actions go to the kernel in one netlink batch. The first failure
    stops the run with a ``CommandExecutionError`` whose ``info`` holds the changes that were
    applied and the steps that were not.
    """
    journal = []
    done = []
    actions = plan.actions
    i = 0
    try:
        with Netlink() as nl:
            while i < len(actions):
                act = actions[i]
                if act.kind in ADDR_KINDS:
                    j = i
                    while j < len(actions) and actions[j].kind in ADDR_KINDS:
                        j += 1
                    group = actions[i:j]
                    requests = []
                    for a in group:
                        link = observed.links[a.data["device"]]
                        kind = RTM_DELADDR if a.kind == "addr_del" else RTM_NEWADDR
                        requests.append(
                            addr_request(
                                kind, a.data["address"], a.data["prefixlen"], link.index,
                                a.data.get("label"), replace=a.data.get("replace", False),
                            )
                        )
                    codes = nl.batch(requests)
                    for a, code in zip(group, codes):
                        benign = (a.kind == "addr_add" and code == errno.EEXIST) or (
                            a.kind == "addr_del" and code == errno.EADDRNOTAVAIL
                        )
                        if code and not benign:
                            raise _StepFailed(a, OSError(code, os.strerror(code)))
                        verb = {"addr_add": "add", "addr_del": "del", "addr_set": "set"}[a.kind]
                        journal.append(f"{verb} {a.target}")
                        done.append(a)
                    i = j
                    continue
                try:
                    if act.kind == "sysctl":
                        _write_sysctl(act.data["path"], act.new)
                        journal.append(f"sysctl {act.target}={act.new}")
                    elif act.kind == "link":
                        (code,) = nl.batch([link_up_request(act.data["index"])])
                        if code:
                            raise OSError(code, os.strerror(code))
                        journal.append(f"link {act.target} up")
                    elif act.kind == "link_del":
                        (code,) = nl.batch([link_delete_request(act.data["index"])])
                        if code and code != errno.ENODEV:
                            raise OSError(code, os.strerror(code))
                        journal.append(f"link {act.target} deleted")
                    elif act.kind == "file":
                        _apply_file(act)
                        journal.append(f"file {act.target}")
                    elif act.kind == "nftables":
                        _run_checked([_nft_bin() or NFT_BIN, "-f", "-"], act.data["script"])
                        journal.append(f"nftables {act.target}")
                    elif act.kind == "iptables":
                        _run_checked(act.data["argv"], act.data["stdin"])
                        journal.append(f"iptables {act.target}")
                    elif act.kind == "arptables":
                        for argv in act.data["commands"]:
                            _run_checked(argv)
                        journal.append(f"arptables {act.target}")
                    elif act.kind == "record":
                        # compact: indent forces json's pure-Python encoder
                        text = json.dumps(act.new, sort_keys=True, separators=(",", ":"))
                        if _read_text(act.target) != text:  # a no-op run writes nothing
                            write_atomic(act.target, text)
                    # "address" (adoption) is bookkeeping carried by the record
                except OSError as err:
                    raise _StepFailed(act, err) from err
                done.append(act)
                i += 1
    except _StepFailed as failed:
        applied = Plan(done, [], {}).changes()
        pending = [
            f"{a.kind} {a.target}" for a in actions[actions.index(failed.action):]
            if a.kind != "record"
        ]
        raise CommandExecutionError(
            f"{failed.action.kind} {failed.action.target} failed: {failed.error}. "
            f"Applied before the failure: {_summary(applied) or 'nothing'}. "
            f"Not applied: {', '.join(pending)}. The next run converges from here.",
            info={"changes": applied, "journal": journal, "not_applied": pending},
        ) from failed.error
    return journal


ADDR_KINDS = ("addr_add", "addr_del", "addr_set")


def _run_checked(argv, stdin=None):
    """Run a command that writes to the kernel; a failure becomes an OSError with its message."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except OSError as err:
        raise OSError(err.errno, f"{argv[0]}: {err.strerror}") from err
    if proc.returncode:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise OSError(errno.EIO, f"{' '.join(argv[:3])}... exited {proc.returncode}: "
                                 f"{' / '.join(detail[-3:])}")


class _StepFailed(Exception):
    def __init__(self, action, error):
        super().__init__(str(error))
        self.action = action
        self.error = error


def _summary(changes):
    return ", ".join(f"{group} {name}" for group, items in changes.items() for name in items)


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def _paths(overrides):
    # salt-call and minion jobs add __pub_* keyword arguments to every **kwargs function
    overrides = {k: v for k, v in overrides.items() if not k.startswith("__")}
    conf = {}
    try:
        conf = __salt__["config.get"]("lvs_realserver", {}) or {}  # pylint: disable=undefined-variable
    except (NameError, KeyError):
        pass
    paths = dict(DEFAULT_PATHS)
    paths.update({k: v for k, v in conf.items() if k in DEFAULT_PATHS and v})
    paths.update({k: v for k, v in overrides.items() if k in DEFAULT_PATHS and v})
    unknown = sorted(set(overrides) - set(DEFAULT_PATHS))
    if unknown:
        raise SaltInvocationError(f"unknown argument(s): {', '.join(unknown)}")
    return complete_paths(paths)


def complete_paths(paths):
    """Fill in the paths that default to the folder of ``vip_file`` (nft_file, arptables_file)
    and the arptables binary."""
    out = dict(paths)
    folder = os.path.dirname(out["vip_file"])
    for key, name in DERIVED_FILES.items():
        if not out.get(key):
            out[key] = os.path.join(folder, name)
    for key in ("arptables_bin", "iptables_bin", "redirect_backend"):
        out[key] = out.get(key) or DEFAULT_PATHS[key]
    if out["redirect_backend"] not in REDIRECT_BACKENDS:
        raise SaltInvocationError(
            f"lvs_realserver:redirect_backend: '{out['redirect_backend']}' is not one of "
            f"{', '.join(REDIRECT_BACKENDS)}"
        )
    return out


def read_record(path):
    text = _read_text(path)
    if text is None:
        return empty_record()
    try:
        record = json.loads(text)
    except ValueError as err:
        raise CommandExecutionError(f"{path}: not valid JSON ({err}); fix or remove it") from err
    base = empty_record()
    base.update(record)
    return base


def _from_pillar():
    return __salt__["lvs_pillar.realserver"]()  # pylint: disable=undefined-variable


def _resolve(vips, scope, interfaces, persist, device, label, arp_method=None):
    """Arguments win; what they leave out comes from this minion's pillar."""
    need_pillar = vips is None or scope is None or persist is None or arp_method is None
    conf = _from_pillar() if need_pillar else {}
    return make_spec(
        vips=conf.get("vips", []) if vips is None else vips,
        scope=scope or conf.get("scope", "interfaces"),
        interfaces=interfaces if interfaces is not None else conf.get("interfaces"),
        persist=conf.get("persist", True) if persist is None else persist,
        device=device,
        label=label,
        arp_method=arp_method or conf.get("arp_method") or "sysctl",
    )


TUNNEL_MODULES = {"tunl0": "ipip"}
ARPHRD_TUNNEL = 768
# ARPHRD_TUNNEL, TUNNEL6, IPGRE, SIT, IP6GRE: decapsulated packets arrive on these
TUNNEL_TYPES = (768, 769, 776, 778, 823)


def _is_tunnel(link):
    return link.type in TUNNEL_TYPES or link.name in TUNNEL_MODULES


IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
NLA_F_NESTED = 0x8000
RTM_DELLINK = 17
DEDICATED_KIND = "dummy"


def link_create_request(name, kind=DEDICATED_KIND):
    """RTM_NEWLINK that creates ``name`` of ``kind``, up (a dummy is NOARP by itself)."""
    info = _rta(IFLA_INFO_KIND, kind.encode() + b"\0")
    payload = _IFINFOMSG.pack(0, 0, 0, IFF_UP, IFF_UP)
    payload += _rta(IFLA_IFNAME, name.encode() + b"\0")
    payload += _rta(IFLA_LINKINFO | NLA_F_NESTED, info)
    return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, payload


def link_delete_request(index):
    return RTM_DELLINK, 0, _IFINFOMSG.pack(0, 0, index, 0, 0)


def _ifname_ok(name):
    return 0 < len(name) <= 15 and not any(c in name for c in "/: \t\n") and name not in (
        ".", "..")


def ensure_tunnel_devices(spec, observed, test):
    """Create the devices the VIPs need and that are missing: ``tunl0`` by loading ``ipip``;
    any other name as a dedicated dummy interface (NOARP, up), the placement kube-ipvs0 and
    Comcast Ravel use instead of ``lo``.

    In test mode nothing is created: the plan is made against the device that would be
    (tunl0: down, NOARP; a dummy: NOARP, up; sysctls from conf/default), so the prediction stays
    exact. Returns (observed, changes); ``changes["link"]`` names the dummies created.
    """
    host_vips = () if spec.arp_method == "redirect" else spec.vips
    wanted = {v.device for v in host_vips}
    missing = sorted(wanted - set(observed.links))
    if not missing:
        return observed, {}
    tunnels = [d for d in missing if d in TUNNEL_MODULES]
    dummies = [d for d in missing if d not in TUNNEL_MODULES]
    bad = [d for d in dummies if not _ifname_ok(d)]
    if bad:
        raise SaltInvocationError(
            f"vips: device '{bad[0]}' does not exist and is not a valid interface name to create"
        )
    changes = {}
    if tunnels:
        changes["kmod"] = {TUNNEL_MODULES[d]: {"old": "not loaded", "new": f"loaded ({d})"}
                           for d in tunnels}
    if dummies:
        changes["link"] = {d: {"old": None, "new": f"{DEDICATED_KIND}, NOARP, up"}
                           for d in dummies}
    if test:
        links = dict(observed.links)
        conf = dict(observed.conf)
        for dev in tunnels:
            links[dev] = Link(-1, dev, IFF_NOARP, ARPHRD_TUNNEL)
            conf[dev] = dict(observed.conf["default"])
        for dev in dummies:
            links[dev] = Link(-1, dev, IFF_NOARP | IFF_UP, ARPHRD_ETHER)
            conf[dev] = dict(observed.conf["default"])
        return Observed(links=links, addrs=observed.addrs, conf=conf, rules=observed.rules,
                        legacy=observed.legacy), changes
    for dev in tunnels:
        proc = subprocess.run(["modprobe", TUNNEL_MODULES[dev]], capture_output=True, text=True,
                              check=False)
        observed = observe()
        if dev not in observed.links:
            raise CommandExecutionError(
                f"{dev} does not exist and 'modprobe {TUNNEL_MODULES[dev]}' did not create it "
                f"({proc.stderr.strip() or 'exit ' + str(proc.returncode)}); nothing was changed"
            )
    if dummies:
        with Netlink() as nl:
            codes = nl.batch([link_create_request(d) for d in dummies])
        for dev, code in zip(dummies, codes):
            if code and code != errno.EEXIST:
                raise CommandExecutionError(
                    f"{dev} does not exist and could not be created as a {DEDICATED_KIND} "
                    f"interface ({os.strerror(code)}; the kernel needs the dummy module); "
                    "nothing else was changed"
                )
        rules, legacy = observed.rules, observed.legacy
        observed = observe()
        observed.rules, observed.legacy = rules, legacy
    return observed, changes


def iptables_flavour(binary):
    try:
        proc = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return "nft" if "nf_tables" in proc.stdout + proc.stderr else "legacy"


def observe_previous_binaries(rules, record, paths, methods):
    """When the last run used another arptables/iptables binary whose rules live in another
    kernel table (legacy vs nft-backed), read that one too, so its rules are removed (after
    the new ones are in force) instead of being left behind."""
    options = record.get("options") or {}
    old = options.get("arptables_bin")
    if "arptables" in methods and old and old != paths["arptables_bin"]:
        current = (rules.get("arptables") or {}).get("flavour") or arptables_flavour(
            paths["arptables_bin"])
        if arptables_flavour(old) not in (None, current):
            rules["arptables_prev"] = observe_arptables(old)
    old = options.get("iptables_bin")
    if "redirect" in methods and old and old != paths["iptables_bin"]:
        if _which(old) and iptables_flavour(old) != iptables_flavour(paths["iptables_bin"]):
            rules["iptables_prev"] = observe_iptables(old)
            rules.setdefault("iptables", observe_iptables(paths["iptables_bin"]))


def _check_devices_early(spec, observed):
    """A VIP on an ARP-facing NIC is refused before any device is created for the others."""
    for vip in spec.vips:
        for held in observed.addrs_of(vip.address):
            link = observed.link_by_index(held.index)
            if link is not None and link.name != vip.device and link.arp_capable:
                raise SaltInvocationError(
                    f"vips: {vip.address} is configured on {link.name}, an ARP-facing "
                    f"interface: a real server must hold the VIP on {vip.device} only; remove "
                    f"it from {link.name} first (nothing was changed)"
                )


def _methods_in_play(spec, record):
    options = record.get("options") or {}
    return {spec.arp_method, options.get("arp_method", "sysctl"),
            *options.get("arp_methods_in_flight", [])}


def _run(spec, paths, exclusive, test):
    observed = observe()
    record = read_record(paths["state_file"])
    _check_devices_early(spec, observed)
    observed, loaded = ensure_tunnel_devices(spec, observed, test)
    created = sorted(loaded.get("link", {}))
    methods = _methods_in_play(spec, record)
    if methods != {"sysctl"}:  # the sysctl method alone runs no subprocess at all
        observed.rules = observe_rules(
            want_nft=bool(methods & {"nftables", "redirect"}) or _nft_bin() is not None,
            want_arptables="arptables" in methods,
            arptables_bin=paths["arptables_bin"],
            want_iptables="redirect" in methods and (
                paths["redirect_backend"] == "iptables" or _nft_bin() is None
                or _which(f"{paths['iptables_bin']}-save") is not None),
            iptables_bin=paths["iptables_bin"],
        )
        observe_previous_binaries(observed.rules, record, paths, methods)
    plan = plan_changes(spec, observed, record, paths, exclusive=exclusive, created=created)
    changes = {k: dict(v) for k, v in loaded.items()}
    for group, items in plan.changes().items():
        changes.setdefault(group, {}).update(items)
    ret = {"changes": changes, "warnings": plan.warnings, "test": bool(test)}
    if test:
        ret["journal"] = []
        return ret
    ret["journal"] = execute(plan, observed)
    return ret


def apply(
    vips=None,
    scope=None,
    interfaces=None,
    persist=None,
    device="lo",
    label=None,
    exclusive=False,
    test=False,
    arp_method=None,
    **paths,
):
    """
    Hold VIPs on ``lo`` (or ``device``) with ARP suppression in force first.

    vips
        Addresses (no prefix) or mappings ``{address, device, label}``. Default: this minion's
        VIPs from the ``lvs`` pillar.
    scope
        ``interfaces`` (default): ``arp_ignore=1``/``arp_announce=2`` on the ARP-facing NICs
        (those whose subnet holds the VIP). ``all``: on ``conf/all``, which also changes every
        veth and bridge (opt-in, warned about).
    interfaces
        The ARP-facing NICs, when the automatic choice is not wanted.
    persist
        Keep it across reboots: a sysctl drop-in, a VIP list and a systemd unit that applies
        the sysctls before it adds the VIPs. Default: pillar, else true.
    exclusive
        Remove managed VIPs not named here (the state does this). Default: false.
    arp_method
        ``sysctl``, ``nftables``, ``arptables`` or ``redirect`` (see the module docs and
        docs/method-*.md). Default: pillar ``lvs:realserver:arp_method``, else ``sysctl``.
        ``redirect`` needs the ports of each VIP: ``{address, ports: [80, udp/53]}``.
    test
        Return the changes a run would make and touch nothing.
    state_file, sysctl_file, vip_file, unit_file
        Paths; default from minion config ``lvs_realserver``, else the system paths.

    CLI Example:

    .. code-block:: bash

        salt '*' lvs_realserver.apply
        salt 'rs*' lvs_realserver.apply vips='[198.51.100.100]' test=True
    """
    paths = _paths(paths)
    spec = _resolve(vips, scope, interfaces, persist, device, label, arp_method)
    return _run(spec, paths, exclusive, test)


def remove(vips=None, persist=None, test=False, **paths):
    """
    Remove managed VIPs (all of them by default), VIPs first, then relax the ARP suppression
    that no remaining managed VIP needs, back to the values found before it was raised.
    Addresses this module does not manage are never touched.

    CLI Example:

    .. code-block:: bash

        salt '*' lvs_realserver.remove
        salt '*' lvs_realserver.remove vips='[198.51.100.100]' test=True
    """
    paths = _paths(paths)
    record = read_record(paths["state_file"])
    managed = record.get("vips", {})
    drop = set(managed) if vips is None else {str(v.address) for v in parse_vips(vips)}
    keep = [
        {"address": addr, "device": info["device"], "label": info.get("label"),
         "ports": [f"{p[0]}/{p[1]}" for p in info.get("ports", [])]}
        for addr, info in managed.items()
        if addr not in drop
    ]
    if persist is None:
        persist = any(os.path.exists(paths[k]) for k in
                      ("unit_file", "sysctl_file", "nft_file", "arptables_file", "iptables_file",
                       "ip6tables_file"))
    options = record.get("options") or {}
    spec = make_spec(
        keep,
        scope=options.get("scope", "interfaces"),
        interfaces=options.get("interfaces") or None,
        persist=persist,
        arp_method=options.get("arp_method", "sysctl"),
    )
    return _run(spec, paths, exclusive=True, test=test)


def managed(**paths):
    """
    The VIPs and sysctls this module manages on this host (its state record).

    CLI Example:

    .. code-block:: bash

        salt '*' lvs_realserver.managed
    """
    return read_record(_paths(paths)["state_file"])


# --------------------------------------------------------------------------------------------
# Audit (read-only)
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# What the kernel will do about ARP for a VIP because of rules (audit)
# --------------------------------------------------------------------------------------------


def observe_legacy():
    """Read-only: the ``hidden`` sysctl of patched old kernels and the ``noarp`` module."""
    hidden = {}
    try:
        names = sorted(os.listdir(PROC_CONF))
    except OSError:
        names = []
    for name in names:
        try:
            hidden[name] = _read_int(f"{PROC_CONF}/{name}/hidden")
        except (OSError, ValueError):
            continue
    noarp = os.path.exists("/sys/module/noarp")
    if not noarp:
        try:
            with open("/proc/modules", encoding="ascii", errors="replace") as fh:
                noarp = any(line.split(" ", 1)[0] == "noarp" for line in fh)
        except OSError:
            pass
    return {"hidden": hidden, "noarp": noarp}


def _empty_effect():
    return {"drop": {}, "rewrite": {}, "sender_drop": {}}


def _note(effect, kind, vip, iface, source):
    effect[kind].setdefault(iface or "*", {}).setdefault(vip, source)


def arp_effect_from_nft(objects):
    """Every arp-family table (ours, arptables-nft's ``filter``, the operator's): which VIPs a
    rule drops on input, rewrites or drops as sender on output, per interface ("*": all).
    Recognises the plain forms (``arp daddr ip <addr | @set> drop``, ``arp saddr ip ... arp
    saddr ip set X``, arptables-nft's ``xt target mangle``), in base chains and in chains they
    jump to."""
    effect = _empty_effect()
    sets, hooks, jumps, rules = {}, {}, {}, []
    for obj in objects or []:
        if "set" in obj:
            s = obj["set"]
            sets[(s.get("table"), s.get("name"))] = _elements(s.get("elem"))
        elif "chain" in obj:
            c = obj["chain"]
            if c.get("hook") in ("input", "output"):
                hooks[(c.get("table"), c.get("name"))] = c["hook"]
        elif "rule" in obj:
            rules.append(obj["rule"])
    for rule in rules:
        for e in rule.get("expr", []):
            target = (e.get("jump") or e.get("goto") or {}).get("target")
            if target:
                jumps.setdefault((rule.get("table"), target), []).append(
                    (rule.get("table"), rule.get("chain")))
    for rule in rules:
        key = (rule.get("table"), rule.get("chain"))
        hook = hooks.get(key) or next((hooks.get(src) for src in jumps.get(key, [])
                                       if hooks.get(src)), None)
        if hook is None:
            continue
        exprs = rule.get("expr", [])
        source = f"nft table arp {rule.get('table')} chain {rule.get('chain')}"

        def addrs(field_name):
            for e in exprs:
                right = _match(e, "arp", field_name)
                if right is None:
                    continue
                if isinstance(right, str) and right.startswith("@"):
                    return sets.get((rule.get("table"), right[1:]), [])
                if isinstance(right, str):
                    return [right]
                if isinstance(right, dict) and "set" in right:
                    return [v for v in right["set"] if isinstance(v, str)]
            return []

        drop = any("drop" in e for e in exprs)
        mangle = any("mangle" in e or (e.get("xt", {}).get("name") == "mangle") for e in exprs)
        if hook == "input" and drop:
            iface = next((_match(e, meta="iifname") for e in exprs if _match(e, meta="iifname")),
                         None)
            for vip in addrs("daddr ip"):
                _note(effect, "drop", vip, iface, source)
        elif hook == "output" and (drop or mangle):
            iface = next((_match(e, meta="oifname") for e in exprs if _match(e, meta="oifname")),
                         None)
            for vip in addrs("saddr ip"):
                _note(effect, "rewrite" if mangle else "sender_drop", vip, iface, source)
    return effect


def arp_effect_from_arptables_save(text, effect=None, label="arptables"):
    """The same for legacy arptables (``arptables-save``): INPUT/OUTPUT and chains they jump to."""
    effect = effect or _empty_effect()
    saved = parse_arptables_save(text)
    direction = {"INPUT": "input", "OUTPUT": "output"}
    for hook in ("INPUT", "OUTPUT"):
        for argv in saved["rules"].get(hook, []):
            target = _opt(argv, "-j")
            if target and target not in ("DROP", "ACCEPT", "mangle", "RETURN", "CLASSIFY"):
                direction.setdefault(target, direction[hook])
    for chain, hook in direction.items():
        for argv in saved["rules"].get(chain, []):
            target = _opt(argv, "-j")
            source = f"{label} chain {chain}"
            if hook == "input" and target == "DROP" and _opt(argv, "-d"):
                _note(effect, "drop", _opt(argv, "-d").split("/")[0], _opt(argv, "-i"), source)
            elif hook == "output" and target in ("DROP", "mangle") and _opt(argv, "-s"):
                kind = "rewrite" if target == "mangle" else "sender_drop"
                _note(effect, kind, _opt(argv, "-s").split("/")[0], _opt(argv, "-o"), source)
    return effect


def observe_arp_effect(arptables_bin="arptables"):
    """Read-only, for audit: the ARP rules in force, from nft and from legacy arptables."""
    objects, _error = _nft_json("list", "ruleset", "arp") if _nft_bin() else (None, None)
    effect = arp_effect_from_nft(objects)
    for binary in dict.fromkeys((arptables_bin, "arptables-legacy")):
        if _which(binary) is None or arptables_flavour(binary) != "legacy":
            continue
        try:
            arp_effect_from_arptables_save(arptables_listing(binary), effect, label=binary)
        except CommandExecutionError:
            pass
        break
    return effect


def rule_covers(effect, kind, vip, iface):
    """The rule source that covers ``vip`` on ``iface`` for ``kind``, else None."""
    for key in (iface, "*"):
        source = effect.get(kind, {}).get(key, {}).get(str(vip))
        if source:
            return source
    return None



def would_answer(vip, iface, observed, scope_host=False):
    """Would ``iface`` answer an ARP request for ``vip`` (held elsewhere on this host)?"""
    link = observed.links[iface]
    if not link.arp_capable:
        return False
    if not observed.addrs_of(vip):
        return False
    effect = observed.rules.get("arp_effect", {})
    if rule_covers(effect, "drop", vip, iface):
        return False  # an ARP input rule drops requests for it before the kernel answers
    if rule_covers(effect, "rewrite", vip, iface) or rule_covers(effect, "sender_drop", vip,
                                                                   iface):
        # the reply leaves with the VIP as sender address: the output rule rewrites (or drops)
        # it, so no neighbour learns the VIP from it (see kernel_would_reply for the rest)
        return False
    return kernel_would_reply(vip, iface, observed, scope_host)


def kernel_would_reply(vip, iface, observed, scope_host=False):
    """Would the kernel itself reply to a request for ``vip`` arriving on ``iface``?"""
    link = observed.links[iface]
    on_iface = any(a.index == link.index for a in observed.addrs_of(vip))
    value = observed.effective(iface, "arp_ignore")
    if value == 0 or 4 <= value <= 7:
        return True
    if value in (1, 2):
        return on_iface
    if value == 3:
        return not scope_host
    return False  # 8: never


def would_leak(vip, iface, observed):
    """Would ``iface`` use the VIP as sender address in its own ARP requests?"""
    link = observed.links[iface]
    if not link.arp_capable or not observed.addrs_of(vip):
        return False
    effect = observed.rules.get("arp_effect", {})
    if rule_covers(effect, "rewrite", vip, iface) or rule_covers(effect, "sender_drop", vip,
                                                                   iface):
        return False  # an ARP output rule rewrites (or drops) a VIP sender on this interface
    value = observed.effective(iface, "arp_announce")
    if value == 0:
        return True
    if value == 1:  # kept only when the VIP lies in a subnet of this interface
        return any(
            a.index == link.index and a.prefixlen < 32 and vip in a.network()
            for a in observed.addrs
            if a.address.version == 4
        )
    return False


def _finding(severity, vip, iface, message, fix):
    return {
        "severity": severity,
        "vip": str(vip) if vip is not None else None,
        "interface": iface,
        "message": message,
        "fix": fix,
    }


def audit_observed(vip_addrs, observed, interfaces=None):
    """The audit as a pure function of an observation (tested without a kernel)."""
    findings = []
    report_vips = {}
    capable = sorted(n for n, l in observed.links.items() if l.arp_capable)
    report_ifaces = {}
    for name in capable:
        report_ifaces[name] = {
            "arp_ignore": observed.effective(name, "arp_ignore"),
            "arp_announce": observed.effective(name, "arp_announce"),
            "conf": observed.conf.get(name),
            "answers_arp_for": [],
            "leaks_as_sender": [],
        }
    for vip in vip_addrs:
        held = []
        for a in observed.addrs_of(vip):
            link = observed.link_by_index(a.index)
            name = link.name if link else a.index
            held.append({"interface": name, "prefixlen": a.prefixlen,
                         "label": a.label if a.label != name else None})
        report_vips[str(vip)] = {"held_on": held}
        effect = observed.rules.get("arp_effect", {})
        covering = sorted({src for kind in ("drop", "rewrite", "sender_drop")
                           for per_if in effect.get(kind, {}).values()
                           for v, src in per_if.items() if v == str(vip)})
        if covering:
            report_vips[str(vip)]["arp_rules"] = covering
        redirected = observed.rules.get("redirected", {}).get(str(vip))
        if redirected:
            report_vips[str(vip)]["redirected_by"] = redirected
        if not held and redirected:
            findings.append(_finding(
                "info", vip, None,
                f"{vip} is not held on this host: traffic to it is redirected by {redirected} "
                "(arp_method redirect), so nothing here can answer ARP for it; the service must "
                "listen on the real address or on any address",
                "nothing to do (switch arp_method to hold the VIP instead)",
            ))
        elif not held:
            findings.append(_finding(
                "warning", vip, None,
                f"{vip} is not configured on this host: a DR/TUN real server drops traffic for it",
                f"ip addr add {vip}/{32 if vip.version == 4 else 128} dev lo "
                "(or lvs_realserver.apply)",
            ))
        for h in held:
            full = 32 if vip.version == 4 else 128
            if h["interface"] == "lo" and h["prefixlen"] != full:
                findings.append(_finding(
                    "error", vip, "lo",
                    f"{vip}/{h['prefixlen']} on lo makes the whole /{h['prefixlen']} local: "
                    "this host treats every address in it as itself",
                    f"ip addr del {vip}/{h['prefixlen']} dev lo; ip addr add {vip}/{full} dev lo",
                ))
            if h["interface"] in report_ifaces:
                findings.append(_finding(
                    "error", vip, h["interface"],
                    f"{vip} is configured on {h['interface']}, an ARP interface: it is announced "
                    "and answered there whatever the sysctls say",
                    f"move it to lo as /{full}: ip addr del {vip}/{h['prefixlen']} dev "
                    f"{h['interface']}; ip addr add {vip}/{full} dev lo",
                ))
        if vip.version == 6:
            for a in observed.addrs_of(vip):
                link = observed.link_by_index(a.index)
                if link is not None and not link.arp_capable and not a.deprecated:
                    findings.append(_finding(
                        "warning", vip, link.name,
                        f"{vip} on {link.name} is a preferred address: IPv6 source selection may "
                        "pick it for this host's own connections (replies from the VIP reach "
                        "the director's clients, not the director)",
                        f"ip -6 addr change {vip}/128 dev {link.name} preferred_lft 0 "
                        "(deprecated: still accepted, never chosen as a source)",
                    ))
        for h in held:
            if vip.version == 4 and h["interface"] == "tunl0":
                findings.append(_tun_mtu_finding(vip, observed, interfaces))
        if vip.version != 4:
            continue
        facing = interfaces or arp_facing_interfaces(Vip(vip), observed)
        for name in capable:
            # Errors on the NICs where requests for the VIP arrive; elsewhere (container veths,
            # other subnets) a request for it is unlikely, so it is a warning.
            severity = "error" if name in facing else "warning"
            if would_answer(vip, name, observed):
                report_ifaces[name]["answers_arp_for"].append(str(vip))
                findings.append(_finding(
                    severity, vip, name,
                    f"{name} answers ARP for {vip} (effective arp_ignore "
                    f"{observed.effective(name, 'arp_ignore')} = max(all "
                    f"{observed.conf['all']['arp_ignore']}, {name} "
                    f"{observed.conf.get(name, {}).get('arp_ignore', 0)})): it races the director",
                    f"sysctl -w {sysctl_name(name, 'arp_ignore')}=1",
                ))
            effect = observed.rules.get("arp_effect", {})
            if (not would_answer(vip, name, observed)
                    and not rule_covers(effect, "drop", vip, name)
                    and kernel_would_reply(vip, name, observed)
                    and (rule_covers(effect, "rewrite", vip, name)
                         or rule_covers(effect, "sender_drop", vip, name))):
                findings.append(_finding(
                    "warning", vip, name,
                    f"{name} still replies to ARP requests for {vip} (no input drop rule, "
                    f"effective arp_ignore {observed.effective(name, 'arp_ignore')}); only the "
                    "output rule keeps the VIP out of the reply, rewriting its sender address: "
                    "no neighbour learns the VIP, but the requester gets a reply it did not ask "
                    "for",
                    "re-apply the state to restore the input drop (or set arp_ignore=1)",
                ))
            if would_leak(vip, name, observed):
                report_ifaces[name]["leaks_as_sender"].append(str(vip))
                dropped = rule_covers(observed.rules.get("arp_effect", {}), "drop", vip, name)
                note = (f" ({dropped} drops requests for it, but no output rule rewrites it as "
                        f"sender on {name}: a rule method needs both)" if dropped else "")
                findings.append(_finding(
                    severity, vip, name,
                    f"{name} may send ARP requests with {vip} as sender (effective arp_announce "
                    f"{observed.effective(name, 'arp_announce')}): neighbours then map the VIP "
                    f"to this host{note}",
                    f"sysctl -w {sysctl_name(name, 'arp_announce')}=2"
                    + (" or re-apply the state to restore the output rule" if dropped else ""),
                ))
    for name in capable:
        if observed.effective(name, "arp_ignore") == 8:
            findings.append(_finding(
                "warning", None, name,
                f"effective arp_ignore on {name} is 8: it answers ARP for none of its own "
                "addresses either, so the director cannot reach this real server's RIP",
                f"sysctl -w {sysctl_name(name, 'arp_ignore')}=1 (and all <= 1)",
            ))
    for conf in ("lo", "default"):
        values = observed.conf.get(conf, {})
        for key in ARP_KEYS:
            value = values.get(key, 0)
            if not value:
                continue
            if conf == "lo":
                msg = (f"{sysctl_name('lo', key)}={value} has no effect: ARP requests arrive on "
                       "the NIC, and the kernel reads max(all, <that NIC>)")
            else:
                lower = [n for n in capable if observed.conf.get(n, {}).get(key, 0) < value]
                if not lower:
                    continue
                msg = (f"{sysctl_name('default', key)}={value} only seeds interfaces created "
                       f"later; existing {', '.join(lower)} keep their own value")
            findings.append(_finding(
                "info", None, conf, msg,
                f"set it on the ARP-facing NIC instead: sysctl -w "
                f"{sysctl_name('<nic>', key)}={value}",
            ))
    findings.extend(legacy_findings(observed.legacy))
    ok = not any(f["severity"] == "error" for f in findings)
    return {"ok": ok, "findings": findings, "vips": report_vips, "interfaces": report_ifaces}


IPIP_OVERHEAD = 20


def _tun_mtu_finding(vip, observed, interfaces=None):
    """IPIP adds 20 bytes between director and real server: advice with this host's numbers."""
    tunl = observed.links.get("tunl0")
    nics = [observed.links[n] for n in (interfaces or arp_facing_interfaces(Vip(vip), observed))
            if n in observed.links]
    nic = nics[0] if nics else None
    nic_mtu = nic.mtu if nic and nic.mtu else 1500
    mss = nic_mtu - IPIP_OVERHEAD - 40
    return _finding(
        "info", vip, "tunl0",
        f"TUN: IPIP adds {IPIP_OVERHEAD} bytes. A full-size {nic_mtu}-byte packet from a client "
        f"becomes {nic_mtu + IPIP_OVERHEAD} bytes between the director and this host "
        f"({nic.name if nic else 'the NIC'} MTU {nic_mtu}, tunl0 MTU "
        f"{tunl.mtu if tunl and tunl.mtu else 'unknown'}); with DF set the director answers "
        "ICMP 'fragmentation needed' (IPVS pmtu_disc), which many networks drop: large "
        "transfers then hang",
        f"clamp the TCP MSS to {mss} on the director side (iptables -t mangle -A FORWARD -p tcp "
        f"--tcp-flags SYN,RST SYN -j TCPMSS --set-mss {mss}, or at the edge), or give the "
        f"director-to-real-server path an MTU of at least {nic_mtu + IPIP_OVERHEAD}, or let "
        "IPVS fragment (net.ipv4.vs.pmtu_disc=0 on the director)",
    )


def legacy_findings(legacy):
    """Read-only report of the pre-2.6.4 mechanisms: the hidden patch and the noarp module."""
    out = []
    hidden = (legacy or {}).get("hidden") or {}
    if hidden:
        on = sorted(name for name, value in hidden.items() if value)
        out.append(_finding(
            "info", None, ",".join(on) or "all",
            "this kernel has the old 'hidden' patch (/proc/sys/net/ipv4/conf/*/hidden); "
            + (f"hidden=1 on {', '.join(on)}" if on else "hidden is 0 everywhere")
            + ". It is reported, never written: arp_ignore/arp_announce (the sysctl method) "
            "supersede it, and hidden only covers broadcast requests arriving on another device",
            "nothing required; to rely on the sysctl method alone set hidden back to 0",
        ))
    if (legacy or {}).get("noarp"):
        out.append(_finding(
            "info", None, None,
            "the noarp kernel module (MasarLabs NoArp) is loaded: it filters ARP for VIPs "
            "with rules of its own, which this audit cannot read; the findings above ignore it",
            "nothing required; remove it (rmmod noarp) once another method is in force",
        ))
    return out


def _local_vips(observed):
    """Every address on lo and tunl0 apart from the loopback ones."""
    out = []
    for dev in ("lo", "tunl0"):
        link = observed.links.get(dev)
        if link is None:
            continue
        for a in observed.addrs:
            if a.index == link.index and not a.address.is_loopback and a.address not in out:
                out.append(a.address)
    return out


def audit(vips=None, interfaces=None, **paths):
    """
    Read-only check of the ARP behaviour of this host for its VIPs. Safe on any host.

    For each VIP (from ``vips``, else this minion's pillar, else every non-loopback address on
    ``lo``/``tunl0``): where it is held and with what prefix; for every ARP-capable interface the
    effective ``arp_ignore``/``arp_announce`` and whether it would answer ARP for the VIP or
    use it as ARP sender. Returns ``{"ok": bool, "findings": [{severity, vip, interface,
    message, fix}], "vips": ..., "interfaces": ...}``; ``ok`` is false when any finding is an
    error.

    CLI Example:

    .. code-block:: bash

        salt-call --local lvs_realserver.audit
        salt 'rs*' lvs_realserver.audit vips='[198.51.100.100]'
    """
    paths = _paths(paths)
    observed = observe()
    observed.legacy = observe_legacy()
    rules = observe_rules(want_nft=_nft_bin() is not None, want_iptables=True,
                          iptables_bin=paths["iptables_bin"])
    redirected = {}
    for family in ("ip", "ip6"):
        for addr in (rules.get("redirect") or {}).get(family) or {}:
            redirected.setdefault(addr, f"table {family} {NFT_TABLE}")
        model = (rules.get("iptables") or {}).get(family) or {}
        for addr in model:
            binary = iptables_binary(paths["iptables_bin"], 4 if family == "ip" else 6)
            redirected.setdefault(addr, f"{binary} nat chain {IPT_CHAIN}")
    redirected.pop("incomplete", None)
    observed.rules = {"arp_effect": observe_arp_effect(paths["arptables_bin"]),
                      "redirected": redirected}
    if vips is not None:
        addrs = [v.address for v in parse_vips(vips)]
        source = "arguments"
    else:
        addrs = []
        source = "lo/tunl0"
        try:
            pillar_vips = _from_pillar()["vips"] if __pillar__.get("lvs") else []  # pylint: disable=undefined-variable
        except (NameError, KeyError, SaltInvocationError):
            pillar_vips = []
        if pillar_vips:
            addrs = [ipaddress.ip_address(v["address"]) for v in pillar_vips]
            source = "pillar"
        else:
            addrs = _local_vips(observed)
            addrs += [ipaddress.ip_address(a) for a in redirected
                      if ipaddress.ip_address(a) not in addrs]
    if isinstance(interfaces, str):
        interfaces = [i.strip() for i in interfaces.split(",") if i.strip()]
    result = audit_observed(addrs, observed, interfaces)
    result["source"] = source
    return result
