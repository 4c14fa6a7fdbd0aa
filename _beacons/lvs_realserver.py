"""
Drift beacon for LVS real servers: notices within one interval when what the ``lvs_realserver``
state guarantees stops being true, and says so once.

What it watches is what the state manages, read from the module's own record of what it manages
(``lvs_realserver:state_file``: the VIPs, and the options of the last run: ``arp_method``,
``scope``, ``interfaces``), with the same rules the state uses:

- every managed VIP on its device (``lo``, or ``tunl0`` for TUN) with the full prefix (/32,
  /128), and on no ARP-capable NIC (``arp_method: redirect`` holds no VIP at all: a VIP on the
  host is drift there);
- ``arp_method: sysctl``: the effective ``arp_ignore`` (1, 2 or 8) and ``arp_announce`` (2) on
  the ARP-facing NICs of every managed IPv4 VIP: the NICs whose subnet holds the VIP (or the
  record's ``interfaces``, or ``conf/all`` under ``scope: all``). The kernel uses
  ``max(conf/all, conf/<NIC>)``, and so does the check. A NIC that appears later, facing the VIP
  network with the kernel's default ``arp_ignore=0``, is drift;
- ``arp_method: nftables``, ``arptables``, ``redirect``: the rules are what the state would
  write (the module's own plan of the recorded VIPs, in test mode: any rule it would rewrite is
  drift). nftables changes are announced by the kernel (nfnetlink), so they are seen within an
  interval; legacy arptables and iptables announce nothing and are re-read every ``refresh``;
- a TUN device up, with ``rp_filter`` not strict (1).

VIPs that the pillar names but the state never applied are not drift: nothing guaranteed them yet.

Events. Each is sent once, when the drift appears, when new findings join it, and when it clears;
not every interval. A drift that persists is sent again every ``remind`` seconds (a lost event or
a remediation skipped by the master's rate limit is then retried):

- ``salt/beacon/<minion id>/lvs_realserver/drift``
- ``salt/beacon/<minion id>/lvs_realserver/clear``

Data (besides ``id`` and ``_stamp``, which Salt adds):

.. code-block:: yaml

    event: drift                   # or clear
    findings:                      # what is wrong now (at most 50; "truncated" counts the rest)
      - kind: arp_ignore           # arp_ignore arp_announce vip_missing vip_prefix vip_on_nic
        interface: eth1            #   device_missing device_down rp_filter interface_missing
        value: 0
        want: 1, 2 or 8
        vips: [198.51.100.100]
        message: eth1 answers ARP for 198.51.100.100 (effective arp_ignore 0 = max(all 0, eth1 0))
    new: [arp_ignore eth1]         # findings that were not in the previous event
    repeat: false                  # true for a reminder of a drift already sent
    since: 1764149000.12           # when this drift was first seen (minion clock)
    auth:                          # the minion's signature (see below)
      msg: lvs_realserver|drift|rs1|1764149000.512345|4f0c...
      sig: <base64>

Why a signature: the master does not check the ``id`` inside beacon events, so any minion can
send ``salt/beacon/<another id>/...`` (saltstack/salt#29273). The beacon signs ``auth.msg``
(beacon, event, minion id, time, nonce) with the minion's own key (``pki_dir/minion.pem``), and
the remediation runner (``_runners/lvs_remediate.py``) verifies it with that minion's *accepted*
key on the master before it acts. Signing costs a few milliseconds, only when an event is sent.

Cost. It runs forever on every real server, on the minion's event loop, so the steady state does
no netlink dump and no subprocess at all: a netlink socket subscribed to link and address
notifications (and, for the rule methods, one subscribed to nftables changes) says when something
changed, and only then is the host read again (``lvs_realserver.observe``: one dump of links and
addresses; for the rule methods ``lvs_realserver.remove(vips=[], test=True)``, the state's own
plan for the recorded VIPs, which runs ``nft``). Every interval reads the handful of
``/proc/sys`` values that the ARP checks need and ``stat``s the record. ``benchmarks/beacon.py`` measures it (100 VIPs, 20 NICs).

Configuration (normally installed by the formula, ``salt/lvs/beacon.sls``, from the pillar key
``lvs_beacon``):

.. code-block:: yaml

    beacons:
      lvs_realserver:
        - interval: 1                    # seconds between checks (Salt's beacon option)
        - disable_during_state_run: true # no check while a state runs (a remediation, say)
        - remind: 120                    # resend a persisting drift after this many s; 0 = never
        - refresh: 60                    # re-read links/addresses at least this often, in s
        - sign: true                     # sign events (the remediation runner requires it)
        # - state_file: /var/lib/saltext-lvs/realserver.json   # default: minion config

:depends: the ``lvs_realserver`` execution module (same extension), Linux
:platform: Linux
"""

import base64
import errno
import ipaddress
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections import namedtuple

log = logging.getLogger(__name__)

__virtualname__ = "lvs_realserver"

PROC_CONF = "/proc/sys/net/ipv4/conf"
# The values lvs_realserver (the state) wants; they mirror its QUIET_ARP_IGNORE and
# WANT_ARP_ANNOUNCE (tests/unit/test_beacon.py checks that they stay equal).
QUIET_ARP_IGNORE = (1, 2, 8)
WANT_ARP_ANNOUNCE = 2
DEFAULT_STATE_FILE = "/var/lib/saltext-lvs/realserver.json"
# rtnetlink multicast groups (linux/rtnetlink.h): links, IPv4 and IPv6 addresses
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
# nfnetlink: every nftables ruleset change (linux/netfilter/nfnetlink.h, NFNLGRP_NFTABLES = 7)
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES_MASK = 1 << (7 - 1)
RULE_METHODS = ("nftables", "arptables", "redirect")
RULE_GROUPS = ("nftables", "arptables", "iptables")
IFF_UP = 0x1
SIGN_ALGORITHM = "PKCS1v15-SHA224"
MAX_FINDINGS = 50
CONTEXT_KEY = "lvs_realserver.beacon"
DEFAULTS = {"remind": 120, "refresh": 60, "sign": True, "state_file": None}
# Options Salt itself reads from the same list; validate() lets them through.
SALT_OPTIONS = {"interval", "disable_during_state_run", "beacon_module", "enabled", "run_once",
                "_beacon_name"}

_Vip = namedtuple("_Vip", "address")


class _NetAddr:
    """An ``lvs_realserver.Addr`` whose ``network()`` is computed once: the facing rule asks it
    for every (VIP, address) pair, 2000 times for 100 VIPs and 20 NICs."""

    __slots__ = ("address", "prefixlen", "index", "label", "_net")

    def __init__(self, addr):
        self.address, self.prefixlen = addr.address, addr.prefixlen
        self.index, self.label = addr.index, getattr(addr, "label", None)
        self._net = None

    def network(self):
        if self._net is None:
            self._net = ipaddress.ip_network(f"{self.address}/{self.prefixlen}", strict=False)
        return self._net


class _FacingView:
    """What ``arp_facing_interfaces`` reads of an observation: the links, and only the IPv4
    addresses of ARP-capable links (the rule skips all others; 100 VIPs on lo need not be
    walked 100 times)."""

    def __init__(self, observed):
        self.links = observed.links
        capable = {link.index for link in observed.links.values() if link.arp_capable}
        self.addrs = [_NetAddr(a) for a in observed.addrs
                      if a.index in capable and a.address.version == 4]


def __virtual__():
    if not sys.platform.startswith("linux"):
        return False, "lvs_realserver beacon: Linux real servers only"
    if not os.path.exists(f"{PROC_CONF}/all/arp_ignore"):
        return False, "lvs_realserver beacon: the kernel has no arp_ignore sysctl"
    return __virtualname__


def _config(config):
    out = dict(DEFAULTS)
    for item in config or []:
        if isinstance(item, dict):
            out.update(item)
    return out


def validate(config):
    """Check the beacon configuration (a list of single-key mappings)."""
    if not isinstance(config, list):
        return False, "lvs_realserver beacon: the configuration must be a list"
    conf = _config(config)
    unknown = sorted(set(conf) - set(DEFAULTS) - SALT_OPTIONS)
    if unknown:
        return False, f"lvs_realserver beacon: unknown option(s): {', '.join(unknown)}"
    for key in ("remind", "refresh"):
        value = conf[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            return False, f"lvs_realserver beacon: {key}: '{value}' must be seconds >= 0"
    if not isinstance(conf["sign"], bool):
        return False, f"lvs_realserver beacon: sign: '{conf['sign']}' must be true or false"
    if conf["state_file"] is not None and not isinstance(conf["state_file"], str):
        return False, "lvs_realserver beacon: state_file must be a path"
    return True, "Valid beacon configuration"


# --------------------------------------------------------------------------------------------
# Findings: pure functions of (record, observation, sysctl values)
# --------------------------------------------------------------------------------------------


def finding(kind, message, **fields):
    return {"kind": kind, **{k: v for k, v in fields.items() if v is not None},
            "message": message}


def finding_key(item):
    """What identifies a finding across intervals (its values may change, it stays the same)."""
    where = item.get("interface") or item.get("device") or item.get("target") or ""
    vip = item.get("vip") or ""
    extra = item.get("prefixlen", "")
    return " ".join(str(p) for p in (item["kind"], where, vip, extra) if p != "")


def record_method(record):
    return (record.get("options") or {}).get("arp_method") or "sysctl"


def static_findings(record, observed):
    """Findings about addresses and links, which change only when netlink says so."""
    out = []
    links_by_index = {link.index: link for link in observed.links.values()}
    by_address = {}
    for a in observed.addrs:
        by_address.setdefault(a.address, []).append(a)
    redirect = record_method(record) == "redirect"
    for addr, info in sorted(record.get("vips", {}).items()):
        address = ipaddress.ip_address(addr)
        device = info.get("device") or "lo"
        if redirect:  # the VIP must be on no interface: traffic reaches the host by nat
            for a in by_address.get(address, []):
                link = links_by_index.get(a.index)
                name = link.name if link else str(a.index)
                out.append(finding(
                    "vip_held", f"{addr} is on {name}: with arp_method redirect the host "
                    "holds no VIP", interface=name, vip=addr))
            continue
        full = 32 if address.version == 4 else 128
        link = observed.links.get(device)
        if link is None:
            out.append(finding("device_missing", f"{device}, which holds {addr}, does not exist",
                               device=device, vip=addr))
            continue
        held = by_address.get(address, [])
        on_device = [a for a in held if a.index == link.index]
        if not any(a.prefixlen == full for a in on_device):
            out.append(finding("vip_missing", f"{addr}/{full} is not on {device}",
                               device=device, vip=addr))
        for a in on_device:
            if a.prefixlen != full:
                out.append(finding(
                    "vip_prefix",
                    f"{addr}/{a.prefixlen} on {device} makes the whole /{a.prefixlen} local",
                    device=device, vip=addr, prefixlen=a.prefixlen))
        for a in held:
            other = links_by_index.get(a.index)
            if other is not None and other.name != device and other.arp_capable:
                out.append(finding(
                    "vip_on_nic",
                    f"{addr} is on {other.name}, an ARP interface: it is answered there",
                    interface=other.name, vip=addr))
        if device != "lo" and not link.flags & IFF_UP:
            out.append(finding("device_down", f"{device}, which holds {addr}, is down",
                               device=device, vip=addr))
    return out


def sysctl_checks(record, observed, facing):
    """Which sysctls to read every interval, and what they must be.

    Returns ``{"arp": {conf: [vips]}, "rp_filter": [devices], "missing": [interfaces]}``. ``conf``
    is an interface name, or ``all`` under ``scope: all``. ``facing(vip, observed)`` is the
    module's own ``arp_facing_interfaces``, so the beacon and the state agree on the NICs.
    """
    options = record.get("options") or {}
    scope = options.get("scope") or "interfaces"
    chosen = options.get("interfaces") or None
    method = record_method(record)
    view = _FacingView(observed)
    arp, rp_filter, missing = {}, [], []
    for addr, info in sorted(record.get("vips", {}).items()):
        address = ipaddress.ip_address(addr)
        if address.version != 4 or method == "redirect":
            continue  # no ARP; Linux answers NS only on the interface holding the address
        device = info.get("device") or "lo"
        if device != "lo" and device in observed.links and device not in rp_filter:
            rp_filter.append(device)
        if method != "sysctl":
            continue  # the rules keep ARP quiet; they are checked by rule_findings
        if scope == "all":
            confs = ["all"]
        elif chosen:
            confs = [name for name in chosen if name in observed.links]
            missing.extend(name for name in chosen
                           if name not in observed.links and name not in missing)
        else:
            confs = facing(_Vip(address), view)
        for conf in confs:
            arp.setdefault(conf, []).append(addr)
    return {"arp": arp, "rp_filter": rp_filter, "missing": missing}


def sysctl_paths(checks):
    """Every /proc/sys file the checks read, ``all`` first."""
    paths = [f"{PROC_CONF}/all/arp_ignore", f"{PROC_CONF}/all/arp_announce"]
    for conf in checks["arp"]:
        if conf != "all":
            paths += [f"{PROC_CONF}/{conf}/arp_ignore", f"{PROC_CONF}/{conf}/arp_announce"]
    if checks["rp_filter"]:
        paths.append(f"{PROC_CONF}/all/rp_filter")
        paths += [f"{PROC_CONF}/{dev}/rp_filter" for dev in checks["rp_filter"]]
    return paths


def sysctl_findings(checks, values):
    """Findings from the sysctl values (``{path: int or None}``) of this interval."""
    out = []

    def value(conf, key):
        return values.get(f"{PROC_CONF}/{conf}/{key}")

    all_ignore, all_announce = value("all", "arp_ignore"), value("all", "arp_announce")
    for conf, vips in checks["arp"].items():
        shown = ", ".join(vips[:3]) + (f" and {len(vips) - 3} more" if len(vips) > 3 else "")
        own_ignore, own_announce = value(conf, "arp_ignore"), value(conf, "arp_announce")
        if own_ignore is None or own_announce is None or all_ignore is None:
            continue  # the interface went away between two reads: netlink says so next time
        ignore = max(all_ignore, own_ignore)
        announce = max(all_announce, own_announce)
        how = f"all {all_ignore}" if conf == "all" else f"all {all_ignore}, {conf} {own_ignore}"
        if ignore not in QUIET_ARP_IGNORE:
            out.append(finding(
                "arp_ignore", f"{conf} answers ARP for {shown} (effective arp_ignore {ignore} = "
                f"max({how}))", interface=conf, value=ignore, want="1, 2 or 8", vips=vips[:10]))
        if announce != WANT_ARP_ANNOUNCE:
            how = (f"all {all_announce}" if conf == "all"
                   else f"all {all_announce}, {conf} {own_announce}")
            out.append(finding(
                "arp_announce", f"{conf} may send ARP requests with {shown} as sender (effective "
                f"arp_announce {announce} = max({how}))", interface=conf, value=announce,
                want=WANT_ARP_ANNOUNCE, vips=vips[:10]))
    all_rp = values.get(f"{PROC_CONF}/all/rp_filter")
    for dev in checks["rp_filter"]:
        own = value(dev, "rp_filter")
        if own is None or all_rp is None:
            continue
        if max(all_rp, own) == 1:
            out.append(finding(
                "rp_filter", f"rp_filter on {dev} is strict (max(all {all_rp}, {dev} {own}) = 1):"
                " tunnelled packets for the VIP are dropped", device=dev, value=1, want="0 or 2"))
    for name in checks["missing"]:
        out.append(finding("interface_missing",
                           f"{name}, an ARP-facing NIC the state was told to use, does not exist",
                           interface=name))
    return out


def rule_findings(changes, method):
    """Findings from the state's own plan (test mode) of the recorded VIPs: each rule set it
    would rewrite. Only the rule groups: addresses and sysctls are checked every interval."""
    out = []
    for group in RULE_GROUPS:
        for target, change in sorted((changes.get(group) or {}).items()):
            old = change.get("old") if isinstance(change, dict) else None
            what = "is missing" if old is None else "is not what the state wrote"
            out.append(finding("rules", f"{target} {what} (arp_method {method})",
                               target=target, method=method))
    return out


class SysctlReader:
    """Reads a fixed set of /proc/sys files each interval through descriptors kept open:
    ``pread`` at offset 0 asks the sysctl handler again (open+read+close of 42 files costs
    about 9x more). A file that cannot be read (its interface went away) reads as None."""

    def __init__(self):
        self.fds = {}

    def use(self, paths):
        for path in set(self.fds) - set(paths):
            os.close(self.fds.pop(path))
        for path in paths:
            if path not in self.fds:
                try:
                    self.fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    pass  # read as None below; netlink will say what happened

    def read(self, paths):
        values = {}
        for path in paths:
            fd = self.fds.get(path)
            try:
                values[path] = int(os.pread(fd, 32, 0)) if fd is not None else None
            except (OSError, ValueError):
                values[path] = None
        return values

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


# --------------------------------------------------------------------------------------------
# When to say what: the report state machine (pure; time is passed in)
# --------------------------------------------------------------------------------------------


class Reporter:
    """Turns the findings of each interval into events: one when drift appears or grows, one
    when it clears, and a reminder every ``remind`` seconds while it persists."""

    def __init__(self):
        self.reported = None  # finding keys of the last event, None when clean
        self.since = None
        self.last_sent = None

    def step(self, findings, now, remind):
        keys = {finding_key(f) for f in findings}
        if not keys:
            if self.reported is None:
                return None
            self.reported, self.since, self.last_sent = None, None, now
            return {"event": "clear", "findings": [], "new": [], "repeat": False}
        if self.reported is None:
            self.since = now
            new = keys
        else:
            new = keys - self.reported
        repeat = False
        if not new:
            if not remind or now - self.last_sent < remind:
                self.reported = keys  # fewer findings than before: said nothing new
                return None
            repeat = True
        self.reported = keys
        self.last_sent = now
        return {"event": "drift", "findings": findings, "new": sorted(new), "repeat": repeat}


# --------------------------------------------------------------------------------------------
# The watcher kept in __context__ between intervals
# --------------------------------------------------------------------------------------------


class Watcher:
    """What the beacon keeps between intervals (in ``__context__``): subscriptions, the record,
    the last observation's findings, the sysctls to read, and the report state."""

    def __init__(self, state_file, observe, facing, plan=None):
        self.state_file = state_file
        self.observe = observe  # lvs_realserver.observe
        self.facing = facing  # lvs_realserver.arp_facing_interfaces
        self.plan = plan  # lvs_realserver.remove(vips=[], test=True): the rule methods' check
        self.sock = None  # rtnetlink: links and addresses
        self.nf_sock = None  # nfnetlink: nftables changes (rule methods only)
        self.record_stat = None
        self.record = {"vips": {}}
        self.dirty = True
        self.last_full = 0.0
        self.static = []
        self.rules = []
        self.checks = {"arp": {}, "rp_filter": [], "missing": []}
        self.paths = sysctl_paths(self.checks)
        self.sysctls = SysctlReader()
        self.reporter = Reporter()
        self.errors = set()

    # -- change detection ------------------------------------------------------------------------

    def _subscribe(self, protocol, groups):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC, protocol)
        try:
            sock.bind((0, groups))
        except OSError:
            sock.close()
            raise
        self.dirty = True  # whatever happened while we were not subscribed
        return sock

    def close(self):
        self.sysctls.close()
        self.dirty = True  # descriptors are reopened by the next full read
        for name in ("sock", "nf_sock"):
            sock = getattr(self, name)
            if sock is not None:
                sock.close()
                setattr(self, name, None)

    @staticmethod
    def _drain(sock):
        """True when the kernel announced a change on ``sock`` since the last call."""
        changed = False
        while True:
            try:
                if not sock.recv(65536):
                    return changed
                changed = True
            except BlockingIOError:
                return changed
            except OSError as err:
                if err.errno == errno.ENOBUFS:  # notifications overflowed: something changed
                    changed = True
                    continue
                raise

    def _record_changed(self):
        try:
            st = os.stat(self.state_file)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            sig = None
        if sig == self.record_stat:
            return False
        self.record_stat = sig
        if sig is None:
            self.record = {"vips": {}}
            return True
        try:
            with open(self.state_file, encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError) as err:
            self._error(f"cannot read {self.state_file}: {err}; watching nothing until it is "
                        "valid again")
            record = {}
        if not isinstance(record, dict) or not isinstance(record.get("vips"), dict):
            record = {"vips": {}}
        self.record = record
        return True

    def _error(self, text):
        if text not in self.errors:
            self.errors.add(text)
            log.warning("lvs_realserver beacon: %s", text)

    def _rule_method(self):
        method = record_method(self.record)
        return method if self.record.get("vips") and method in RULE_METHODS else None

    # -- one interval ----------------------------------------------------------------------------

    def check(self, now, refresh):
        """The findings of this interval. Cheap unless the kernel announced a change."""
        if self.sock is None:
            self.sock = self._subscribe(socket.NETLINK_ROUTE,
                                        RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        changed = self._drain(self.sock)
        if self._record_changed():
            changed = True
        rules_changed = False
        if self._rule_method():
            if self.nf_sock is None:
                try:
                    self.nf_sock = self._subscribe(NETLINK_NETFILTER, NFNLGRP_NFTABLES_MASK)
                except OSError as err:  # no nf_tables: legacy tables are read every refresh
                    self._error(f"no nftables notifications ({err}); rules are re-read every "
                                "refresh interval")
                    self.nf_sock = False
            if self.nf_sock:
                rules_changed = self._drain(self.nf_sock)
        elif self.nf_sock:
            self.nf_sock.close()
            self.nf_sock = None
        if changed or self.dirty or (refresh and now - self.last_full >= refresh):
            self.reobserve(now)
        elif rules_changed:
            self.rules = self._rule_findings()
        values = self.sysctls.read(self.paths)
        if any(v is None for v in values.values()):
            self.dirty = True  # an interface vanished between dump and read
        return self.static + self.rules + sysctl_findings(self.checks, values)

    def reobserve(self, now):
        self.dirty = False
        self.last_full = now
        if not self.record.get("vips"):
            self.static, self.rules = [], []
            self.checks = {"arp": {}, "rp_filter": [], "missing": []}
        else:
            observed = self.observe()
            self.static = static_findings(self.record, observed)
            self.checks = sysctl_checks(self.record, observed, self.facing)
            self.rules = self._rule_findings()
        self.paths = sysctl_paths(self.checks)
        self.sysctls.use(self.paths)

    def _rule_findings(self):
        method = self._rule_method()
        if method is None or self.plan is None:
            return []
        if (self.record.get("options") or {}).get("arp_methods_in_flight"):
            return []  # a run is switching methods right now; its final record follows
        try:
            planned = self.plan(vips=[], test=True, state_file=self.state_file)
        except Exception as err:  # pylint: disable=broad-except
            self._error(f"cannot check the {method} rules: {err}")
            return []
        return rule_findings(planned.get("changes") or {}, method)


# --------------------------------------------------------------------------------------------
# Beacon entry points
# --------------------------------------------------------------------------------------------


def _state_file(conf):
    if conf.get("state_file"):
        return conf["state_file"]
    try:
        settings = __salt__["config.get"]("lvs_realserver", {}) or {}  # pylint: disable=undefined-variable
    except (NameError, KeyError):
        settings = {}
    return settings.get("state_file") or DEFAULT_STATE_FILE


def _watcher(conf):
    watcher = __context__.get(CONTEXT_KEY)  # pylint: disable=undefined-variable
    if watcher is None:
        funcs = __salt__  # pylint: disable=undefined-variable
        watcher = Watcher(_state_file(conf), funcs["lvs_realserver.observe"],
                          funcs["lvs_realserver.arp_facing_interfaces"],
                          funcs.get("lvs_realserver.remove"))
        __context__[CONTEXT_KEY] = watcher  # pylint: disable=undefined-variable
    return watcher


def sign(message, key_path):
    """Sign ``message`` with the minion's private key; base64 text, or None without a key."""
    import salt.crypt  # pylint: disable=import-outside-toplevel

    try:
        key = salt.crypt.PrivateKey.from_file(key_path)
        return base64.b64encode(key.sign(message, SIGN_ALGORITHM)).decode("ascii")
    except (OSError, salt.crypt.InvalidKeyError) as err:
        log.warning("lvs_realserver beacon: cannot sign with %s: %s", key_path, err)
        return None


def auth_message(event, minion_id, stamp, nonce):
    """The text the beacon signs and the remediation runner verifies."""
    return f"lvs_realserver|{event}|{minion_id}|{stamp:.6f}|{nonce}"


def beacon(config):
    """
    Report drift of this real server from what ``lvs_realserver`` manages: once when it appears
    (or grows), once when it clears, and every ``remind`` seconds while it persists.

    .. code-block:: yaml

        beacons:
          lvs_realserver:
            - interval: 1
            - disable_during_state_run: true
    """
    conf = _config(config)
    try:
        watcher = _watcher(conf)
    except KeyError:
        if not __context__.get(CONTEXT_KEY + ".missing"):  # pylint: disable=undefined-variable
            __context__[CONTEXT_KEY + ".missing"] = True  # pylint: disable=undefined-variable
            log.warning("lvs_realserver beacon: the lvs_realserver execution module is not "
                        "loaded (run saltutil.sync_all or install saltext-lvs); checking nothing")
        return []
    wall, mono = time.time(), time.monotonic()
    try:
        findings = watcher.check(mono, conf["refresh"])
    except (OSError, ValueError) as err:
        watcher.close()
        watcher.dirty = True
        watcher._error(f"check failed: {err}")  # pylint: disable=protected-access
        return []
    event = watcher.reporter.step(findings, mono, conf["remind"])
    if event is None:
        return []
    truncated = len(event["findings"]) - MAX_FINDINGS
    event["findings"] = event["findings"][:MAX_FINDINGS]
    if truncated > 0:
        event["truncated"] = truncated
    if watcher.reporter.since is not None:
        event["since"] = round(wall - (mono - watcher.reporter.since), 3)
    minion_id = __opts__["id"]  # pylint: disable=undefined-variable
    msg = auth_message(event["event"], minion_id, wall, secrets.token_hex(8))
    sig = None
    if conf["sign"]:
        sig = sign(msg, os.path.join(__opts__["pki_dir"], "minion.pem"))  # pylint: disable=undefined-variable
    event["auth"] = {"msg": msg, "sig": sig}
    event["tag"] = event["event"]
    if event["event"] == "drift":
        log.info("lvs_realserver beacon: drift%s: %s", " (reminder)" if event["repeat"] else "",
                 "; ".join(f["message"] for f in event["findings"]))
    else:
        log.info("lvs_realserver beacon: drift cleared")
    return [event]


def close(config):  # pylint: disable=unused-argument
    """Release the netlink socket (Salt calls this on refresh and while a state runs).

    What was reported is kept, so the ``clear`` event still follows a repair made by a state run.
    """
    watcher = __context__.get(CONTEXT_KEY)  # pylint: disable=undefined-variable
    if watcher is not None:
        watcher.close()
