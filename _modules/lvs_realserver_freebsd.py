"""
LVS real servers on FreeBSD: the VIP as a /32 (/128) alias on ``lo0``, kept in ``rc.conf``.

FreeBSD answers an ARP request on an interface only for addresses configured on that interface
(arp(4); unless ``net.link.ether.inet.proxyall`` is 1), and ``lo0`` takes no part in ARP. A VIP
held on ``lo0`` is therefore never announced or answered for on ``em0``: no sysctl is needed,
which the LVS HOWTO and LVSKB report since FreeBSD 3. The alias is added with ``-arp`` as the
HOWTO does (it sets NOARP on ``lo0``, which has no effect on a loopback but says what is meant).

The three steps of a run, each a function of its own:

- observe: ``ifconfig -a`` (every interface and address), ``sysrc -f <rc.conf> -a`` (the
  variables set in ``rc.conf``) and ``sysctl -n net.link.ether.inet.proxyall``;
- plan (pure): live changes first, then ``rc.conf``; a managed VIP that is no longer wanted
  is removed live (``ifconfig lo0 inet <VIP> -alias``) before its ``rc.conf`` entry goes;
- apply: the commands in order through ``cmd.run_all`` (``lvs_realserver_cmd.execute``).

``rc.conf`` entries are ``ifconfig_lo0_alias<N>="inet <VIP> netmask 0xffffffff"`` (IPv6:
``inet6 <VIP> prefixlen 128``), written with ``sysrc``. ``/etc/rc.d/netif`` reads them from
``alias0`` upwards and stops at the first missing number, so the entries are kept contiguous:
when a VIP goes, the entries after it move down one. Entries for other addresses stay as they
are, in their order. A run that would have to rewrite entries behind such a gap refuses and
says so.

Where the module keeps things (minion config, all optional):

.. code-block:: yaml

    lvs_realserver:
      state_file: /var/db/saltext-lvs/realserver.json   # what this module manages
      rc_conf: /etc/rc.conf                             # where the aliases are persisted

:depends: ifconfig(8), sysrc(8) (FreeBSD 9.2+)
:platform: FreeBSD
"""

import ipaddress
import re

from salt.exceptions import SaltInvocationError

__virtualname__ = "lvs_realserver"

DEFAULT_PATHS = {
    "state_file": "/var/db/saltext-lvs/realserver.json",
    "rc_conf": "/etc/rc.conf",
}
PROXYALL = "net.link.ether.inet.proxyall"
FULL = {4: 32, 6: 128}


def __virtual__():
    if __grains__.get("kernel") == "FreeBSD":  # pylint: disable=undefined-variable
        return __virtualname__
    return False, "lvs_realserver_freebsd: FreeBSD only (kernel grain)"


def _read(argv):
    """Run a read-only command and return its output (lvs_realserver_cmd.read)."""
    return __salt__["lvs_realserver_cmd.read"](argv)  # pylint: disable=undefined-variable


# --------------------------------------------------------------------------------------------
# Observe: parse what ifconfig(8), sysrc(8) and sysctl(8) print
# --------------------------------------------------------------------------------------------

_IFACE = re.compile(r"^(?P<name>[^\s:]+): flags=[0-9a-f]+<(?P<flags>[^>]*)>")
_INET = re.compile(
    r"^\s+inet (?P<addr>[0-9.]+)(?:/(?P<plen>\d+))?(?: netmask (?P<mask>0x[0-9a-f]+))?"
)
_INET6 = re.compile(
    r"^\s+inet6 (?P<addr>[0-9a-fA-F:.]+)(?:%\S+)?(?:/(?P<plen>\d+))?(?: prefixlen (?P<pl>\d+))?"
)


def parse_ifconfig(text):
    """``ifconfig -a`` -> ``{name: {"flags": [...], "addrs": [(address, prefixlen)]}}``.

    Reads both the classic form (``inet 10.0.0.1 netmask 0xffffff00``,
    ``inet6 ::1 prefixlen 128``) and the CIDR form newer ifconfig can print (``10.0.0.1/24``).
    """
    ifaces = {}
    current = None
    for line in text.splitlines():
        head = _IFACE.match(line)
        if head:
            current = ifaces.setdefault(
                head["name"], {"flags": head["flags"].split(","), "addrs": []}
            )
            continue
        if current is None:
            continue
        m4 = _INET.match(line)
        if m4:
            if m4["plen"]:
                plen = int(m4["plen"])
            elif m4["mask"]:
                plen = bin(int(m4["mask"], 16)).count("1")
            else:
                plen = 32
            current["addrs"].append((ipaddress.ip_address(m4["addr"]), plen))
            continue
        m6 = _INET6.match(line)
        if m6:
            plen = int(m6["plen"] or m6["pl"] or 128)
            current["addrs"].append((ipaddress.ip_address(m6["addr"]), plen))
    return ifaces


def parse_sysrc(text):
    """``sysrc -a`` (``name: value`` per line) -> ``{name: value}``."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            out[name] = value
        elif line.endswith(":"):  # a variable set to the empty string
            out[line[:-1]] = ""
    return out


def parse_alias(value):
    """``inet 198.51.100.100 netmask 0xffffffff`` -> ``(address, prefixlen or None)``.

    None for an entry that is not an address of ours to read (``link``, ``ether``, garbage),
    prefixlen None when the entry gives no netmask (the kernel then picks a default mask, not
    a host mask).
    """
    words = value.split()
    if len(words) < 2 or words[0] not in ("inet", "inet6"):
        return None
    addr, _, plen = words[1].partition("/")
    try:
        address = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if plen.isdigit():
        return address, int(plen)
    for key, val in zip(words[2:], words[3:]):
        if key == "netmask":
            try:
                mask = int(val, 16) if val.startswith("0x") else int(
                    ipaddress.ip_address(val))
            except ValueError:
                return address, None
            return address, bin(mask).count("1")
        if key == "prefixlen" and val.isdigit():
            return address, int(val)
    return address, None


def observe(paths):
    """One reading of the host: interfaces, the rc.conf variables, proxy ARP."""
    ifaces = parse_ifconfig(_read(["ifconfig", "-a"]))
    rc = parse_sysrc(_read(["sysrc", "-f", paths["rc_conf"], "-a"]))
    proxyall = _read(["sysctl", "-n", PROXYALL]).strip()
    return {"ifaces": ifaces, "rc": rc, "proxyall": int(proxyall) if proxyall.isdigit() else 0}


def is_loopback(observed, name):
    iface = observed["ifaces"].get(name)
    return iface is not None and "LOOPBACK" in iface["flags"]


def aliases(observed, device):
    """The ``ifconfig_<device>_alias<N>`` entries: ``(live, dead)``.

    ``live`` lists the values of alias0, alias1, ... up to the first missing number (what rc.d
    applies at boot); ``dead`` maps the numbers behind that gap to their values.
    """
    pattern = re.compile(rf"^ifconfig_{re.escape(device)}_alias(\d+)$")
    found = {}
    for name, value in observed["rc"].items():
        m = pattern.match(name)
        if m:
            found[int(m.group(1))] = value
    live = []
    while len(live) in found:
        live.append(found[len(live)])
    dead = {n: v for n, v in found.items() if n >= len(live)}
    return live, dead


# --------------------------------------------------------------------------------------------
# Plan (pure)
# --------------------------------------------------------------------------------------------


def alias_value(address):
    if address.version == 4:
        return f"inet {address} netmask 0xffffffff"
    return f"inet6 {address} prefixlen 128"


def add_command(device, address):
    if address.version == 4:
        return ["ifconfig", device, "alias", str(address), "netmask", "0xffffffff", "-arp"]
    return ["ifconfig", device, "inet6", str(address), "prefixlen", "128", "alias"]


def del_command(device, address):
    return ["ifconfig", device, "inet" if address.version == 4 else "inet6", str(address),
            "-alias"]


def _held(observed, device, address):
    return [plen for addr, plen in observed["ifaces"].get(device, {"addrs": []})["addrs"]
            if addr == address]


def _check(spec, observed):
    errors = []
    for vip in spec["vips"]:
        if not is_loopback(observed, vip["device"]):
            errors.append(
                f"{vip['key']}: device '{vip['device']}' is not a loopback interface on this host"
            )
        for name, iface in sorted(observed["ifaces"].items()):
            if "LOOPBACK" in iface["flags"]:
                continue
            if any(addr == vip["address"] for addr, _ in iface["addrs"]):
                errors.append(
                    f"{vip['key']}: {vip['address']} is configured on {name}, which answers ARP "
                    f"for it: a real server holds the VIP on {vip['device']} only; remove it "
                    f"from {name} first (nothing was changed)"
                )
    if errors:
        raise SaltInvocationError("\n".join(errors))


def _address_steps(spec, observed, managed, exclusive):
    steps = []
    desired = {str(v["address"]) for v in spec["vips"]}
    for vip in spec["vips"]:
        address, device = vip["address"], vip["device"]
        full = FULL[address.version]
        held = _held(observed, device, address)
        for plen in held:
            if plen != full:  # a wider mask on lo0 routes the whole subnet to the loopback
                item = f"{address}/{plen} dev {device}"
                steps.append({"group": "address", "item": item, "old": item, "new": None,
                              "run": [del_command(device, address)]})
        item = f"{address}/{full} dev {device}"
        if full not in held:
            steps.append({"group": "address", "item": item, "old": None, "new": item,
                          "run": [add_command(device, address)]})
        elif str(address) not in managed:
            steps.append({"group": "address", "item": item, "old": "present, unmanaged",
                          "new": "present, managed"})
    if exclusive:
        for addr, info in sorted(managed.items()):
            address = ipaddress.ip_address(addr)
            full = FULL[address.version]
            if addr in desired or full not in _held(observed, info["device"], address):
                continue
            item = f"{address}/{full} dev {info['device']}"
            steps.append({"group": "address", "item": item, "old": item, "new": None,
                          "run": [del_command(info["device"], address)]})
    return steps


def _rc_steps(persisted, observed, managed, keep, rc_conf):
    """Rewrite the alias entries of each device so they hold exactly ``persisted``.

    Entries for addresses this module does not manage keep their value and their order; the
    entries of VIPs that go are dropped and the ones after them move down.
    """
    steps = []
    owners = {**managed, **keep}
    for device in sorted({info["device"] for info in owners.values()}):
        ours = {addr for addr, info in owners.items() if info["device"] == device}
        wanted = [addr for addr, dev in persisted if dev == device]
        live, dead = aliases(observed, device)
        new = []
        placed = set()
        for value in live:
            parsed = parse_alias(value)
            if parsed is None or str(parsed[0]) not in ours:
                new.append(value)  # not ours: kept, in its place
            elif parsed[0] in wanted and parsed[0] not in placed:
                right = parsed[1] == FULL[parsed[0].version]
                new.append(value if right else alias_value(parsed[0]))
                placed.add(parsed[0])
        new.extend(alias_value(addr) for addr in wanted if addr not in placed)
        todo = []
        for n in range(max(len(live), len(new))):
            old = live[n] if n < len(live) else None
            value = new[n] if n < len(new) else None
            if old == value:
                continue
            name = f"ifconfig_{device}_alias{n}"
            run = (["sysrc", "-f", rc_conf, f"{name}={value}"] if value is not None
                   else ["sysrc", "-f", rc_conf, "-x", name])
            todo.append({"group": "rc.conf", "item": name, "old": old, "new": value,
                         "run": [run]})
        if todo and dead:
            raise SaltInvocationError(
                f"{rc_conf}: ifconfig_{device}_alias{min(dead)} follows a gap (there is no "
                f"ifconfig_{device}_alias{len(live)}): /etc/rc.d/netif stops at the gap and "
                f"never applies it. Renumber the ifconfig_{device}_alias entries from 0 without "
                "gaps, then run again (nothing was changed)"
            )
        # sets from the front, deletes from the back: the list stays contiguous at every step
        steps.extend(t for t in todo if t["new"] is not None)
        steps.extend(reversed([t for t in todo if t["new"] is None]))
    return steps


def plan(spec, observed, record, paths, exclusive=True):
    """Decide, without touching anything, the steps that converge the host to ``spec``.

    Order: live addresses first (a wrong mask replaced, a missing VIP added, then a managed VIP
    no longer wanted removed), then ``rc.conf``, so a VIP is never persisted before it exists
    and is gone live before its boot entry goes.
    """
    _check(spec, observed)
    managed = dict(record.get("vips", {}))
    keep = {str(v["address"]): {"device": v["device"]} for v in spec["vips"]}
    if not exclusive:
        for addr, info in managed.items():
            keep.setdefault(addr, info)
    steps = _address_steps(spec, observed, managed, exclusive)
    persisted = (
        [(ipaddress.ip_address(addr), info["device"]) for addr, info in keep.items()]
        if spec["persist"] else []
    )
    steps += _rc_steps(persisted, observed, managed, keep, paths["rc_conf"])
    warnings = []
    if observed["proxyall"]:
        warnings.append(
            f"{PROXYALL} is 1: this host answers ARP for addresses it routes through another "
            "interface, the VIP on lo0 included; set it to 0 (sysctl and /etc/sysctl.conf)"
        )
    return {"steps": steps, "warnings": warnings, "vips": keep}


# --------------------------------------------------------------------------------------------
# Audit (read-only)
# --------------------------------------------------------------------------------------------


def audit_observed(vips, observed, interfaces=None):
    """The audit as a pure function of an observation: findings as tuples
    ``(severity, vip, interface, message, fix)``."""
    del interfaces  # ARP on FreeBSD is per interface: there is no interface to choose
    findings = []
    report_vips = {}
    report_ifaces = {
        name: {"loopback": "LOOPBACK" in iface["flags"], "holds_vips": []}
        for name, iface in sorted(observed["ifaces"].items())
    }
    persisted = {}
    for device in (n for n, i in observed["ifaces"].items() if "LOOPBACK" in i["flags"]):
        live, dead = aliases(observed, device)
        for n, value in enumerate(live):
            parsed = parse_alias(value)
            if parsed:
                persisted.setdefault(parsed[0], []).append((device, n, parsed[1], True))
        for n, value in dead.items():
            parsed = parse_alias(value)
            if parsed:
                persisted.setdefault(parsed[0], []).append((device, n, parsed[1], False))
    for vip in vips:
        full = FULL[vip.version]
        held = [
            {"interface": name, "prefixlen": plen}
            for name, iface in sorted(observed["ifaces"].items())
            for addr, plen in iface["addrs"]
            if addr == vip
        ]
        report_vips[str(vip)] = {
            "held_on": held,
            "rc_conf": [f"ifconfig_{d}_alias{n}" for d, n, _, _ in persisted.get(vip, [])],
        }
        if not held:
            findings.append((
                "warning", vip, None,
                f"{vip} is not configured on this host: a DR real server drops traffic for it",
                f"{' '.join(add_command('lo0', vip))} (or lvs_realserver.apply)",
            ))
        for h in held:
            name, plen = h["interface"], h["prefixlen"]
            report_ifaces[name]["holds_vips"].append(str(vip))
            if not report_ifaces[name]["loopback"]:
                findings.append((
                    "error", vip, name,
                    f"{vip} is configured on {name}: FreeBSD answers ARP on {name} for it and "
                    "races the director",
                    f"ifconfig {name} {'inet' if vip.version == 4 else 'inet6'} {vip} -alias; "
                    f"{' '.join(add_command('lo0', vip))}",
                ))
            elif plen != full:
                findings.append((
                    "error", vip, name,
                    f"{vip}/{plen} on {name} has the wrong netmask: it routes the whole /{plen} "
                    f"to the loopback, so this host no longer reaches its neighbours there",
                    f"{' '.join(del_command(name, vip))}; {' '.join(add_command(name, vip))}",
                ))
        entries = persisted.get(vip, [])
        if any(report_ifaces[h["interface"]]["loopback"] for h in held) and not entries:
            findings.append((
                "warning", vip, None,
                f"{vip} is not in rc.conf: it is gone after a reboot",
                f"sysrc ifconfig_lo0_alias<N>=\"{alias_value(vip)}\" (N: the next free number)",
            ))
        for device, n, plen, live in entries:
            name = f"ifconfig_{device}_alias{n}"
            if not live:
                findings.append((
                    "warning", vip, device,
                    f"{name} holds {vip} but follows a gap in the alias numbers: rc.d stops "
                    "at the gap, so it never comes back at boot",
                    f"renumber the ifconfig_{device}_alias entries from 0 without gaps",
                ))
            if plen != full:
                shown = f"/{plen}" if plen is not None else "no netmask"
                findings.append((
                    "error", vip, device,
                    f"{name} gives {vip} {shown}: after a reboot it comes back with the wrong "
                    "netmask",
                    f"sysrc {name}=\"{alias_value(vip)}\"",
                ))
    if observed["proxyall"]:
        findings.append((
            "error", None, None,
            f"{PROXYALL}=1: this host answers ARP for addresses it routes through another "
            "interface, so every NIC answers for the VIPs on lo0 and races the director",
            f"sysctl {PROXYALL}=0, and remove it from /etc/sysctl.conf",
        ))
    return {"findings": findings, "vips": report_vips, "interfaces": report_ifaces}


def local_vips(observed):
    """Addresses on loopback interfaces apart from the loopback and link-local ones."""
    return [
        addr
        for _name, iface in sorted(observed["ifaces"].items())
        if "LOOPBACK" in iface["flags"]
        for addr, _plen in iface["addrs"]
        if not addr.is_loopback and not addr.is_link_local
    ]


BACKEND = {
    "os": "FreeBSD",
    "paths": DEFAULT_PATHS,
    "devices": {"lo": "lo0"},
    "families": (4, 6),
    "observe": observe,
    "plan": plan,
    "audit": audit_observed,
    "local_vips": local_vips,
    "local_source": "lo0",
}


# --------------------------------------------------------------------------------------------
# Public functions: the same signatures and results as lvs_realserver on Linux
# --------------------------------------------------------------------------------------------


def _common(name):
    return __salt__[f"lvs_realserver_cmd.{name}"]  # pylint: disable=undefined-variable


def apply(vips=None, scope=None, interfaces=None, persist=None, device="lo", label=None,
          exclusive=False, test=False, **paths):
    """
    Hold VIPs as /32 (/128) aliases on ``lo0`` and persist them in ``rc.conf``.

    vips
        Addresses (no prefix) or mappings ``{address, device}``. Default: this minion's VIPs
        from the ``lvs`` pillar. The pillar's ``lo`` is ``lo0`` here; TUN VIPs are refused.
    scope, interfaces
        Accepted for the Linux signature; FreeBSD answers ARP per interface and needs neither.
    persist
        Keep the aliases in ``rc.conf`` (``ifconfig_lo0_alias<N>``). Default: pillar, else true.
    exclusive
        Remove managed VIPs not named here (the state does this). Default: false.
    test
        Return the changes a run would make and touch nothing.
    state_file, rc_conf
        Paths; default from minion config ``lvs_realserver``, else the system paths.

    CLI Example:

    .. code-block:: bash

        salt 'rs-bsd*' lvs_realserver.apply
        salt 'rs-bsd*' lvs_realserver.apply vips='[198.51.100.100]' test=True
    """
    return _common("apply_with")(BACKEND, vips=vips, scope=scope, interfaces=interfaces,
                                 persist=persist, device=device, label=label,
                                 exclusive=exclusive, test=test, **paths)


def remove(vips=None, persist=None, test=False, **paths):
    """
    Remove managed VIPs (all by default): the ``lo0`` alias first, then its ``rc.conf`` entry
    (later entries move down one). Addresses this module does not manage are never touched.

    CLI Example:

    .. code-block:: bash

        salt 'rs-bsd*' lvs_realserver.remove
        salt 'rs-bsd*' lvs_realserver.remove vips='[198.51.100.100]' test=True
    """
    return _common("remove_with")(BACKEND, vips=vips, persist=persist, test=test, **paths)


def managed(**paths):
    """
    The VIPs this module manages on this host (its state record).

    CLI Example:

    .. code-block:: bash

        salt 'rs-bsd*' lvs_realserver.managed
    """
    return _common("managed_with")(BACKEND, **paths)


def audit(vips=None, interfaces=None, **paths):
    """
    Read-only check of this host for its VIPs: where each VIP is held and with what mask, its
    ``rc.conf`` entry, and proxy ARP. Returns ``{ok, findings: [{severity, vip, interface,
    message, fix}], vips, interfaces, source}``; ``ok`` is false when any finding is an error.
    VIPs come from ``vips``, else the pillar, else every non-loopback address on ``lo0``.

    CLI Example:

    .. code-block:: bash

        salt-call --local lvs_realserver.audit
        salt 'rs-bsd*' lvs_realserver.audit vips='[198.51.100.100]'
    """
    return _common("audit_with")(BACKEND, vips=vips, interfaces=interfaces, **paths)
