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
}
SYSCTL_BIN = "/sbin/sysctl"
IP_BIN = "/sbin/ip"


def __virtual__():
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
IFA_F_NODAD = 0x02
IFLA_IFNAME = 3
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


def addr_request(kind, addr, prefixlen, index, label=None):
    """The rtnetlink payload that adds (RTM_NEWADDR) or deletes (RTM_DELADDR) one address."""
    packed = addr.packed
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    flags = IFA_F_NODAD if addr.version == 6 else 0
    payload = _IFADDRMSG.pack(family, prefixlen, flags, 0, index)
    payload += _rta(IFA_LOCAL, packed) + _rta(IFA_ADDRESS, packed)
    if label and addr.version == 4 and kind == RTM_NEWADDR:
        payload += _rta(IFA_LABEL, label.encode() + b"\0")
    nl_flags = NLM_F_CREATE | NLM_F_EXCL if kind == RTM_NEWADDR else 0
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

    def network(self):
        return ipaddress.ip_network(f"{self.address}/{self.prefixlen}", strict=False)


@dataclass
class Observed:
    """One reading of the kernel: links, addresses, and the ARP sysctls of every conf dir."""

    links: dict  # name -> Link
    addrs: list  # [Addr]
    conf: dict  # conf dir name (all, default, lo, eth0...) -> {"arp_ignore": int, ...}

    def link_by_index(self, index):
        for link in self.links.values():
            if link.index == index:
                return link
        return None

    def addrs_of(self, address):
        return [a for a in self.addrs if a.address == address]

    def effective(self, iface, key):
        """The value the kernel uses on ``iface``: max(conf/all, conf/<iface>)."""
        return max(self.conf["all"].get(key, 0), self.conf.get(iface, {}).get(key, 0))


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
            name = _attrs(body, _IFINFOMSG.size).get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
            links[name] = Link(index, name, flags, ltype)
        addrs = []
        for body in nl.dump(RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0)):
            family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(body)
            attrs = _attrs(body, _IFADDRMSG.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            label = attrs.get(IFA_LABEL)
            addrs.append(
                Addr(
                    ipaddress.ip_address(raw),
                    prefixlen,
                    index,
                    label.rstrip(b"\0").decode() if label else None,
                )
            )
    conf = read_arp_conf(["all", "default", *links])
    return Observed(links=links, addrs=addrs, conf=conf)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vip:
    address: object
    device: str = "lo"
    label: str = None

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
        out.append(Vip(address, dev, lab or None))
    seen = set()
    for vip in out:
        if vip.address in seen:
            errors.append(f"{key}: {vip.address} is listed twice")
        seen.add(vip.address)
    if errors:
        raise SaltInvocationError("\n".join(errors))
    return tuple(out)


def make_spec(vips, scope="interfaces", interfaces=None, persist=True, device="lo", label=None):
    errors = []
    if scope not in ("interfaces", "all"):
        errors.append(f"scope: '{scope}' is not one of interfaces, all")
    if isinstance(interfaces, str):
        interfaces = [i.strip() for i in interfaces.split(",") if i.strip()]
    if interfaces is not None and not all(isinstance(i, str) and i for i in interfaces):
        errors.append("interfaces: expected a list of interface names")
    if errors:
        raise SaltInvocationError("\n".join(errors))
    return Spec(
        vips=parse_vips(vips, device=device, label=label),
        scope=scope,
        interfaces=tuple(interfaces) if interfaces else None,
        persist=bool(persist),
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
    capable = {l.index: l for l in observed.links.values() if l.arp_capable}
    onlink = set()
    with_v4 = set()
    for addr in observed.addrs:
        link = capable.get(addr.index)
        if link is None or addr.address.version != 4:
            continue
        with_v4.add(link.name)
        if addr.prefixlen < 32 and vip.address in addr.network():
            onlink.add(link.name)
    return sorted(onlink or with_v4)


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
            group = {"addr_add": "address", "addr_del": "address"}.get(act.kind, act.kind)
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


def plan_changes(spec, observed, record, paths, exclusive=True):
    """Decide, without touching anything, which actions converge the host to ``spec``.

    Order (the safety rule lives here, once):
    1. raise ARP suppression that any desired VIP needs (live, then the boot drop-in);
    2. record the VIPs about to be managed (so a crash never leaves an unmanaged VIP);
    3. add missing VIPs (and the boot VIP list);
    4. remove managed VIPs no longer desired (``exclusive``), then relax suppression that no
       remaining managed VIP needs, back to the value found before this module raised it;
    5. write the final record.
    """
    errors = []
    warnings = []
    record = record or empty_record()
    actions = []
    desired = {str(v.address): v for v in spec.vips}
    managed = dict(record.get("vips", {}))

    for vip in spec.vips:
        if vip.device not in observed.links:
            hint = " (load the ipip module: it creates tunl0)" if vip.device == "tunl0" else ""
            errors.append(f"vips: {vip.address}: device '{vip.device}' does not exist{hint}")
            continue
        for held in observed.addrs_of(vip.address):
            link = observed.link_by_index(held.index)
            if link is not None and link.name != vip.device and link.arp_capable:
                errors.append(
                    f"vips: {vip.address} is configured on {link.name}, an ARP-facing interface:"
                    f" a real server must hold the VIP on {vip.device} only; remove it from "
                    f"{link.name} first (nothing was changed)"
                )

    # 1. suppression
    needed = _needed_conf(spec.vips, observed, spec, errors)
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
    for vip in spec.vips:
        link = observed.links[vip.device]
        if vip.device == "lo":
            continue
        if not link.flags & IFF_UP and vip.device not in brought_up:
            brought_up.add(vip.device)
            actions.append(Action("link", vip.device, "down", "up", {"index": link.index}))
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
    keep = dict(desired)
    if not exclusive:
        for addr, info in managed.items():
            keep.setdefault(
                addr, Vip(ipaddress.ip_address(addr), info["device"], info.get("label"))
            )
    still_needed = _needed_conf(tuple(keep.values()), observed, spec, [])
    tunnel_devices = {v.device for v in keep.values() if v.device != "lo" and v.address.version == 4}

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

    files = {}
    if spec.persist:
        files["raise"] = render_sysctl_file({**_persisted_sysctls(paths), **persist_values})
    # 2. record the intent before any address appears
    record_after = empty_record()
    for addr, vip in keep.items():
        record_after["vips"][addr] = {"device": vip.device, "label": vip.label}
    intent = empty_record()
    intent["vips"] = {**managed, **record_after["vips"]}
    intent["sysctl"] = rec_sysctl
    intent["options"] = record.get("options", {})

    if spec.persist:
        _file_action(actions, paths["sysctl_file"], files["raise"])
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
        elif addr not in managed:
            actions.append(Action("address", vip.key, "present, unmanaged", "present, managed"))

    # 4. remove VIPs no longer desired, then relax
    if exclusive:
        for addr, info in sorted(managed.items()):
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
    if spec.persist:
        vip_text = render_vip_file(keep.values())
        _file_action(actions, paths["vip_file"], vip_text if keep else None)
        unit_text = render_unit(paths) if keep else None
        _file_action(actions, paths["unit_file"], unit_text)
        _wants_action(actions, paths["unit_file"], bool(keep))
    actions.extend(relax)
    for act in relax:
        rec_sysctl.pop(act.target, None)
    for name, info in list(rec_sysctl.items()):
        conf = info["path"].split("/")[-2]
        if not needed(info["path"]) and observed.conf.get(conf) is None:
            rec_sysctl.pop(name)  # interface gone
        elif not needed(info["path"]) and any(w.startswith(name + " ") for w in warnings):
            rec_sysctl.pop(name)  # changed by someone else: no longer ours
    if spec.persist:
        final_persist = {
            name: value
            for name, value in {**_persisted_sysctls(paths), **persist_values}.items()
            if needed(_sysctl_path(name))
        }
        text = render_sysctl_file(final_persist) if final_persist else None
        _file_action(actions, paths["sysctl_file"], text)
    else:
        for key in ("vip_file", "unit_file", "sysctl_file"):
            _file_action(actions, paths[key], None)
        _wants_action(actions, paths["unit_file"], False)

    record_after["sysctl"] = rec_sysctl
    record_after["options"] = {"scope": spec.scope, "interfaces": list(spec.interfaces or [])}
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


def render_vip_file(vips):
    lines = [HEADER, "# VIPs restored at boot by lvs-realserver.service, after the ARP sysctls.\n"]
    for vip in sorted(vips, key=lambda v: (v.address.version, v.address)):
        line = f"address replace {vip.address}/{vip.prefixlen} dev {vip.device}"
        if vip.address.version == 4 and vip.label:
            line += f" label {vip.label}"
        if vip.address.version == 6:
            line += " nodad"
        lines.append(line + "\n")
    return "".join(lines)


def render_unit(paths):
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
        f"ExecStart={SYSCTL_BIN} -q -e -p {paths['sysctl_file']}\n"
        f"ExecStart={IP_BIN} -force -batch {paths['vip_file']}\n"
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
                if act.kind in ("addr_add", "addr_del"):
                    j = i
                    while j < len(actions) and actions[j].kind in ("addr_add", "addr_del"):
                        j += 1
                    group = actions[i:j]
                    requests = []
                    for a in group:
                        link = observed.links[a.data["device"]]
                        kind = RTM_NEWADDR if a.kind == "addr_add" else RTM_DELADDR
                        requests.append(
                            addr_request(
                                kind, a.data["address"], a.data["prefixlen"], link.index,
                                a.data.get("label"),
                            )
                        )
                    codes = nl.batch(requests)
                    for a, code in zip(group, codes):
                        benign = (a.kind == "addr_add" and code == errno.EEXIST) or (
                            a.kind == "addr_del" and code == errno.EADDRNOTAVAIL
                        )
                        if code and not benign:
                            raise _StepFailed(a, OSError(code, os.strerror(code)))
                        journal.append(f"{'add' if a.kind == 'addr_add' else 'del'} {a.target}")
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
                    elif act.kind == "file":
                        _apply_file(act)
                        journal.append(f"file {act.target}")
                    elif act.kind == "record":
                        text = json.dumps(act.new, indent=1, sort_keys=True)
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
    return paths


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


def _resolve(vips, scope, interfaces, persist, device, label):
    """Arguments win; what they leave out comes from this minion's pillar."""
    need_pillar = vips is None or scope is None or persist is None
    conf = _from_pillar() if need_pillar else {}
    if conf and conf.get("arp_method", "sysctl") != "sysctl":
        raise SaltInvocationError(
            f"lvs:realserver:arp_method: '{conf['arp_method']}' is not available in this version"
        )
    return make_spec(
        vips=conf.get("vips", []) if vips is None else vips,
        scope=scope or conf.get("scope", "interfaces"),
        interfaces=interfaces if interfaces is not None else conf.get("interfaces"),
        persist=conf.get("persist", True) if persist is None else persist,
        device=device,
        label=label,
    )


TUNNEL_MODULES = {"tunl0": "ipip"}
ARPHRD_TUNNEL = 768


def ensure_tunnel_devices(spec, observed, test):
    """Load the module that creates a missing tunnel device (tunl0: ipip).

    In test mode nothing is loaded: the plan is made against the device the module would
    create (down, NOARP, sysctls from conf/default), so the prediction stays exact.
    """
    missing = sorted(
        {v.device for v in spec.vips if v.device in TUNNEL_MODULES} - set(observed.links)
    )
    if not missing:
        return observed, {}
    changes = {
        "kmod": {TUNNEL_MODULES[d]: {"old": "not loaded", "new": f"loaded ({d})"} for d in missing}
    }
    if test:
        links = dict(observed.links)
        conf = dict(observed.conf)
        for dev in missing:
            links[dev] = Link(-1, dev, IFF_NOARP, ARPHRD_TUNNEL)
            conf[dev] = dict(observed.conf["default"])
        return Observed(links=links, addrs=observed.addrs, conf=conf), changes
    for dev in missing:
        proc = subprocess.run(["modprobe", TUNNEL_MODULES[dev]], capture_output=True, text=True,
                              check=False)
        observed = observe()
        if dev not in observed.links:
            raise CommandExecutionError(
                f"{dev} does not exist and 'modprobe {TUNNEL_MODULES[dev]}' did not create it "
                f"({proc.stderr.strip() or 'exit ' + str(proc.returncode)}); nothing was changed"
            )
    return observed, changes


def _run(spec, paths, exclusive, test):
    observed = observe()
    observed, loaded = ensure_tunnel_devices(spec, observed, test)
    record = read_record(paths["state_file"])
    plan = plan_changes(spec, observed, record, paths, exclusive=exclusive)
    changes = {**loaded, **plan.changes()}
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
    spec = _resolve(vips, scope, interfaces, persist, device, label)
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
        {"address": addr, "device": info["device"], "label": info.get("label")}
        for addr, info in managed.items()
        if addr not in drop
    ]
    if persist is None:
        persist = os.path.exists(paths["unit_file"]) or os.path.exists(paths["sysctl_file"])
    options = record.get("options") or {}
    spec = make_spec(
        keep,
        scope=options.get("scope", "interfaces"),
        interfaces=options.get("interfaces") or None,
        persist=persist,
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


def would_answer(vip, iface, observed, scope_host=False):
    """Would ``iface`` answer an ARP request for ``vip`` (held elsewhere on this host)?"""
    link = observed.links[iface]
    if not link.arp_capable:
        return False
    if not observed.addrs_of(vip):
        return False
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
        if not held:
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
            if would_leak(vip, name, observed):
                report_ifaces[name]["leaks_as_sender"].append(str(vip))
                findings.append(_finding(
                    severity, vip, name,
                    f"{name} may send ARP requests with {vip} as sender (effective arp_announce "
                    f"{observed.effective(name, 'arp_announce')}): neighbours then map the VIP "
                    "to this host",
                    f"sysctl -w {sysctl_name(name, 'arp_announce')}=2",
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
    ok = not any(f["severity"] == "error" for f in findings)
    return {"ok": ok, "findings": findings, "vips": report_vips, "interfaces": report_ifaces}


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


def audit(vips=None, interfaces=None):
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
    observed = observe()
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
    if isinstance(interfaces, str):
        interfaces = [i.strip() for i in interfaces.split(",") if i.strip()]
    result = audit_observed(addrs, observed, interfaces)
    result["source"] = source
    return result
