"""
LVS directors: the IPVS table, the VIPs and their announcement, from the ``lvs`` pillar.

The director owns and announces the VIP and forwards to the real servers through IPVS in
direct routing (DR), IP tunnel (TUN) or NAT mode. Like ``lvs_realserver`` every run goes through
four steps:

- model: this director's services from the pillar become a desired table (one IPVS service
  per VIP and port, or per firewall mark), validated against this kernel (schedulers, tunnel
  types, the director's interface);
- observe: the IPVS table by generic netlink dumps, the VIPs on the interface, the IPVS sysctls;
- plan: a pure function that orders the changes: services and real servers are added or edited
  in place (never deleted and re-added: that drops connections), then the VIP goes on and is
  announced; entries the pillar no longer names go after the VIP they served;
- apply: the IPVS requests go to the kernel in batches over one netlink socket; the first
  failure stops the run and is reported with what was and was not applied.

IPVS is spoken over generic netlink with the standard library (``struct`` and ``socket``), in
batches. pyroute2 0.9.7's ``IPVS`` API sends one request per call through its asyncio core
(about 0.3 ms each on a fast host), which alone makes 1000 services of 10 real servers take
seconds; its ``IPVSDest.from_message`` also misreports the forwarding method and its
``"update"`` deletes. pyroute2 adds and removes the VIPs on the director's interface; reading
them is one rtnetlink dump with the standard library.

A run with nothing to do ends before all four steps: see "The no-op check" below (``verify``).

Where the module keeps its record (minion config, optional):

.. code-block:: yaml

    lvs_director:
      state_file: /var/lib/saltext-lvs/director.json

:depends: Linux with IPVS (``ip_vs``; loaded on demand), pyroute2
:platform: Linux
"""

import errno
import hashlib
import ipaddress
import json
import logging
import marshal
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    HAS_PYROUTE2 = True
except ImportError:  # pragma: no cover - reported by __virtual__
    HAS_PYROUTE2 = False

log = logging.getLogger(__name__)

__virtualname__ = "lvs_director"

DEFAULT_PATHS = {"state_file": "/var/lib/saltext-lvs/director.json"}
# quick: a run whose pillar, record, VIPs, sysctls and /proc/net/ip_vs are as the last run left
# them ends there (see "The no-op check"); full: every run reads the whole table over netlink
VERIFY = ("quick", "full")
PROC_IPVS = "/proc/net/ip_vs"
CHECK_FORMAT = 2
PROC_VS = "/proc/sys/net/ipv4/vs"


def __virtual__():
    if not sys.platform.startswith("linux"):
        return False, "lvs_director: IPVS exists on Linux only"
    if not HAS_PYROUTE2:
        return False, "lvs_director: pyroute2 is not installed"
    return __virtualname__


# --------------------------------------------------------------------------------------------
# Generic netlink and the IPVS message format (include/uapi/linux/ip_vs.h)
# --------------------------------------------------------------------------------------------

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
_HDR = struct.Struct("=IHHII")
_GENL = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
RTM_GETADDR = 22
_IFADDRMSG = struct.Struct("=BBBBI")
IFA_ADDRESS, IFA_LOCAL = 1, 2

IPVS_GENL_VERSION = 1
CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
ATTR_SERVICE, ATTR_DEST = 1, 2
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT = 1, 2, 3, 4
DEST_U_THRESH, DEST_L_THRESH, DEST_ACTIVE_CONNS, DEST_INACT_CONNS = 5, 6, 7, 8
DEST_PERSIST_CONNS, DEST_ADDR_FAMILY = 9, 11
DEST_TUN_TYPE, DEST_TUN_PORT, DEST_TUN_FLAGS = 13, 14, 15

SVC_F_PERSISTENT = 0x1
SVC_F_HASHED = 0x2  # kernel bookkeeping, never compared
SVC_F_ONEPACKET = 0x4
SVC_F_SCHED = {1: 0x8, 2: 0x10, 3: 0x20}
FWD = {"nat": 0, "tun": 2, "dr": 3}
FWD_NAME = {v: k for k, v in FWD.items()}
TUN_TYPE = {"ipip": 0, "gue": 1, "gre": 2}
TUN_TYPE_NAME = {v: k for k, v in TUN_TYPE.items()}
TUN_CSUM = {"nocsum": 0, "csum": 1, "remcsum": 2}
TUN_CSUM_NAME = {v: k for k, v in TUN_CSUM.items()}
# first kernel with each tunnel type (tun_type: 5.2, gre: 5.3)
TUN_TYPE_KERNEL = {"ipip": (0, 0), "gue": (5, 2), "gre": (5, 3)}
PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
PROTO_NAME = {v: k for k, v in PROTO.items()}
BATCH = 128


def _align(n):
    return (n + 3) & ~3


def nla(kind, payload):
    length = _NLA.size + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def nested(kind, payload):
    return nla(kind | NLA_F_NESTED, payload)


def parse_attrs(data, offset=0):
    attrs = {}
    while offset + 4 <= len(data):
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += _align(length)
    return attrs


def _u16(b):
    return struct.unpack("=H", b[:2])[0]


def _u32(b):
    return struct.unpack("=I", b[:4])[0]


def _be16(b):
    return struct.unpack("!H", b[:2])[0]


class IPVSNotAvailable(CommandExecutionError):
    pass


class NetlinkSocket:
    """A raw netlink socket (``protocol``: generic or route) for dumps and acked batches."""

    def __init__(self, protocol):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
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
            data = self.sock.recv(1 << 18)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, _flags, seq, _pid = _HDR.unpack_from(data, offset)
                yield kind, seq, data[offset + _HDR.size : offset + length]
                offset += _align(length)

    def request(self, kind, body, flags):
        self.seq += 1
        self.sock.send(_HDR.pack(_HDR.size + len(body), kind, flags | NLM_F_REQUEST, self.seq, 0)
                       + body)
        return self.seq

    def dump_bodies(self, kind, body, what="netlink dump"):
        """The bodies of every message a dump request answers with."""
        seq = self.request(kind, body, NLM_F_DUMP)
        out = []
        for mkind, mseq, mbody in self._messages():
            if mseq != seq:
                continue
            if mkind == NLMSG_DONE:
                return out
            if mkind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", mbody)[0]
                raise OSError(code, f"{what}: {os.strerror(code)}")
            out.append(mbody)


class Genl(NetlinkSocket):
    """A generic netlink socket bound to the IPVS family, with dumps and batched requests."""

    def __init__(self):
        super().__init__(NETLINK_GENERIC)
        self.family = self._resolve("IPVS")

    def _send(self, family, cmd, payload, flags, version=IPVS_GENL_VERSION):
        return self.request(family, _GENL.pack(cmd, version, 0) + payload, flags)

    def _resolve(self, name):
        """The family id of ``name``; asking makes the kernel load ip_vs when it can."""
        seq = self._send(GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                         nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"), NLM_F_ACK, 1)
        family = None
        for kind, mseq, body in self._messages():
            if mseq != seq:
                continue
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", body)[0]
                if code == 0:
                    break
                raise IPVSNotAvailable(
                    f"IPVS is not available in this kernel ({os.strerror(code)}): "
                    "load ip_vs (modprobe ip_vs) or use a kernel with CONFIG_IP_VS"
                )
            if kind == GENL_ID_CTRL:
                attrs = parse_attrs(body, _GENL.size)
                family = _u16(attrs[CTRL_ATTR_FAMILY_ID])
        if family is None:
            raise IPVSNotAvailable("IPVS generic netlink family not found")
        return family

    def get(self, cmd, payload):
        """The attributes of the one message a (non-dump) get request answers with."""
        seq = self._send(self.family, cmd, payload, 0)
        for kind, mseq, body in self._messages():
            if mseq != seq:
                continue
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", body)[0]
                raise OSError(code, f"IPVS get: {os.strerror(code)}")
            return parse_attrs(body, _GENL.size)
        return None  # pragma: no cover - _messages only ends by raising

    def dump(self, cmd, payload=b""):
        body = _GENL.pack(cmd, IPVS_GENL_VERSION, 0) + payload
        return [parse_attrs(b, _GENL.size)
                for b in self.dump_bodies(self.family, body, "IPVS dump")]

    def batch(self, requests):
        """Send ``(cmd, payload)`` requests with acks; return the errno of each (0 = done)."""
        results = []
        for start in range(0, len(requests), BATCH):
            chunk = requests[start : start + BATCH]
            buf = bytearray()
            first = self.seq + 1
            for cmd, payload in chunk:
                self.seq += 1
                body = _GENL.pack(cmd, IPVS_GENL_VERSION, 0) + payload
                buf += _HDR.pack(_HDR.size + len(body), self.family,
                                 NLM_F_REQUEST | NLM_F_ACK, self.seq, 0)
                buf += body
            self.sock.send(bytes(buf))
            codes = {}
            for kind, mseq, body in self._messages():
                if kind == NLMSG_ERROR and first <= mseq <= self.seq:
                    codes[mseq] = -struct.unpack_from("=i", body)[0]
                    if len(codes) == len(chunk):
                        break
            results.extend(codes[s] for s in range(first, self.seq + 1))
            if any(results):
                break  # later chunks would run against a table in an unknown state
        return results


# --------------------------------------------------------------------------------------------
# Table model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ServiceKey:
    """What identifies an IPVS virtual service: protocol, VIP and port, or a firewall mark."""

    af: int
    protocol: str  # tcp | udp | sctp | fwmark
    addr: str = ""  # empty for fwmark services
    port: int = 0
    fwmark: int = 0
    # the VIP a fwmark service is for (the firewall marks traffic to it); not part of the key
    vip: str = field(default="", compare=False)

    def __str__(self):
        if self.protocol == "fwmark":
            return f"fwmark {self.fwmark} ipv{4 if self.af == socket.AF_INET else 6}"
        host = self.addr if self.af == socket.AF_INET else f"[{self.addr}]"
        return f"{self.protocol} {host}:{self.port}"


@dataclass(frozen=True)
class Service:
    key: ServiceKey
    scheduler: str = "wlc"
    flags: int = 0
    timeout: int = 0
    netmask: int = 32  # prefix length (IPv4: sent as a mask)

    def attrs(self):
        out = {"scheduler": self.scheduler, "persistence": self.timeout}
        if self.flags & ~SVC_F_PERSISTENT:
            out["flags"] = _flag_names(self.flags)
        if self.timeout:
            out["persistence_netmask"] = self.netmask
        return out


@dataclass(frozen=True)
class Dest:
    addr: str
    port: int
    fwd: str = "dr"
    weight: int = 1
    u_thresh: int = 0
    l_thresh: int = 0
    tun_type: str = "ipip"
    tun_port: int = 0
    tun_csum: str = "nocsum"
    # observed only
    active: int = field(default=0, compare=False)
    inactive: int = field(default=0, compare=False)
    persistent: int = field(default=0, compare=False)

    @property
    def key(self):
        return (self.addr, self.port)

    def describe(self):
        host = self.addr if ":" not in self.addr else f"[{self.addr}]"
        return f"{host}:{self.port}"

    def attrs(self):
        out = {"forward": self.fwd, "weight": self.weight}
        if self.u_thresh or self.l_thresh:
            out.update(upper_threshold=self.u_thresh, lower_threshold=self.l_thresh)
        if self.fwd == "tun" and (self.tun_type != "ipip" or self.tun_port):
            out.update(tun_type=self.tun_type, tun_port=self.tun_port, tun_csum=self.tun_csum)
        return out


def _flag_names(flags):
    names = []
    if flags & SVC_F_ONEPACKET:
        names.append("one-packet")
    for n, bit in SVC_F_SCHED.items():
        if flags & bit:
            names.append(f"flag-{n}")
    return names


def _addr16(addr, af):
    if ":" in addr:
        return socket.inet_pton(socket.AF_INET6, addr)
    packed = socket.inet_pton(socket.AF_INET, addr)
    return packed + b"\0" * 12 if af == socket.AF_INET else packed


def encode_service_key(key):
    parts = [nla(SVC_AF, struct.pack("=H", key.af))]
    if key.protocol == "fwmark":
        parts.append(nla(SVC_FWMARK, struct.pack("=I", key.fwmark)))
    else:
        parts.append(nla(SVC_PROTOCOL, struct.pack("=H", PROTO[key.protocol])))
        parts.append(nla(SVC_ADDR, _addr16(key.addr, key.af)))
        parts.append(nla(SVC_PORT, struct.pack("!H", key.port)))
    return nested(ATTR_SERVICE, b"".join(parts))


def _netmask_bytes(svc):
    if svc.key.af == socket.AF_INET:
        mask = (0xFFFFFFFF << (32 - svc.netmask)) & 0xFFFFFFFF
        return struct.pack("!I", mask)
    return struct.pack("=I", svc.netmask)


def encode_service(svc):
    key = encode_service_key(svc.key)
    inner = key[_NLA.size :]
    inner += nla(SVC_SCHED_NAME, svc.scheduler.encode() + b"\0")
    inner += nla(SVC_FLAGS, struct.pack("=II", svc.flags, 0xFFFFFFFF))
    inner += nla(SVC_TIMEOUT, struct.pack("=I", svc.timeout))
    inner += nla(SVC_NETMASK, _netmask_bytes(svc))
    return nested(ATTR_SERVICE, inner)


def encode_dest(dest, af, full=True):
    dest_af = socket.AF_INET6 if ":" in dest.addr else socket.AF_INET
    parts = [
        nla(DEST_ADDR, _addr16(dest.addr, dest_af)),
        nla(DEST_PORT, struct.pack("!H", dest.port)),
    ]
    if dest_af != af:
        parts.append(nla(DEST_ADDR_FAMILY, struct.pack("=H", dest_af)))
    if full:
        parts += [
            nla(DEST_FWD_METHOD, struct.pack("=I", FWD[dest.fwd])),
            nla(DEST_WEIGHT, struct.pack("=I", dest.weight)),
            nla(DEST_U_THRESH, struct.pack("=I", dest.u_thresh)),
            nla(DEST_L_THRESH, struct.pack("=I", dest.l_thresh)),
        ]
        if dest.fwd == "tun" and (dest.tun_type != "ipip" or dest.tun_port):
            parts += [
                nla(DEST_TUN_TYPE, struct.pack("=B", TUN_TYPE[dest.tun_type])),
                nla(DEST_TUN_PORT, struct.pack("!H", dest.tun_port)),
                nla(DEST_TUN_FLAGS, struct.pack("=H", TUN_CSUM[dest.tun_csum])),
            ]
    return nested(ATTR_DEST, b"".join(parts))


def _ip_text(raw, af):
    return _addr_text(af, raw)


def decode_service(attrs):
    s = parse_attrs(attrs[ATTR_SERVICE])
    af = _u16(s[SVC_AF])
    if SVC_FWMARK in s and _u32(s[SVC_FWMARK]):
        key = ServiceKey(af, "fwmark", fwmark=_u32(s[SVC_FWMARK]))
    else:
        proto = _u16(s[SVC_PROTOCOL])
        key = ServiceKey(af, PROTO_NAME.get(proto, str(proto)), _ip_text(s[SVC_ADDR], af),
                         _be16(s[SVC_PORT]))
    flags = struct.unpack("=II", s[SVC_FLAGS][:8])[0] if SVC_FLAGS in s else 0
    raw_mask = s.get(SVC_NETMASK, b"\0\0\0\0")
    if af == socket.AF_INET:
        netmask = bin(struct.unpack("!I", raw_mask[:4])[0]).count("1")
    else:
        netmask = _u32(raw_mask)
    return Service(
        key=key,
        scheduler=s.get(SVC_SCHED_NAME, b"").rstrip(b"\0").decode(),
        flags=flags & ~SVC_F_HASHED,
        timeout=_u32(s.get(SVC_TIMEOUT, b"\0" * 4)),
        netmask=netmask,
    )


def decode_dest(attrs, svc_af):
    d = parse_attrs(attrs[ATTR_DEST])
    af = _u16(d[DEST_ADDR_FAMILY]) if DEST_ADDR_FAMILY in d else svc_af
    fwd = _u32(d[DEST_FWD_METHOD]) & 0x7
    return Dest(
        addr=_ip_text(d[DEST_ADDR], af),
        port=_be16(d[DEST_PORT]),
        fwd=FWD_NAME.get(fwd, str(fwd)),
        weight=_u32(d[DEST_WEIGHT]),
        u_thresh=_u32(d.get(DEST_U_THRESH, b"\0" * 4)),
        l_thresh=_u32(d.get(DEST_L_THRESH, b"\0" * 4)),
        tun_type=TUN_TYPE_NAME.get(d[DEST_TUN_TYPE][0], "ipip") if DEST_TUN_TYPE in d else "ipip",
        tun_port=_be16(d[DEST_TUN_PORT]) if DEST_TUN_PORT in d else 0,
        tun_csum=TUN_CSUM_NAME.get(_u16(d[DEST_TUN_FLAGS]), "nocsum")
        if DEST_TUN_FLAGS in d
        else "nocsum",
        active=_u32(d.get(DEST_ACTIVE_CONNS, b"\0" * 4)),
        inactive=_u32(d.get(DEST_INACT_CONNS, b"\0" * 4)),
        persistent=_u32(d.get(DEST_PERSIST_CONNS, b"\0" * 4)),
    )


def read_table(genl):
    """The whole IPVS table: {ServiceKey: (Service, {(addr, port): Dest})}."""
    table = {}
    for attrs in genl.dump(CMD_GET_SERVICE):
        svc = decode_service(attrs)
        dests = {}
        for dattrs in genl.dump(CMD_GET_DEST, encode_service_key(svc.key)):
            dest = decode_dest(dattrs, svc.key.af)
            dests[dest.key] = dest
        table[svc.key] = (svc, dests)
    return table


# --------------------------------------------------------------------------------------------
# Desired table from the pillar
# --------------------------------------------------------------------------------------------


def desired_table(services):
    """{ServiceKey: (Service, {(addr, port): Dest}), ...} plus {ServiceKey: service name}."""
    table = {}
    names = {}
    spelled = {}  # each address parsed once: 1000 services x 10 share a few hundred

    def text(addr):
        out = spelled.get(addr)
        if out is None:
            out = spelled[addr] = str(ipaddress.ip_address(addr))
        return out

    for name, svc in services.items():
        vip = ipaddress.ip_address(svc["vip"])
        af = socket.AF_INET if vip.version == 4 else socket.AF_INET6
        flags = 0
        timeout = svc.get("persistence") or 0
        if timeout:
            flags |= SVC_F_PERSISTENT
        if svc.get("one_packet"):
            flags |= SVC_F_ONEPACKET
        for flag in svc.get("scheduler_flags") or []:
            flags |= SVC_F_SCHED[_SCHED_FLAG_BITS[flag]]
        netmask = svc.get("persistence_netmask") or vip.max_prefixlen
        if svc["protocol"] == "fwmark":
            keys = [(ServiceKey(af, "fwmark", fwmark=svc["fwmark"], vip=str(vip)), 0)]
        else:
            keys = [(ServiceKey(af, svc["protocol"], str(vip), port), port)
                    for port in svc["ports"]]
        for key, port in keys:
            dests = {}
            for rs in svc["realservers"].values():
                dest = Dest(
                    addr=text(rs["address"]),
                    port=(rs.get("port") or port) if svc["method"] == "nat" else port,
                    fwd=svc["method"],
                    weight=rs["weight"],
                    u_thresh=rs.get("upper_threshold") or 0,
                    l_thresh=rs.get("lower_threshold") or 0,
                    tun_type=rs.get("tun_type") or "ipip",
                    tun_port=rs.get("tun_port") or 0,
                    tun_csum=rs.get("tun_csum") or "nocsum",
                )
                dests[dest.key] = dest
            table[key] = (Service(key, svc["scheduler"], flags, timeout, netmask), dests)
            names[key] = name
    return table, names


_SCHED_FLAG_BITS = {
    "flag-1": 1, "flag-2": 2, "flag-3": 3,
    "sh-fallback": 1, "sh-port": 2, "mh-fallback": 1, "mh-port": 2,
}


def available_schedulers():
    """Schedulers this kernel has, loaded or loadable (ip_vs_<name> modules)."""
    found = set()
    try:
        found.update(
            n[len("ip_vs_"):] for n in os.listdir("/sys/module") if n.startswith("ip_vs_")
        )
    except OSError:
        pass
    release = os.uname().release
    for index in ("modules.dep", "modules.builtin"):
        try:
            with open(f"/lib/modules/{release}/{index}", encoding="utf-8") as fh:
                for line in fh:
                    path = line.split(":", 1)[0]
                    base = path.rsplit("/", 1)[-1].split(".ko")[0]
                    if base.startswith("ip_vs_"):
                        found.add(base[len("ip_vs_"):])
        except OSError:
            continue
    # protocol and helper modules are not schedulers
    return sorted(found - {"ftp", "pe_sip", "proto_sctp"})


def has_scheduler(name):
    """Is ip_vs_<name> loaded, or a module file of this kernel? Two stats, no index scan."""
    if os.path.isdir(f"/sys/module/ip_vs_{name}"):
        return True
    base = f"/lib/modules/{os.uname().release}/kernel/net/netfilter/ipvs/ip_vs_{name}.ko"
    return any(os.path.exists(base + ext) for ext in ("", ".xz", ".zst", ".gz"))


def kernel_version():
    parts = os.uname().release.split(".")
    try:
        return int(parts[0]), int(parts[1].split("-")[0])
    except (IndexError, ValueError):
        return (0, 0)


def validate_for_kernel(services, options, links, schedulers=None, kernel=None):
    """Checks that depend on this director's kernel; every error names its pillar key."""
    errors = []
    if schedulers is None:
        # the cheap check first; the full list (an index scan) only to word an error
        wanted = {svc["scheduler"] for svc in services.values()}
        if all(has_scheduler(name) for name in wanted):
            schedulers = sorted(wanted)
        else:
            schedulers = available_schedulers()
    kernel = kernel_version() if kernel is None else kernel
    iface = options["interface"]
    if iface not in links:
        errors.append(
            f"lvs:directors:{options['_id']}:interface: '{iface}' does not exist on this "
            "director, so the VIPs would be on no interface"
        )
    for name, svc in services.items():
        if schedulers and svc["scheduler"] not in schedulers:
            errors.append(
                f"lvs:services:{name}:scheduler: '{svc['scheduler']}' is not available in this "
                f"kernel (available: {', '.join(schedulers)})"
            )
        for rs_id, rs in svc["realservers"].items():
            tun_type = rs.get("tun_type")
            if tun_type and kernel < TUN_TYPE_KERNEL[tun_type]:
                need = ".".join(map(str, TUN_TYPE_KERNEL[tun_type]))
                errors.append(
                    f"lvs:services:{name}:realservers:{rs_id}:tun_type: '{tun_type}' needs "
                    f"Linux {need} or newer; this kernel is {'.'.join(map(str, kernel))}"
                )
    if errors:
        raise SaltInvocationError("invalid lvs pillar for this director:\n" + "\n".join(errors))


# --------------------------------------------------------------------------------------------
# Observe the host side (VIPs on the interface, sysctls)
# --------------------------------------------------------------------------------------------


@dataclass
class Host:
    links: dict  # name -> {"index", "mac"}
    addrs: dict  # name -> set of "addr/prefix"
    sysctl: dict  # "expire_nodest_conn" -> int


def _addr_text(family, raw):
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[:4])
    return str(ipaddress.ip_address(raw[:16]))  # the pillar's spelling (RFC 5952)


def observe_host(interface, names=("expire_nodest_conn", "expire_quiescent_template")):
    """The director's interface (name -> index; absent when it does not exist), its addresses
    (one rtnetlink dump) and the IPVS sysctls."""
    try:
        wanted = socket.if_nametoindex(interface)
    except OSError:  # no such interface (or an empty name)
        links, addrs = {}, {}
    else:
        links, addrs = {interface: {"index": wanted, "mac": None}}, {interface: set()}
        with NetlinkSocket(socket.NETLINK_ROUTE) as nl:
            for body in nl.dump_bodies(RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0)):
                family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(body)
                if index != wanted or family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                attrs = parse_attrs(body, _IFADDRMSG.size)
                raw = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
                if raw:
                    addrs[interface].add(f"{_addr_text(family, raw)}/{prefixlen}")
    sysctl = {}
    for name in names:
        try:
            with open(f"{PROC_VS}/{name}", "rb") as fh:  # no text codec to look up
                sysctl[name] = int(fh.read())
        except OSError:
            sysctl[name] = None
    return Host(links, addrs, sysctl)


# --------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------


@dataclass
class Action:
    kind: str  # svc_add svc_set dest_add dest_set dest_del svc_del vip_add vip_del garp sysctl
    target: str
    old: object = None
    new: object = None
    data: dict = field(default_factory=dict)


@dataclass
class Plan:
    actions: list
    warnings: list
    record: dict

    def changes(self):
        group = {
            "svc_add": "service", "svc_set": "service", "svc_del": "service",
            "dest_add": "realserver", "dest_set": "realserver", "dest_del": "realserver",
            "vip_add": "address", "vip_del": "address", "sysctl": "sysctl",
        }
        out = {}
        for act in self.actions:
            if act.kind in group:
                out.setdefault(group[act.kind], {})[act.target] = {"old": act.old, "new": act.new}
        return out


def _diff(old, new):
    """Only the fields that differ, as (old, new) dicts."""
    keys = [k for k in new if old.get(k) != new.get(k)] + [k for k in old if k not in new]
    return {k: old.get(k) for k in keys}, {k: new.get(k) for k in keys}


def _addr_order(addr):
    ip = ipaddress.ip_address(addr)
    return (ip.version, ip)


def empty_record():
    return {"version": 1, "services": {}, "vips": [], "sysctl": {}}


def plan_director(desired, live, host, record, options, names=None):
    """Decide the ordered actions that turn ``live`` into ``desired`` (a pure function).

    Order: IPVS sysctls; services added or edited in place; real servers added or edited in
    place; the VIPs on the interface, each followed by its gratuitous ARP; then what is to go:
    VIPs no longer served first, then real servers, then services. Entries this director manages
    (its record) and the pillar no longer names are removed; others only with ``prune``.
    """
    names = names or {}
    record = record or empty_record()
    actions, warnings = [], []
    managed = {k: set(map(tuple, v)) for k, v in record.get("services", {}).items()}
    iface = options["interface"]

    for name in ("expire_nodest_conn", "expire_quiescent_template"):
        want = 1 if options.get(name, True) else 0
        have = host.sysctl.get(name)
        if have is not None and have != want:
            actions.append(Action("sysctl", f"net.ipv4.vs.{name}", have, want,
                                  {"path": f"{PROC_VS}/{name}"}))

    for key in sorted(desired):
        svc, dests = desired[key]
        label = str(key)
        if key not in live:
            actions.append(Action("svc_add", label, None, svc.attrs(), {"service": svc}))
        else:
            old = live[key][0]
            if old != svc:
                o, n = _diff(old.attrs(), svc.attrs())
                actions.append(Action("svc_set", label, o, n, {"service": svc}))
    for key in sorted(desired):
        svc, dests = desired[key]
        live_dests = live[key][1] if key in live else {}
        for dkey in sorted(dests):
            dest = dests[dkey]
            target = f"{key} -> {dest.describe()}"
            if dkey not in live_dests:
                actions.append(Action("dest_add", target, None, dest.attrs(),
                                      {"service": svc, "dest": dest}))
            elif live_dests[dkey] != dest:
                o, n = _diff(live_dests[dkey].attrs(), dest.attrs())
                actions.append(Action("dest_set", target, o, n, {"service": svc, "dest": dest}))

    vips = sorted({k.addr or k.vip for k in desired if k.addr or k.vip}, key=_addr_order)
    held = host.addrs.get(iface, set())
    for vip in vips:
        plen = ipaddress.ip_address(vip).max_prefixlen
        if not any(a.split("/")[0] == vip for a in held):
            actions.append(Action("vip_add", f"{vip}/{plen} dev {iface}", None,
                                  f"{vip}/{plen} dev {iface}",
                                  {"address": vip, "prefixlen": plen, "device": iface,
                                   "label": options.get("label")}))
            if ipaddress.ip_address(vip).version == 4 and options.get("garp_count", 0):
                actions.append(Action("garp", vip, data={
                    "address": vip, "device": iface, "count": options["garp_count"],
                    "interval": options["garp_interval"]}))

    # removals: VIPs first, then real servers, then services
    removed_services = []
    for key in sorted(live):
        if key in desired:
            continue
        if str(key) in managed or options.get("prune"):
            removed_services.append(key)
        else:
            warnings.append(f"{key}: in IPVS but not in the pillar; left alone (prune: false)")
    kept_vips = set(vips)
    for vip in sorted(set(record.get("vips", [])) - kept_vips):
        plen = ipaddress.ip_address(vip).max_prefixlen
        for held_addr in sorted(held):
            if held_addr.split("/")[0] == vip:
                actions.append(Action("vip_del", f"{held_addr} dev {iface}",
                                      f"{held_addr} dev {iface}", None,
                                      {"address": vip, "prefixlen": int(held_addr.split("/")[1]),
                                       "device": iface}))
    for key in sorted(desired):
        svc, dests = desired[key]
        live_dests = live[key][1] if key in live else {}
        for dkey in sorted(live_dests):
            if dkey in dests:
                continue
            dest = live_dests[dkey]
            if dkey in managed.get(str(key), set()) or options.get("prune"):
                actions.append(Action("dest_del", f"{key} -> {dest.describe()}", dest.attrs(),
                                      None, {"service": svc, "dest": dest}))
            else:
                warnings.append(f"{key} -> {dest.describe()}: not in the pillar; left alone "
                                "(prune: false)")
    for key in removed_services:
        svc, dests = live[key]
        actions.append(Action("svc_del", str(key), svc.attrs(), None, {"service": svc}))

    new_record = empty_record()
    new_record["services"] = {
        str(k): sorted([list(d) for d in desired[k][1]]) for k in sorted(desired)
    }
    new_record["names"] = {str(k): names.get(k) for k in sorted(desired)}
    new_record["vips"] = vips
    new_record["interface"] = iface
    return Plan(actions, warnings, new_record)


# --------------------------------------------------------------------------------------------
# Apply
# --------------------------------------------------------------------------------------------

_IPVS_CMD = {
    "svc_add": CMD_NEW_SERVICE, "svc_set": CMD_SET_SERVICE, "svc_del": CMD_DEL_SERVICE,
    "dest_add": CMD_NEW_DEST, "dest_set": CMD_SET_DEST, "dest_del": CMD_DEL_DEST,
}


def ipvs_request(act, keys=None):
    """``(cmd, payload)`` of one IPVS action; ``keys`` caches encoded service keys by key."""
    svc = act.data["service"]
    cmd = _IPVS_CMD[act.kind]
    if act.kind in ("svc_add", "svc_set"):
        return cmd, encode_service(svc)
    key = keys.get(svc.key) if keys is not None else None
    if key is None:
        key = encode_service_key(svc.key)
        if keys is not None:
            keys[svc.key] = key
    if act.kind == "svc_del":
        return cmd, key
    full = act.kind != "dest_del"
    return cmd, key + encode_dest(act.data["dest"], svc.key.af, full)


def send_garp(device, address, count=3, interval=0.2):
    """Gratuitous ARP (an ARP request with sender = target = the VIP, to broadcast), ``count``
    times, ``interval`` seconds apart: neighbours update their cache entry for the VIP."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    try:
        sock.bind((device, 0x0806))
        mac = sock.getsockname()[4][:6]
        ip = ipaddress.ip_address(address).packed
        frame = b"\xff" * 6 + mac + struct.pack("!H", 0x0806)
        frame += struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, ip)
        for i in range(count):
            if i:
                time.sleep(interval)
            sock.send(frame)
    finally:
        sock.close()


def _ipr_addr(ipr, act, links):
    index = links[act.data["device"]]["index"]
    kwargs = {"index": index, "address": act.data["address"], "prefixlen": act.data["prefixlen"]}
    if act.kind == "vip_add" and act.data.get("label"):
        kwargs["label"] = act.data["label"]
    ipr.addr("add" if act.kind == "vip_add" else "del", **kwargs)


def execute(plan, host, genl):
    journal, done = [], []
    acts = plan.actions
    i = 0
    try:
        while i < len(acts):
            act = acts[i]
            if act.kind in _IPVS_CMD:
                j = i
                while j < len(acts) and acts[j].kind in _IPVS_CMD:
                    j += 1
                group = acts[i:j]
                keys = {}
                codes = genl.batch([ipvs_request(a, keys) for a in group])
                for a, code in zip(group, codes):
                    if code:
                        raise _StepFailed(a, OSError(code, os.strerror(code)))
                    journal.append(f"{a.kind} {a.target}")
                    done.append(a)
                if len(codes) < len(group):
                    raise _StepFailed(group[len(codes)], OSError(errno.ECANCELED,
                                                                 "not sent after a failure"))
                i = j
                continue
            try:
                if act.kind == "sysctl":
                    with open(act.data["path"], "w", encoding="ascii") as fh:
                        fh.write(str(act.new))
                elif act.kind in ("vip_add", "vip_del"):
                    with IPRoute() as ipr:
                        _ipr_addr(ipr, act, host.links)
                elif act.kind == "garp":
                    send_garp(act.data["device"], act.data["address"], act.data["count"],
                              act.data["interval"])
            except (OSError, NetlinkError) as err:
                raise _StepFailed(act, err) from err
            journal.append(f"{act.kind} {act.target}")
            done.append(act)
            i += 1
    except _StepFailed as failed:
        applied = Plan(done, [], {}).changes()
        pending = [f"{a.kind} {a.target}" for a in acts[acts.index(failed.action):]]
        raise CommandExecutionError(
            f"{failed.action.kind} {failed.action.target} failed: {failed.error}. Applied "
            f"before the failure: {len(done)} step(s). Not applied: {len(pending)} step(s), "
            f"from {pending[0]}. The next run converges from here.",
            info={"changes": applied, "journal": journal, "not_applied": pending},
        ) from failed.error
    return journal


class _StepFailed(Exception):
    def __init__(self, action, error):
        super().__init__(str(error))
        self.action = action
        self.error = error


# --------------------------------------------------------------------------------------------
# The no-op check
# --------------------------------------------------------------------------------------------
#
# Reading the table back over netlink takes one dump per service (its real servers), each with
# their counters: for 1000 services x 10 that costs more kernel time than adding them did, and
# validating 11 000 pillar entries again costs more than that. A run that would change nothing
# is the common case, so after every successful run the module writes ``<state_file>.check``:
# a digest of the pillar tree (and of this module and lvs_pillar), the digest of the record it
# wrote, and what this pillar means in the kernel's own words: the lines /proc/net/ip_vs shows
# for each service (one read of a few hundred kB, no counters compared), the VIPs and sysctls.
# The next run ends with "no changes" only when all of them still hold, compared against the
# pillar (never against a snapshot of the kernel, so a change made while the file was written
# cannot be taken for the declared state). Anything else (another pillar, a weight edited by
# hand, a real server drained, an entry Salt does not manage, a VIP gone) takes the full path.
#
# /proc/net/ip_vs does not show scheduler flags, one-packet scheduling of IPv6 services, nor
# the thresholds and tunnel settings of real servers. Where the pillar sets them, they are read
# over netlink for those services only. Where the pillar leaves them at their defaults and
# someone changes them by hand, only a full read sees it: ``verify: full`` (minion config
# ``lvs_director:verify``, or the state's argument), ``lvs_director.status`` and ``audit``.


def _check_path(paths):
    return paths["state_file"] + ".check"


def _pillar_digest(minion_id, lvs):
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{CHECK_FORMAT} {minion_id!r}".encode())
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.abspath(__file__), os.path.join(here, "lvs_pillar.py")):
        try:
            st = os.stat(path)
            h.update(f" {st.st_mtime_ns} {st.st_size}".encode())
        except OSError:
            h.update(b" -")
    try:
        h.update(marshal.dumps(lvs, 2))  # version 2: no back-references, same bytes every time
    except ValueError:  # an OrderedDict or another type marshal refuses
        h.update(json.dumps(lvs, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _file_digest(path):
    try:
        with open(path, "rb") as fh:
            return hashlib.blake2b(fh.read(), digest_size=20).hexdigest()
    except OSError:
        return None


def _proc_service_line(svc, hz):
    """The service's line in /proc/net/ip_vs (ip_vs_info_seq_show), or None if unknowable."""
    key = svc.key
    ops = "ops " if svc.flags & SVC_F_ONEPACKET else ""
    if key.protocol == "fwmark":
        line = f"FWM  {key.fwmark:08X} {svc.scheduler} {ops}"
    elif key.af == socket.AF_INET:
        addr = socket.inet_pton(socket.AF_INET, key.addr).hex().upper()
        line = f"{key.protocol.upper()}  {addr}:{key.port:04X} {svc.scheduler} {ops} "
    else:
        line = (f"{key.protocol.upper()}  [{ipaddress.IPv6Address(key.addr).exploded}]:"
                f"{key.port:04X} {svc.scheduler} ")
    if svc.flags & SVC_F_PERSISTENT:
        if not hz:
            return None
        mask = struct.unpack("!I", _netmask_bytes(svc))[0]
        line += f"persistent {svc.timeout * hz} {mask:08X}"  # the kernel prints jiffies
    return line.encode()


_PROC_FWD = {"dr": "Route", "tun": "Tunnel", "nat": "Masq"}


def _proc_dest_line(dest):
    """A real server's line in /proc/net/ip_vs without its two connection counters."""
    if ":" in dest.addr:
        addr = f"[{ipaddress.IPv6Address(dest.addr).exploded}]"
    else:
        addr = socket.inet_pton(socket.AF_INET, dest.addr).hex().upper()
    return f"  -> {addr}:{dest.port:04X}      {_PROC_FWD[dest.fwd]:<7} {dest.weight:<6} ".encode()


def read_proc_text():
    try:
        with open(PROC_IPVS, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _counters_cut(text):
    """The lines of /proc/net/ip_vs without the version line and the two connection counters
    of each real server ("%-10d %-10d": the last 21 characters of its line)."""
    return [line[:-21] if line[:4] == b"  ->" else line for line in text.split(b"\n")[1:]]


def proc_token(text):
    """A digest of /proc/net/ip_vs in the kernel's order, counters cut: equal tokens, same table."""
    return hashlib.blake2b(b"\n".join(_counters_cut(text)), digest_size=20).digest()


def proc_blocks(text):
    """{service line: sorted real-server lines} from /proc/net/ip_vs, counters cut; None when
    two services print alike (an IPv4 and an IPv6 fwmark service of one mark)."""
    blocks = {}
    dests = None
    for line in _counters_cut(text)[2:]:
        if line[:4] == b"  ->":
            dests.append(line)
        elif line:
            if line in blocks:
                return None
            dests = blocks[line] = []
    for lines in blocks.values():
        lines.sort()
    return blocks


def _dest_hidden(d):
    """A real server's attributes that /proc/net/ip_vs does not print."""
    return (d.u_thresh, d.l_thresh, d.tun_type, d.tun_port, d.tun_csum)


_DEST_HIDDEN_DEFAULT = _dest_hidden(Dest("", 0))


def _hidden(desired):
    """What /proc/net/ip_vs does not show and the pillar sets: (services, real servers)."""
    svcs, dests = [], []
    for key, (svc, table) in desired.items():
        # /proc prints persistence always, one-packet for IPv4 services only
        shown = SVC_F_PERSISTENT | (SVC_F_ONEPACKET if key.af == socket.AF_INET else 0)
        if svc.flags & ~shown:
            svcs.append((_key_tuple(key), svc.flags))
        if any(_dest_hidden(d) != _DEST_HIDDEN_DEFAULT for d in table.values()):
            # the dump returns all of the service's real servers: check every one of them
            dests.append((_key_tuple(key), {d.key: _dest_hidden(d) for d in table.values()}))
    return svcs, dests


def _key_tuple(key):
    return (int(key.af), key.protocol, key.addr, key.port, key.fwmark)  # marshal: no IntEnum


def _kernel_hz(genl, desired, proc):
    """The kernel's HZ, from one persistent service seen both ways (seconds over netlink,
    jiffies in /proc/net/ip_vs); None when there is none or they disagree."""
    for key, (svc, _) in desired.items():
        if not svc.flags & SVC_F_PERSISTENT:
            continue
        attrs = genl.get(CMD_GET_SERVICE, encode_service_key(key))
        live = decode_service(attrs) if attrs else None
        if live is None or not live.timeout:
            return None
        prefix = _proc_service_line(replace(svc, flags=svc.flags & ~SVC_F_PERSISTENT), 1)
        for line in proc:
            if line.startswith(prefix + b"persistent "):
                jiffies = int(line.split(b" ")[-2])
                hz, rest = divmod(jiffies, live.timeout)
                return hz if not rest and hz in (100, 250, 300, 1000) else None
        return None
    return None


def write_check(paths, digest, options, desired, genl):
    """After a successful run: what the next run compares against (see above)."""
    text = read_proc_text() or b""
    blocks = proc_blocks(text)
    hz = _kernel_hz(genl, desired, blocks or {})
    expected = {}
    for key, (svc, dests) in desired.items():
        line = _proc_service_line(svc, hz)
        if line is None or line in expected:
            return  # cannot be told from /proc: no check file, every run reads in full
        expected[line] = sorted(_proc_dest_line(d) for d in dests.values())
    hidden_svcs, hidden_dests = _hidden(desired)
    # the kernel's order of this very table, when it is the table the pillar means: the next
    # run compares one digest, and sorts only when the order changed
    token = proc_token(text) if blocks == expected else None
    check = {
        "format": CHECK_FORMAT,
        "pillar": digest,
        "record": _file_digest(paths["state_file"]),
        "kernel": " ".join(os.uname()[2:4]),
        "proc": expected,
        "token": token,
        "interface": options["interface"],
        "vips": sorted({k.addr or k.vip for k in desired if k.addr or k.vip}),
        "sysctl": {n: 1 if options.get(n, True) else 0
                   for n in ("expire_nodest_conn", "expire_quiescent_template")},
        "hidden_services": hidden_svcs,
        "hidden_dests": hidden_dests,
    }
    path = _check_path(paths)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(marshal.dumps(check, 2))
    os.replace(tmp, path)


def drop_check(paths):
    try:
        os.unlink(_check_path(paths))
    except FileNotFoundError:
        pass


def read_check(paths):
    try:
        with open(_check_path(paths), "rb") as fh:
            check = marshal.loads(fh.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    return check if isinstance(check, dict) and check.get("format") == CHECK_FORMAT else None


def unchanged(paths, digest):
    """True when the last run's check file says this run has nothing to do (see above)."""
    check = read_check(paths)
    if check is None or check.get("pillar") != digest:
        return False
    if check["kernel"] != " ".join(os.uname()[2:4]):
        return False
    if check["record"] is None or _file_digest(paths["state_file"]) != check["record"]:
        return False
    host = observe_host(check["interface"])
    held = {a.split("/")[0] for a in host.addrs.get(check["interface"], ())}
    if check["interface"] not in host.links or not held.issuperset(check["vips"]):
        return False
    for name, want in check["sysctl"].items():
        if host.sysctl.get(name) not in (None, want):
            return False
    text = read_proc_text()
    if text is None:
        return False
    if proc_token(text) != check["token"] and proc_blocks(text) != check["proc"]:
        return False
    if check["hidden_services"] or check["hidden_dests"]:
        try:
            return _hidden_unchanged(check)
        except OSError:  # a service gone since /proc was read: the full path says what
            return False
    return True


def _hidden_unchanged(check):
    """What /proc/net/ip_vs does not show and the pillar sets, read over netlink."""
    with Genl() as genl:
        for key, flags in check["hidden_services"]:
            attrs = genl.get(CMD_GET_SERVICE, encode_service_key(ServiceKey(*key)))
            if attrs is None or decode_service(attrs).flags != flags:
                return False
        for key, extra in check["hidden_dests"]:
            skey = ServiceKey(*key)
            seen = {}
            for attrs in genl.dump(CMD_GET_DEST, encode_service_key(skey)):
                d = decode_dest(attrs, skey.af)
                seen[d.key] = _dest_hidden(d)
            if seen != extra:
                return False
    return True


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def _paths(overrides):
    # salt-call and minion jobs add __pub_* keyword arguments to every **kwargs function
    overrides = {k: v for k, v in overrides.items() if not k.startswith("__")}
    paths = dict(DEFAULT_PATHS, verify="quick")
    try:
        conf = __salt__["config.get"]("lvs_director", {}) or {}  # pylint: disable=undefined-variable
    except (NameError, KeyError):
        conf = {}
    paths.update({k: v for k, v in conf.items() if k in paths and v})
    unknown = sorted(set(overrides) - set(paths))
    if unknown:
        raise SaltInvocationError(f"unknown argument(s): {', '.join(unknown)}")
    paths.update({k: v for k, v in overrides.items() if v})
    if paths["verify"] not in VERIFY:
        raise SaltInvocationError(
            f"verify: '{paths['verify']}' must be one of {', '.join(VERIFY)} (minion config "
            "lvs_director:verify or the argument)"
        )
    return paths


def read_record(path):
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        return empty_record()
    except ValueError as err:
        raise CommandExecutionError(f"{path}: not valid JSON ({err}); fix or remove it") from err
    base = empty_record()
    base.update(record)
    return base


def write_record(path, record):
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    # compact: indent forces json's pure-Python encoder (slow for 1000 services x 10)
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return
    except FileNotFoundError:
        pass
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _config(minion_id=None, lvs=None):
    conf = __salt__["lvs_pillar.director"](minion_id=minion_id, lvs=lvs)  # pylint: disable=undefined-variable
    if conf["options"] is None:
        return None, {}
    options = dict(conf["options"])
    options["_id"] = minion_id or __opts__["id"]  # pylint: disable=undefined-variable
    return options, conf["services"]


def _run(options, services, paths, test, digest=None):
    host = observe_host(options["interface"])
    validate_for_kernel(services, options, host.links)
    desired, names = desired_table(services)
    with Genl() as genl:
        live = read_table(genl)
        record = read_record(paths["state_file"])
        plan = plan_director(desired, live, host, record, options, names)
        ret = {"changes": plan.changes(), "warnings": plan.warnings, "test": bool(test),
               "journal": [], "checked": "full"}
        if test:
            return ret
        drop_check(paths)  # before any change: a failed run leaves none behind
        ret["journal"] = execute(plan, host, genl)
        write_record(paths["state_file"], plan.record)
        if digest and paths["verify"] == "quick" and not plan.warnings:
            try:
                write_check(paths, digest, options, desired, genl)
            except OSError as err:  # the run itself succeeded; the next one reads in full
                log.warning("lvs_director: could not write %s: %s", _check_path(paths), err)
    return ret


def apply(test=False, minion_id=None, lvs=None, **paths):
    """
    Make the IPVS table, the VIPs and the IPVS sysctls of this director what the pillar says.

    Services and real servers are added or edited in place (a live service is never deleted
    and re-added); the VIP goes on ``lvs:directors:<id>:interface`` after its services and is
    announced with gratuitous ARP (``garp_count`` times, ``garp_interval`` apart). Entries this
    director manages and the pillar no longer names are removed (the VIP first); entries it does
    not manage only with ``prune: true``.

    CLI Example:

    .. code-block:: bash

        salt 'lb*' lvs_director.apply test=True

    minion_id, lvs
        Act as this director of this ``lvs`` tree instead of the minion's own id and pillar
        (orchestration and tests).
    verify
        ``quick`` (default; minion config ``lvs_director:verify``): when the pillar, the record,
        the VIPs, the IPVS sysctls and /proc/net/ip_vs are as the last successful run left them,
        end there (``checked: quick``). ``full``: read every attribute of every entry over
        netlink on every run. See "The no-op check" in the module source for what each sees.
    """
    paths = _paths(paths)
    digest = None
    if paths["verify"] == "quick":
        tree = lvs if lvs is not None else __pillar__.get("lvs", {})  # pylint: disable=undefined-variable
        digest = _pillar_digest(minion_id or __opts__["id"], tree)  # pylint: disable=undefined-variable
        if unchanged(paths, digest):
            return {"changes": {}, "warnings": [], "test": bool(test), "journal": [],
                    "checked": "quick"}
    options, services = _config(minion_id, lvs)
    if options is None:
        raise SaltInvocationError(
            f"lvs:directors: '{minion_id or __opts__['id']}' is not a director in the pillar"  # pylint: disable=undefined-variable
        )
    return _run(options, services, paths, test, digest)


def remove(test=False, minion_id=None, lvs=None, **paths):
    """
    Remove what this director manages: its VIPs first, then its real servers and services.

    CLI Example:

    .. code-block:: bash

        salt 'lb*' lvs_director.remove test=True
    """
    paths = _paths(paths)
    record = read_record(paths["state_file"])
    options, _ = _config(minion_id, lvs)
    if options is None:
        options = {"interface": record.get("interface") or "", "_id": __opts__["id"]}  # pylint: disable=undefined-variable
    options = dict(options, prune=False)
    host = observe_host(options["interface"])
    with Genl() as genl:
        live = read_table(genl)
        plan = plan_director({}, live, host, record, options)
        ret = {"changes": plan.changes(), "warnings": [], "test": bool(test), "journal": []}
        if test:
            return ret
        drop_check(paths)
        ret["journal"] = execute(plan, host, genl)
    write_record(paths["state_file"], empty_record())
    return ret


def _dest_matches(dest, realserver, rs_addresses):
    return dest.addr == realserver or dest.addr in rs_addresses


def drain(realserver, services=None, timeout=60, interval=1.0, test=False, minion_id=None,
          lvs=None):
    """
    Drain a real server: weight 0 on every service of this director that has it (new
    connections go elsewhere), then wait up to ``timeout`` seconds for its active connections
    to end. Established connections are not touched. The pillar weight comes back on the next
    ``state.apply``: set ``weight: 0`` in the pillar to keep a server drained.

    realserver
        Its minion id in the pillar, or its address.

    CLI Example:

    .. code-block:: bash

        salt lb1 lvs_director.drain rs1 timeout=120
    """
    options, pillar_services = _config(minion_id, lvs)
    addresses = set()
    for svc in (pillar_services or {}).values():
        rs = svc["realservers"].get(realserver)
        if rs:
            addresses.add(str(ipaddress.ip_address(rs["address"])))
    with Genl() as genl:
        live = read_table(genl)
        actions = []
        for key, (svc, dests) in sorted(live.items()):
            if services and str(key) not in services:
                continue
            for dest in dests.values():
                if _dest_matches(dest, realserver, addresses) and dest.weight != 0:
                    actions.append(Action("dest_set", f"{key} -> {dest.describe()}",
                                          {"weight": dest.weight}, {"weight": 0},
                                          {"service": svc, "dest": replace(dest, weight=0)}))
        matched = [
            (key, dest) for key, (svc, dests) in live.items() for dest in dests.values()
            if _dest_matches(dest, realserver, addresses)
            and (not services or str(key) in services)
        ]
        if not matched:
            raise SaltInvocationError(f"realserver: '{realserver}' is in no IPVS service here")
        plan = Plan(actions, [], {})
        if test:
            return {"changes": plan.changes(), "drained": False, "active": None, "waited": 0}
        execute(plan, None, genl)
        start = time.monotonic()
        while True:
            live = read_table(genl)
            active = {
                f"{key} -> {d.describe()}": d.active
                for key, (svc, dests) in live.items() for d in dests.values()
                if _dest_matches(d, realserver, addresses)
                and (not services or str(key) in services)
            }
            waited = time.monotonic() - start
            if not any(active.values()) or waited >= timeout:
                break
            time.sleep(interval)
    return {"changes": plan.changes(), "drained": not any(active.values()), "active": active,
            "waited": round(waited, 2)}


def _table_plain(table):
    out = {}
    for key, (svc, dests) in sorted(table.items()):
        out[str(key)] = {
            **svc.attrs(),
            "realservers": {
                d.describe(): {**d.attrs(), "active": d.active, "inactive": d.inactive}
                for _, d in sorted(dests.items())
            },
        }
    return out


def status(minion_id=None, lvs=None, **paths):
    """
    The live IPVS table next to the pillar's, with the differences.

    Returns ``{"ok": bool, "differences": [...], "live": {...}, "pillar": {...}}``; ``ok`` is
    true when applying the pillar would change nothing.

    CLI Example:

    .. code-block:: bash

        salt 'lb*' lvs_director.status
    """
    paths = _paths(paths)
    options, services = _config(minion_id, lvs)
    with Genl() as genl:
        live = read_table(genl)
    result = {"live": _table_plain(live)}
    if options is None:
        result.update(ok=True, differences=[], pillar=None)
        return result
    desired, names = desired_table(services)
    host = observe_host(options["interface"])
    plan = plan_director(desired, live, host, read_record(paths["state_file"]), options, names)
    differences = [
        f"{a.kind.replace('_', ' ')} {a.target}: {a.old} -> {a.new}"
        for a in plan.actions if a.kind != "garp"
    ] + plan.warnings
    result.update(ok=not plan.actions, differences=differences, pillar=_table_plain(desired))
    return result


def audit(minion_id=None, lvs=None, **paths):
    """
    Alias of :func:`status`, named like ``lvs_realserver.audit``.

    CLI Example:

    .. code-block:: bash

        salt 'lb*' lvs_director.audit
    """
    return status(minion_id=minion_id, lvs=lvs, **paths)


def garp(vip=None, count=3, interval=0.2, minion_id=None, lvs=None):
    """
    Announce the VIPs of this director (or one ``vip``) with gratuitous ARP now, for example
    after moving a VIP by hand.

    CLI Example:

    .. code-block:: bash

        salt lb1 lvs_director.garp
        salt lb1 lvs_director.garp vip=198.51.100.100 count=5
    """
    options, services = _config(minion_id, lvs)
    if options is None:
        raise SaltInvocationError("lvs:directors: this minion is not a director in the pillar")
    vips = [vip] if vip else sorted({s["vip"] for s in services.values()})
    sent = []
    for address in vips:
        if ipaddress.ip_address(address).version == 4:
            send_garp(options["interface"], address, int(count), float(interval))
            sent.append(address)
    return {"interface": options["interface"], "announced": sent, "count": int(count)}


def managed(**paths):
    """
    What this director manages (its record): services with their real servers, VIPs.

    CLI Example:

    .. code-block:: bash

        salt 'lb*' lvs_director.managed
    """
    return read_record(_paths(paths)["state_file"])
