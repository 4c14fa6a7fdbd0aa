"""
LVS real servers on Solaris and illumos: the VIP as a /32 (/128) address on ``lo0``.

Solaris answers ARP on an interface only for the addresses of that interface, and ``lo0`` takes
no part in ARP, so a VIP held on ``lo0`` is never answered for on ``net0``; no tunable is
needed. What can break it is the ``hostmodel`` (``strong`` drops a packet for the VIP that
arrives on ``net0``, because the VIP is not on ``net0``), which the run warns about and the
audit reports.

Two tool sets, picked by what the host has (``cmd.which ipadm``):

- ``ipadm`` (Solaris 11, illumos distributions): an address object ``lo0/lvs<N>`` per VIP,
  ``ipadm create-addr -T static -a <VIP>/32 lo0/lvs<N>``. ipadm keeps it across reboots by
  itself (``persist: false`` adds ``-t``, temporary). Observed with
  ``ipadm show-addr -p -o addrobj,type,state,current,persistent,addr``.
- ``ifconfig`` (Solaris 10 and older): a logical interface per VIP, ``ifconfig lo0:<N> plumb``
  then ``ifconfig lo0:<N> <VIP> netmask 255.255.255.255 up``, persisted in
  ``/etc/hostname.lo0:<N>`` (``<VIP> netmask 255.255.255.255 up``), which the boot scripts
  apply. Observed with ``ifconfig -a`` and by reading those files. IPv4 only.

The three steps of a run: observe (parse the commands' output), plan (a pure function: live
changes first, then the boot files; a VIP that goes is removed live before its file), apply
(the commands in order through ``cmd.run_all``, ``lvs_realserver_cmd.execute``).

Where the module keeps things (minion config, all optional):

.. code-block:: yaml

    lvs_realserver:
      state_file: /var/opt/saltext-lvs/realserver.json   # what this module manages
      hostname_dir: /etc                                 # hostname.lo0:N (ifconfig hosts)

:depends: ipadm(1M) or ifconfig(1M)
:platform: SunOS (Solaris 10, Solaris 11, illumos)
"""

import ipaddress
import os
import re

from salt.exceptions import SaltInvocationError

__virtualname__ = "lvs_realserver"

DEFAULT_PATHS = {
    "state_file": "/var/opt/saltext-lvs/realserver.json",
    "hostname_dir": "/etc",
}
FULL = {4: 32, 6: 128}
LOOPBACK = "lo0"
SHOW_ADDR = ["ipadm", "show-addr", "-p", "-o", "addrobj,type,state,current,persistent,addr"]
STRICT_DST = ["ndd", "-get", "/dev/ip", "ip_strict_dst_multihoming"]


def __virtual__():
    if __grains__.get("kernel") == "SunOS":  # pylint: disable=undefined-variable
        return __virtualname__
    return False, "lvs_realserver_solaris: Solaris and illumos only (kernel grain)"


def _read(argv):
    return __salt__["lvs_realserver_cmd.read"](argv)  # pylint: disable=undefined-variable


def hostmodel_command(family):
    return ["ipadm", "show-prop", "-c", "-o", "current", "-p", "hostmodel", f"ipv{family}"]


# --------------------------------------------------------------------------------------------
# Observe: parse what ipadm(1M), ifconfig(1M) and ndd(1M) print
# --------------------------------------------------------------------------------------------


def split_parsable(line):
    """One line of ``ipadm ... -p -o a,b``: fields split on ``:``, with ``\\:`` and ``\\\\``
    standing for a literal colon and backslash (libofmt escapes them when several fields are
    printed, so an IPv6 address reads ``2001\\:db8\\:\\:100/128``)."""
    fields, cur, escaped = [], [], False
    for ch in line:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    fields.append("".join(cur))
    return fields


def _addr(text):
    """``198.51.100.100/32`` -> (address, prefixlen); None for ``?`` or ``a->b`` forms."""
    addr, _, plen = text.partition("/")
    try:
        address = ipaddress.ip_address(addr)
    except ValueError:
        return None
    return address, int(plen) if plen.isdigit() else FULL[address.version]


def parse_show_addr(text):
    """``ipadm show-addr -p -o addrobj,type,state,current,persistent,addr`` -> address list.

    ``persistent`` flags: ``U--`` means the address is in the persistent configuration and comes
    up at boot; a temporary address shows ``---``.
    """
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = split_parsable(line)
        if len(fields) != 6:
            continue
        addrobj, atype, state, current, persistent, addr = fields
        parsed = _addr(addr)
        if parsed is None:
            continue
        ifname = addrobj.split("/", 1)[0]
        out.append({
            "name": addrobj,
            "ifname": ifname,
            "address": parsed[0],
            "plen": parsed[1],
            "type": atype,
            "up": state == "ok" and "U" in current,
            "state": state,
            "boot": "U" in persistent,
            "loopback": re.fullmatch(r"lo\d+", ifname) is not None,
        })
    return out


_IF_HEAD = re.compile(r"^(?P<name>\S+?): flags=[0-9a-f]+<(?P<flags>[^>]*)>")
_IF_INET = re.compile(r"^\s+inet (?P<addr>[0-9.]+) netmask (?P<mask>[0-9a-f]+)")
_IF_INET6 = re.compile(r"^\s+inet6 (?P<addr>[0-9a-fA-F:.]+)/(?P<plen>\d+)")


def parse_ifconfig(text):
    """``ifconfig -a`` (one stanza per logical interface, IPv4 and IPv6 apart) -> addresses."""
    out = []
    head = None
    for line in text.splitlines():
        m = _IF_HEAD.match(line)
        if m:
            head = {"name": m["name"], "flags": m["flags"].split(",")}
            continue
        if head is None:
            continue
        m4 = _IF_INET.match(line)
        m6 = _IF_INET6.match(line)
        if not (m4 or m6):
            continue
        if m4:
            address, plen = ipaddress.ip_address(m4["addr"]), bin(int(m4["mask"], 16)).count("1")
        else:
            address, plen = ipaddress.ip_address(m6["addr"]), int(m6["plen"])
        out.append({
            "name": head["name"],
            "ifname": head["name"].split(":", 1)[0],
            "address": address,
            "plen": plen,
            "type": "static",
            "up": "UP" in head["flags"],
            "state": "up" if "UP" in head["flags"] else "down",
            "boot": None,  # in the hostname files, read apart
            "loopback": "LOOPBACK" in head["flags"],
        })
    return out


def _mask_plen(mask):
    """``255.255.255.255``, ``ffffffff`` or ``0xffffffff`` -> 32; None for ``+`` (the mask from
    /etc/netmasks) or anything else."""
    try:
        return bin(int(ipaddress.IPv4Address(mask))).count("1")
    except ValueError:
        pass
    if re.fullmatch(r"(0x)?[0-9a-fA-F]{8}", mask):
        return bin(int(mask, 16)).count("1")
    return None


def parse_hostname_file(text):
    """``/etc/hostname.lo0:N``: ``(address, prefixlen or None, up)`` from its first line."""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            address = ipaddress.ip_address(words[0])
        except ValueError:
            return None
        plen = None
        if "netmask" in words[:-1]:
            plen = _mask_plen(words[words.index("netmask") + 1])
        return address, plen, "up" in words
    return None


def read_hostname_files(directory):
    """Every ``hostname.lo0:<N>`` in ``directory``: ``{path: text}`` (read directly)."""
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out = {}
    for name in names:
        if re.fullmatch(rf"hostname\.{LOOPBACK}:\d+", name):
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8") as fh:
                out[path] = fh.read()
    return out


def observe(paths):
    """One reading of the host, with the tool set it has."""
    if __salt__["cmd.which"]("ipadm"):  # pylint: disable=undefined-variable
        addrs = parse_show_addr(_read(SHOW_ADDR))
        hostmodel = {f: _read(hostmodel_command(f)).strip() for f in (4, 6)}
        return {"tool": "ipadm", "addrs": addrs, "files": {}, "hostmodel": hostmodel}
    addrs = parse_ifconfig(_read(["ifconfig", "-a"]))
    strict = _read(STRICT_DST).strip()
    return {
        "tool": "ifconfig",
        "addrs": addrs,
        "files": read_hostname_files(paths["hostname_dir"]),
        "hostmodel": {4: "strong" if strict == "1" else "weak"},
    }


# --------------------------------------------------------------------------------------------
# Plan (pure)
# --------------------------------------------------------------------------------------------


def describe(entry, plen=None):
    text = f"{entry['address']}/{plen or entry['plen']} dev {entry['ifname']} ({entry['name']}"
    if not entry["up"]:
        text += f", {entry['state']}"
    if entry["boot"] is False:
        text += ", not persistent"
    return text + ")"


def create_command(address, addrobj, persist):
    return ["ipadm", "create-addr", *([] if persist else ["-t"]), "-T", "static",
            "-a", f"{address}/{FULL[address.version]}", addrobj]


def up_command(logical, address):
    return ["ifconfig", logical, str(address), "netmask", "255.255.255.255", "up"]


def hostname_text(address):
    return f"{address} netmask 255.255.255.255 up\n"


def hostmodel_fix(observed, family):
    if observed["tool"] == "ipadm":
        return f"ipadm set-prop -p hostmodel=weak ipv{family}"
    return "ndd -set /dev/ip ip_strict_dst_multihoming 0"


def _held(observed, address):
    return [e for e in observed["addrs"] if e["address"] == address]


def _check(spec, observed):
    errors = []
    for vip in spec["vips"]:
        if vip["device"] != LOOPBACK:
            errors.append(f"{vip['key']}: device '{vip['device']}': a VIP goes on {LOOPBACK} here")
        if observed["tool"] == "ifconfig" and vip["address"].version != 4:
            errors.append(
                f"{vip['key']}: {vip['address']}: IPv6 VIPs need ipadm (Solaris 11, illumos); "
                "this host has only ifconfig"
            )
        for entry in _held(observed, vip["address"]):
            if not entry["loopback"]:
                errors.append(
                    f"{vip['key']}: {vip['address']} is configured on {entry['name']}, which "
                    f"answers ARP for it: a real server holds the VIP on {LOOPBACK} only; remove "
                    f"it from {entry['ifname']} first (nothing was changed)"
                )
            elif entry["name"].endswith("/?"):
                errors.append(
                    f"{vip['key']}: {vip['address']} is on {LOOPBACK} but was configured outside "
                    "ipadm (lo0/?), so ipadm can neither keep nor remove it: unplumb that "
                    "logical interface (ifconfig lo0:N unplumb) and run again (nothing was "
                    "changed)"
                )
    if errors:
        raise SaltInvocationError("\n".join(errors))


def _free(used, prefix, start):
    n = start
    while f"{prefix}{n}" in used:
        n += 1
    used.add(f"{prefix}{n}")
    return f"{prefix}{n}"


def _removal_steps(observed, managed, desired, ours, command):
    """Remove the managed VIPs no longer desired: the /32 (/128) on lo0 that ``ours(entry)``
    says this tool set can remove, each with ``command(entry)``."""
    steps = []
    for addr in sorted(managed):
        if addr in desired:
            continue
        address = ipaddress.ip_address(addr)
        for entry in _held(observed, address):
            if entry["loopback"] and entry["plen"] == FULL[address.version] and ours(entry):
                steps.append({"group": "address",
                              "item": f"{address}/{entry['plen']} dev {LOOPBACK}",
                              "old": describe(entry), "new": None, "run": [command(entry)]})
    return steps


def _plan_ipadm(spec, observed, managed, exclusive):
    steps = []
    used = {e["name"] for e in observed["addrs"]}
    persist = spec["persist"]
    desired = {str(v["address"]) for v in spec["vips"]}
    for vip in spec["vips"]:
        address = vip["address"]
        full = FULL[address.version]
        item = f"{address}/{full} dev {LOOPBACK}"
        held = [e for e in _held(observed, address) if e["loopback"]]
        good = [e for e in held if e["plen"] == full and e["up"] and e["boot"] == persist]
        if good:
            if str(address) not in managed:
                steps.append({"group": "address", "item": item, "old": "present, unmanaged",
                              "new": "present, managed"})
            continue
        name = held[0]["name"] if held else _free(used, f"{LOOPBACK}/lvs", 0)
        for entry in held:  # wrong prefix, down, or persistence not as asked: recreate it
            old_item = f"{address}/{entry['plen']} dev {LOOPBACK}"
            steps.append({"group": "address", "item": old_item, "old": describe(entry),
                          "new": None, "run": [["ipadm", "delete-addr", entry["name"]]]})
        new = f"{address}/{full} dev {LOOPBACK} ({name}{'' if persist else ', not persistent'})"
        steps.append({"group": "address", "item": item, "old": None, "new": new,
                      "run": [create_command(address, name, persist)]})
    if exclusive:
        steps += _removal_steps(observed, managed, desired,
                                ours=lambda e: not e["name"].endswith("/?"),
                                command=lambda e: ["ipadm", "delete-addr", e["name"]])
    return steps


def _plan_ifconfig(spec, observed, managed, keep, paths, exclusive):
    steps = []
    files = {}  # address -> (path, text) of its hostname file
    for path, text in observed["files"].items():
        parsed = parse_hostname_file(text)
        if parsed:
            files.setdefault(parsed[0], (path, text))
    used = {e["name"] for e in observed["addrs"]}
    used |= {os.path.basename(p).removeprefix("hostname.") for p in observed["files"]}
    # address -> its logical interface after the run
    units = {e["address"]: e["name"] for e in observed["addrs"]
             if e["loopback"] and ":" in e["name"]}
    desired = {str(v["address"]) for v in spec["vips"]}
    for vip in spec["vips"]:
        address = vip["address"]
        item = f"{address}/32 dev {LOOPBACK}"
        held = [e for e in _held(observed, address) if e["loopback"] and ":" in e["name"]]
        if held:
            entry = held[0]
            if entry["plen"] != 32 or not entry["up"]:  # fixed in place
                steps.append({"group": "address", "item": item, "old": describe(entry),
                              "new": describe({**entry, "up": True, "boot": None}, 32),
                              "run": [up_command(entry["name"], address)]})
            elif str(address) not in managed:
                steps.append({"group": "address", "item": item, "old": "present, unmanaged",
                              "new": "present, managed"})
            continue
        path = files.get(address, (None,))[0]
        unit = os.path.basename(path).removeprefix("hostname.") if path else None
        if unit is None or unit in {e["name"] for e in observed["addrs"]}:
            unit = _free(used, f"{LOOPBACK}:", 1)
        units[address] = unit
        steps.append({"group": "address", "item": item, "old": None,
                      "new": f"{item} ({unit})",
                      "run": [["ifconfig", unit, "plumb"], up_command(unit, address)]})
    if exclusive:
        steps += _removal_steps(observed, managed, desired,
                                ours=lambda e: ":" in e["name"],
                                command=lambda e: ["ifconfig", e["name"], "unplumb"])
    # boot files: after the live changes, so a VIP is gone live before its file goes
    ours = {ipaddress.ip_address(a) for a in {**managed, **keep}}
    for address in sorted(ours, key=lambda a: (a.version, a)):
        current = files.get(address)
        if spec["persist"] and str(address) in keep:
            path = current[0] if current else os.path.join(
                paths["hostname_dir"], f"hostname.{units.get(address) or _free(used, 'lo0:', 1)}")
            want = hostname_text(address)
        elif current:
            path, want = current[0], None
        else:
            continue
        old = current[1] if current else None
        if old != want:
            steps.append({"group": "file", "item": path, "old": old, "new": want,
                          "write": (path, want)})
    return steps


def plan(spec, observed, record, paths, exclusive=True):
    """Decide, without touching anything, the steps that converge the host to ``spec``.

    Order: live addresses first (fixed, added, then managed VIPs no longer wanted removed),
    then the boot configuration (ipadm needs no separate step: it persists what it creates).
    """
    _check(spec, observed)
    managed = dict(record.get("vips", {}))
    keep = {str(v["address"]): {"device": v["device"]} for v in spec["vips"]}
    if not exclusive:
        for addr, info in managed.items():
            keep.setdefault(addr, info)
    if observed["tool"] == "ipadm":
        steps = _plan_ipadm(spec, observed, managed, exclusive)
    else:
        steps = _plan_ifconfig(spec, observed, managed, keep, paths, exclusive)
    warnings = []
    for family in sorted({v["address"].version for v in spec["vips"]}):
        if observed["hostmodel"].get(family) == "strong":
            warnings.append(
                f"hostmodel is strong for IPv{family}: packets for the VIP that arrive on a NIC "
                f"are dropped because the VIP is on {LOOPBACK}; {hostmodel_fix(observed, family)}"
            )
    return {"steps": steps, "warnings": warnings, "vips": keep}


# --------------------------------------------------------------------------------------------
# Audit (read-only)
# --------------------------------------------------------------------------------------------


def audit_observed(vips, observed, interfaces=None):
    """The audit as a pure function of an observation: findings as tuples
    ``(severity, vip, interface, message, fix)``."""
    del interfaces  # ARP on Solaris is per interface: there is no interface to choose
    findings = []
    report_vips = {}
    report_ifaces = {}
    for entry in observed["addrs"]:
        report_ifaces.setdefault(entry["ifname"], {"loopback": entry["loopback"],
                                                   "holds_vips": []})
    files = {}
    for path, text in observed["files"].items():
        parsed = parse_hostname_file(text)
        if parsed:
            files.setdefault(parsed[0], []).append((path, parsed))
    fix_add = ("ipadm create-addr -T static -a {vip}/{full} lo0/lvs0" if observed["tool"] ==
               "ipadm" else "ifconfig lo0:1 plumb; ifconfig lo0:1 {vip} netmask 255.255.255.255 up")
    for vip in vips:
        full = FULL[vip.version]
        held = _held(observed, vip)
        report_vips[str(vip)] = {
            "held_on": [{"interface": e["name"], "prefixlen": e["plen"], "up": e["up"]}
                        for e in held],
            "boot_files": [p for p, _ in files.get(vip, [])],
        }
        if not held:
            findings.append((
                "warning", vip, None,
                f"{vip} is not configured on this host: a DR real server drops traffic for it",
                fix_add.format(vip=vip, full=full) + " (or lvs_realserver.apply)",
            ))
        for entry in held:
            report_ifaces[entry["ifname"]]["holds_vips"].append(str(vip))
            name = entry["name"]
            if not entry["loopback"]:
                findings.append((
                    "error", vip, name,
                    f"{vip} is configured on {name}: Solaris answers ARP on "
                    f"{entry['ifname']} for it and races the director",
                    f"remove it from {entry['ifname']} and put it on {LOOPBACK} as /{full}",
                ))
                continue
            if entry["plen"] != full:
                findings.append((
                    "error", vip, name,
                    f"{vip}/{entry['plen']} on {name} has the wrong netmask: it routes the whole "
                    f"/{entry['plen']} to the loopback",
                    f"recreate it as {vip}/{full}",
                ))
            if not entry["up"]:
                findings.append((
                    "error", vip, name,
                    f"{vip} on {name} is {entry['state']}: the host drops traffic for it",
                    f"ipadm up-addr {name}" if observed["tool"] == "ipadm" else
                    f"ifconfig {name} up",
                ))
            if name.endswith("/?"):
                findings.append((
                    "warning", vip, name,
                    f"{vip} was configured outside ipadm ({name}): it is gone after a reboot",
                    f"unplumb it and create it with ipadm: {fix_add.format(vip=vip, full=full)}",
                ))
            elif entry["boot"] is False:
                findings.append((
                    "warning", vip, name,
                    f"{vip} ({name}) is temporary: it is gone after a reboot",
                    f"ipadm delete-addr {name}; ipadm create-addr -T static -a {vip}/{full} "
                    f"{name}",
                ))
        if observed["tool"] != "ifconfig":
            continue
        if any(e["loopback"] for e in held) and not files.get(vip):
            findings.append((
                "warning", vip, None,
                f"{vip} has no /etc/hostname.lo0:N file: it is gone after a reboot",
                f"echo '{hostname_text(vip).strip()}' > /etc/hostname.lo0:N",
            ))
        for path, (_, plen, up) in files.get(vip, []):
            if plen != full:
                findings.append((
                    "error", vip, LOOPBACK,
                    f"{path} gives {vip} {'/' + str(plen) if plen else 'no netmask'}: after a "
                    "reboot it comes back with the wrong netmask",
                    f"write '{hostname_text(vip).strip()}' to {path}",
                ))
            if not up:
                findings.append((
                    "warning", vip, LOOPBACK,
                    f"{path} does not bring {vip} up: after a reboot it stays down",
                    f"write '{hostname_text(vip).strip()}' to {path}",
                ))
    for family in sorted({v.version for v in vips}):
        if observed["hostmodel"].get(family) == "strong":
            findings.append((
                "error", None, None,
                f"hostmodel is strong for IPv{family}: packets for a VIP on {LOOPBACK} that "
                "arrive on a NIC are dropped",
                hostmodel_fix(observed, family),
            ))
    return {"findings": findings, "vips": report_vips, "interfaces": report_ifaces}


def local_vips(observed):
    """Addresses on lo0 apart from the loopback ones."""
    out = []
    for entry in observed["addrs"]:
        if entry["loopback"] and not entry["address"].is_loopback and entry["address"] not in out:
            out.append(entry["address"])
    return out


BACKEND = {
    "os": "Solaris",
    "paths": DEFAULT_PATHS,
    "devices": {"lo": LOOPBACK},
    "families": (4, 6),
    "observe": observe,
    "plan": plan,
    "audit": audit_observed,
    "local_vips": local_vips,
    "local_source": LOOPBACK,
}


# --------------------------------------------------------------------------------------------
# Public functions: the same signatures and results as lvs_realserver on Linux
# --------------------------------------------------------------------------------------------


def _common(name):
    return __salt__[f"lvs_realserver_cmd.{name}"]  # pylint: disable=undefined-variable


def apply(vips=None, scope=None, interfaces=None, persist=None, device="lo", label=None,
          exclusive=False, test=False, **paths):
    """
    Hold VIPs as /32 (/128) addresses on ``lo0``: ipadm address objects ``lo0/lvs<N>``, or
    ``lo0:<N>`` logical interfaces with ``/etc/hostname.lo0:<N>`` where there is no ipadm.

    vips
        Addresses (no prefix) or mappings ``{address, device}``. Default: this minion's VIPs
        from the ``lvs`` pillar. The pillar's ``lo`` is ``lo0`` here; TUN VIPs are refused.
    scope, interfaces
        Accepted for the Linux signature; Solaris answers ARP per interface and needs neither.
    persist
        Keep the VIPs across reboots (ipadm: persistent address objects; ifconfig: the
        hostname files). Default: pillar, else true.
    exclusive
        Remove managed VIPs not named here (the state does this). Default: false.
    test
        Return the changes a run would make and touch nothing.
    state_file, hostname_dir
        Paths; default from minion config ``lvs_realserver``, else the system paths.

    CLI Example:

    .. code-block:: bash

        salt 'rs-sol*' lvs_realserver.apply
        salt 'rs-sol*' lvs_realserver.apply vips='[198.51.100.100]' test=True
    """
    return _common("apply_with")(BACKEND, vips=vips, scope=scope, interfaces=interfaces,
                                 persist=persist, device=device, label=label,
                                 exclusive=exclusive, test=test, **paths)


def remove(vips=None, persist=None, test=False, **paths):
    """
    Remove managed VIPs (all by default): the address first (``ipadm delete-addr`` or
    ``ifconfig lo0:N unplumb``), then its hostname file. Addresses this module does not
    manage are never touched.

    CLI Example:

    .. code-block:: bash

        salt 'rs-sol*' lvs_realserver.remove
        salt 'rs-sol*' lvs_realserver.remove vips='[198.51.100.100]' test=True
    """
    return _common("remove_with")(BACKEND, vips=vips, persist=persist, test=test, **paths)


def managed(**paths):
    """
    The VIPs this module manages on this host (its state record).

    CLI Example:

    .. code-block:: bash

        salt 'rs-sol*' lvs_realserver.managed
    """
    return _common("managed_with")(BACKEND, **paths)


def audit(vips=None, interfaces=None, **paths):
    """
    Read-only check of this host for its VIPs: where each VIP is held, with what netmask and
    state, whether it comes back at boot, and the hostmodel. Returns ``{ok, findings:
    [{severity, vip, interface, message, fix}], vips, interfaces, source}``. VIPs come from
    ``vips``, else the pillar, else every non-loopback address on ``lo0``.

    CLI Example:

    .. code-block:: bash

        salt-call --local lvs_realserver.audit
        salt 'rs-sol*' lvs_realserver.audit vips='[198.51.100.100]'
    """
    return _common("audit_with")(BACKEND, vips=vips, interfaces=interfaces, **paths)
