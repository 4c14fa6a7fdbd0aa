"""
LVS real servers on Windows: the VIP on the loopback adapter, with weak-host send and receive.

A Windows real server holds the VIP on the Microsoft KM-TEST Loopback Adapter (the "Microsoft
Loopback Adapter" before Windows 2008), which takes no part in ARP, as a /32
(255.255.255.255). Since Windows 2008 the TCP/IP stack follows the strong host model: a packet
for the VIP that arrives on the NIC is dropped, because the VIP is not on the NIC, and a reply
from the VIP may not leave through the NIC. So, as the loadbalancer.org and LVSKB guides do:

- ``weakhostreceive=enabled`` on the NIC(s) where traffic for the VIP arrives;
- ``weakhostreceive=enabled`` and ``weakhostsend=enabled`` on the loopback adapter;
- the VIP added with ``skipassource=true``, so Windows never picks it as the source address of
  connections it opens itself.

The three steps of a run, each a function of its own:

- observe: one PowerShell call (``Get-NetAdapter``, ``Get-NetIPInterface``,
  ``Get-NetIPAddress``) printing JSON: locale-independent, unlike netsh's tables;
- plan (pure): weak-host settings first, then the VIP; on removal the VIP first, then the
  settings this module changed go back to the values it found, when no remaining VIP needs
  them;
- apply: ``netsh interface ipv4 ...`` commands in order through ``cmd.run_all``
  (``lvs_realserver_cmd.execute``); ``Set-NetIPAddress -SkipAsSource $true`` where an existing
  VIP lacks that flag (netsh cannot change it in place).

netsh stores every change persistently (``store=persistent``); ``persist: false`` uses
``store=active`` (until the next boot).

Which NICs get ``weakhostreceive`` (the same rule as the ARP-facing NICs on Linux): those with
an IPv4 subnet holding the VIP; when none does, every NIC with an IPv4 address; ``interfaces``
names them instead, ``scope: all`` takes every NIC with an IPv4 address.

The loopback adapter is not installed by this module: add it once (``hdwwiz``, or ``devcon
install %windir%\\inf\\netloop.inf *MSLOOP``) and rename it, e.g. to ``loopback``. The pillar's
``lo`` means "the loopback adapter" (there must be exactly one); a ``device`` names one.

Where the module keeps things (minion config, optional):

.. code-block:: yaml

    lvs_realserver:
      state_file: C:\\ProgramData\\saltext-lvs\\realserver.json

:depends: Windows Server 2012 or later (NetTCPIP PowerShell module), netsh
:platform: Windows
"""

import ipaddress
import json
import re

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

__virtualname__ = "lvs_realserver"

DEFAULT_PATHS = {
    "state_file": "C:\\ProgramData\\saltext-lvs\\realserver.json",
}
HOST_MASK = "255.255.255.255"
LOOPBACK_DESCRIPTION = re.compile(r"loopback adapter", re.IGNORECASE)
POWERSHELL = ["powershell.exe", "-NoProfile", "-NonInteractive", "-Command"]
# One call, JSON out. Enum values are cast to strings ("Enabled"): ConvertTo-Json would print
# their numbers. Single quotes only: the argument list is joined into one Windows command line.
OBSERVE_SCRIPT = (
    "$ErrorActionPreference = 'Stop'; "
    "ConvertTo-Json -Depth 4 -InputObject ([ordered]@{"
    "adapters = @(Get-NetAdapter | Select-Object Name, InterfaceDescription, ifIndex, Status); "
    "interfaces = @(Get-NetIPInterface -AddressFamily IPv4 | Select-Object InterfaceAlias, "
    "InterfaceIndex, @{n='WeakHostSend'; e={[string]$_.WeakHostSend}}, "
    "@{n='WeakHostReceive'; e={[string]$_.WeakHostReceive}}); "
    "addresses = @(Get-NetIPAddress -AddressFamily IPv4 | Select-Object InterfaceAlias, "
    "InterfaceIndex, IPAddress, PrefixLength, SkipAsSource)})"
)
OBSERVE = [*POWERSHELL, OBSERVE_SCRIPT]
WEAK_HOST = ("weakhostreceive", "weakhostsend")


def __virtual__():
    if __grains__.get("kernel") == "Windows":  # pylint: disable=undefined-variable
        return __virtualname__
    return False, "lvs_realserver_windows: Windows only (kernel grain)"


# --------------------------------------------------------------------------------------------
# Observe: parse the JSON of Get-NetAdapter, Get-NetIPInterface, Get-NetIPAddress
# --------------------------------------------------------------------------------------------


def _as_list(value):
    """ConvertTo-Json prints a one-element array as the element (older PowerShell)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _enabled(value):
    """``"Enabled"``/``"Disabled"`` (or 1/0) -> ``"enabled"``/``"disabled"`` (netsh's words)."""
    if isinstance(value, str):
        return value.strip().lower()
    return "enabled" if value == 1 else "disabled"


def parse_observe(text):
    try:
        data = json.loads(text)
    except ValueError as err:
        raise CommandExecutionError(f"PowerShell printed no JSON ({err}): {text[:200]!r}") from err
    adapters = {
        a["Name"]: {"description": a.get("InterfaceDescription") or "",
                    "index": a.get("ifIndex"), "status": a.get("Status")}
        for a in _as_list(data.get("adapters"))
    }
    interfaces = {
        i["InterfaceAlias"]: {"weakhostsend": _enabled(i.get("WeakHostSend")),
                              "weakhostreceive": _enabled(i.get("WeakHostReceive"))}
        for i in _as_list(data.get("interfaces"))
    }
    addrs = [
        {"interface": a["InterfaceAlias"], "address": ipaddress.ip_address(a["IPAddress"]),
         "plen": int(a["PrefixLength"]), "skipassource": bool(a.get("SkipAsSource"))}
        for a in _as_list(data.get("addresses"))
    ]
    return {"adapters": adapters, "interfaces": interfaces, "addrs": addrs}


def observe(paths):
    """One reading of the host (one PowerShell call)."""
    del paths
    read = __salt__["lvs_realserver_cmd.read"]  # pylint: disable=undefined-variable
    return parse_observe(read(OBSERVE))


def loopbacks(observed):
    """Names of the loopback adapters (KM-TEST or the older Microsoft Loopback Adapter)."""
    return sorted(n for n, a in observed["adapters"].items()
                  if LOOPBACK_DESCRIPTION.search(a["description"]))


def nics(observed):
    """Adapters that take part in ARP: every adapter but the loopback ones."""
    return sorted(n for n, a in observed["adapters"].items()
                  if not LOOPBACK_DESCRIPTION.search(a["description"]))


def facing(address, observed, spec):
    """The NICs where traffic for ``address`` arrives: they need weakhostreceive."""
    if spec["interfaces"]:
        return list(spec["interfaces"])
    with_v4 = {}
    for a in observed["addrs"]:
        if a["interface"] in nics(observed) and not a["address"].is_link_local:
            with_v4.setdefault(a["interface"], []).append(a)
    if spec["scope"] == "all":
        return sorted(with_v4)
    onlink = sorted(
        n for n, addrs in with_v4.items()
        if any(a["plen"] < 32 and address in ipaddress.ip_network(
            f"{a['address']}/{a['plen']}", strict=False) for a in addrs)
    )
    return onlink or sorted(with_v4)


# --------------------------------------------------------------------------------------------
# Plan (pure)
# --------------------------------------------------------------------------------------------


def set_command(alias, key, value, store):
    return ["netsh", "interface", "ipv4", "set", "interface", alias, f"{key}={value}",
            f"store={store}"]


def add_command(alias, address, store):
    return ["netsh", "interface", "ipv4", "add", "address", alias, str(address), HOST_MASK,
            f"store={store}", "skipassource=true"]


def delete_command(alias, address):
    return ["netsh", "interface", "ipv4", "delete", "address", alias, str(address)]


def skipassource_command(alias, address):
    quoted = alias.replace("'", "''")
    return [*POWERSHELL, f"Set-NetIPAddress -InterfaceAlias '{quoted}' -IPAddress "
                         f"'{address}' -SkipAsSource $true"]


def describe(entry):
    return (f"{entry['address']}/{entry['plen']} dev {entry['interface']} "
            f"skipassource={'true' if entry['skipassource'] else 'false'}")


def _loopback_of(vip, observed, errors):
    """The adapter a VIP goes on: the one loopback adapter, or the one ``device`` names."""
    found = loopbacks(observed)
    if vip["device"] is None:
        if len(found) == 1:
            return found[0]
        if not found:
            errors.append(
                f"{vip['key']}: no Microsoft KM-TEST Loopback Adapter on this host: install one "
                "(docs/os-windows.md) and run again (nothing was changed)"
            )
        else:
            errors.append(
                f"{vip['key']}: {len(found)} loopback adapters ({', '.join(found)}): name the "
                "one for the VIPs with device"
            )
        return None
    if vip["device"] not in found:
        errors.append(
            f"{vip['key']}: device '{vip['device']}' is not a loopback adapter on this host "
            f"(loopback adapters: {', '.join(found) or 'none'})"
        )
        return None
    return vip["device"]


def _needed(vips, observed, spec):
    """(interface, setting) pairs the VIPs need: the NICs' weakhostreceive first, then the
    loopback adapters' weakhostreceive and weakhostsend."""
    nic_side, lo_side = set(), set()
    for address, lo in vips:
        nic_side |= {(nic, "weakhostreceive") for nic in facing(address, observed, spec)}
        lo_side |= {(lo, key) for key in WEAK_HOST}
    return sorted(nic_side) + sorted(lo_side)


def _check(spec, observed):
    errors = []
    targets = []
    for vip in spec["vips"]:
        lo = _loopback_of(vip, observed, errors)
        targets.append(lo)
        for a in observed["addrs"]:
            if a["address"] == vip["address"] and a["interface"] in nics(observed):
                errors.append(
                    f"{vip['key']}: {vip['address']} is configured on {a['interface']}, which "
                    "answers ARP for it: a real server holds the VIP on the loopback adapter "
                    f"only; remove it from {a['interface']} first (nothing was changed)"
                )
    for name in spec["interfaces"] or []:
        if name not in nics(observed):
            errors.append(f"interfaces: '{name}' is not a network adapter on this host")
    if errors:
        raise SaltInvocationError("\n".join(errors))
    return targets


def _vip_steps(address, lo, observed, managed, store):
    steps = []
    held = [a for a in observed["addrs"] if a["address"] == address and a["interface"] == lo]
    item = f"{address}/32 dev {lo}"
    for entry in held:
        if entry["plen"] != 32:  # a wider mask routes the whole subnet into the loopback
            steps.append({"group": "address", "item": f"{address}/{entry['plen']} dev {lo}",
                          "old": describe(entry), "new": None,
                          "run": [delete_command(lo, address)]})
    right = [e for e in held if e["plen"] == 32]
    wanted = describe({"address": address, "plen": 32, "interface": lo, "skipassource": True})
    if not right:
        steps.append({"group": "address", "item": item, "old": None, "new": wanted,
                      "run": [add_command(lo, address, store)]})
    elif not right[0]["skipassource"]:
        steps.append({"group": "address", "item": item, "old": describe(right[0]),
                      "new": wanted, "run": [skipassource_command(lo, address)]})
    elif str(address) not in managed:
        steps.append({"group": "address", "item": item, "old": "present, unmanaged",
                      "new": "present, managed"})
    return steps


def plan(spec, observed, record, paths, exclusive=True):
    """Decide, without touching anything, the steps that converge the host to ``spec``.

    Order: the weak-host settings the VIPs need; the VIPs; managed VIPs no longer wanted
    removed; then the settings no remaining VIP needs set back to the values found before this
    module changed them (only if they still hold the value it set).
    """
    del paths
    targets = _check(spec, observed)
    store = "persistent" if spec["persist"] else "active"
    managed = dict(record.get("vips", {}))
    settings = {k: dict(v) for k, v in record.get("settings", {}).items()}
    desired = [(v["address"], lo) for v, lo in zip(spec["vips"], targets)]
    steps = []
    warnings = []
    for iface, key in _needed(desired, observed, spec):
        current = observed["interfaces"].get(iface, {}).get(key)
        if current == "enabled":
            continue
        name = f"{iface} {key}"
        steps.append({"group": "setting", "item": name, "old": current, "new": "enabled",
                      "run": [set_command(iface, key, "enabled", store)]})
        settings.setdefault(name, {"interface": iface, "key": key, "original": current})
        settings[name]["set"] = "enabled"
    for address, lo in desired:
        steps += _vip_steps(address, lo, observed, managed, store)
    keep = {str(address): {"device": lo} for address, lo in desired}
    if exclusive:
        for addr, info in sorted(managed.items()):
            address = ipaddress.ip_address(addr)
            held = [a for a in observed["addrs"]
                    if a["address"] == address and a["interface"] == info["device"]]
            if addr in keep or not held:
                continue
            steps.append({"group": "address", "item": f"{address}/32 dev {info['device']}",
                          "old": describe(held[0]), "new": None,
                          "run": [delete_command(info["device"], address)]})
    else:
        for addr, info in managed.items():
            keep.setdefault(addr, info)
    still = set(_needed([(ipaddress.ip_address(a), i["device"]) for a, i in keep.items()],
                        observed, spec))
    # relax in the reverse order of raising: the loopback adapter's settings, then the NICs'
    los = loopbacks(observed)
    relax_order = sorted(settings.items(), reverse=True, key=lambda kv: (
        kv[1]["interface"] in los, kv[1]["interface"], kv[1]["key"]))
    for name, info in relax_order:
        if (info["interface"], info["key"]) in still:
            continue
        current = observed["interfaces"].get(info["interface"], {}).get(info["key"])
        if current is None:  # the adapter is gone: nothing to set back
            del settings[name]
            continue
        if current != info["set"]:
            warnings.append(f"{name} is {current}, not the {info['set']} this module set: "
                            "someone changed it since; left as it is")
            del settings[name]
            continue
        steps.append({"group": "setting", "item": name, "old": current, "new": info["original"],
                      "run": [set_command(info["interface"], info["key"], info["original"],
                                          store)]})
        del settings[name]
    return {"steps": steps, "warnings": warnings, "vips": keep, "settings": settings}


# --------------------------------------------------------------------------------------------
# Audit (read-only)
# --------------------------------------------------------------------------------------------


def audit_observed(vips, observed, interfaces=None):
    """The audit as a pure function of an observation: findings as tuples
    ``(severity, vip, interface, message, fix)``."""
    findings = []
    report_vips = {}
    los = loopbacks(observed)
    report_ifaces = {
        name: {"loopback": name in los, "status": info["status"],
               **observed["interfaces"].get(name, {}), "holds_vips": []}
        for name, info in sorted(observed["adapters"].items())
    }
    if not los:
        findings.append((
            "error", None, None,
            "no Microsoft KM-TEST Loopback Adapter: a Windows real server needs one for the VIP",
            "install it (hdwwiz, or devcon install %windir%\\inf\\netloop.inf *MSLOOP) and "
            "rename it, e.g. to loopback",
        ))
    spec = {"interfaces": interfaces, "scope": "interfaces"}
    for vip in vips:
        held = [a for a in observed["addrs"] if a["address"] == vip]
        report_vips[str(vip)] = {"held_on": [
            {"interface": a["interface"], "prefixlen": a["plen"],
             "skipassource": a["skipassource"]} for a in held]}
        if not held:
            findings.append((
                "warning", vip, None,
                f"{vip} is not configured on this host: a DR real server drops traffic for it",
                f"netsh interface ipv4 add address \"{los[0] if los else 'loopback'}\" {vip} "
                f"{HOST_MASK} skipassource=true (or lvs_realserver.apply)",
            ))
        for a in held:
            name = a["interface"]
            if name in report_ifaces:
                report_ifaces[name]["holds_vips"].append(str(vip))
            if name not in los:
                if name in observed["adapters"]:
                    findings.append((
                        "error", vip, name,
                        f"{vip} is configured on {name}: Windows answers ARP on {name} for it "
                        "and races the director",
                        f"netsh interface ipv4 delete address \"{name}\" {vip}; then add it "
                        "to the loopback adapter",
                    ))
                continue
            if a["plen"] != 32:
                findings.append((
                    "error", vip, name,
                    f"{vip}/{a['plen']} on {name} has a mask wider than 255.255.255.255: it "
                    f"routes the whole /{a['plen']} into the loopback adapter",
                    f"netsh interface ipv4 delete address \"{name}\" {vip}; netsh interface "
                    f"ipv4 add address \"{name}\" {vip} {HOST_MASK} skipassource=true",
                ))
            if not a["skipassource"]:
                findings.append((
                    "warning", vip, name,
                    f"{vip} on {name} may be chosen as the source address of connections this "
                    "host opens (skipassource is false)",
                    f"Set-NetIPAddress -InterfaceAlias '{name}' -IPAddress '{vip}' "
                    "-SkipAsSource $true",
                ))
            for key in WEAK_HOST:
                if observed["interfaces"].get(name, {}).get(key) != "enabled":
                    what = ("packets for the VIP arriving on the NIC are dropped"
                            if key == "weakhostreceive"
                            else "replies from the VIP cannot leave through the NIC")
                    findings.append((
                        "error", vip, name,
                        f"{key} is not enabled on the loopback adapter {name}: {what}",
                        f"netsh interface ipv4 set interface \"{name}\" {key}=enabled",
                    ))
        if not any(a["interface"] in los for a in held):
            continue
        for nic in facing(vip, observed, spec):
            if observed["interfaces"].get(nic, {}).get("weakhostreceive") != "enabled":
                findings.append((
                    "error", vip, nic,
                    f"weakhostreceive is not enabled on {nic}: the host drops traffic for "
                    f"{vip} arriving there (strong host model)",
                    f"netsh interface ipv4 set interface \"{nic}\" weakhostreceive=enabled",
                ))
    return {"findings": findings, "vips": report_vips, "interfaces": report_ifaces}


def local_vips(observed):
    """Addresses on the loopback adapters apart from link-local (APIPA) ones."""
    los = loopbacks(observed)
    return [a["address"] for a in observed["addrs"]
            if a["interface"] in los and not a["address"].is_link_local]


BACKEND = {
    "os": "Windows",
    "paths": DEFAULT_PATHS,
    "devices": {"lo": None},
    "families": (4,),
    "observe": observe,
    "plan": plan,
    "audit": audit_observed,
    "local_vips": local_vips,
    "local_source": "loopback adapter",
}


# --------------------------------------------------------------------------------------------
# Public functions: the same signatures and results as lvs_realserver on Linux
# --------------------------------------------------------------------------------------------


def _common(name):
    return __salt__[f"lvs_realserver_cmd.{name}"]  # pylint: disable=undefined-variable


def apply(vips=None, scope=None, interfaces=None, persist=None, device="lo", label=None,
          exclusive=False, test=False, **paths):
    """
    Hold VIPs on the loopback adapter (/32, ``skipassource=true``) with weak-host receive on the
    NICs and weak-host receive and send on the loopback adapter, set first.

    vips
        IPv4 addresses (no prefix) or mappings ``{address, device}``. Default: this minion's
        VIPs from the ``lvs`` pillar. The pillar's ``lo`` is the loopback adapter; TUN VIPs
        are refused.
    scope
        ``interfaces`` (default): ``weakhostreceive`` on the NICs whose subnet holds the VIP
        (else every NIC with IPv4). ``all``: on every NIC with IPv4.
    interfaces
        The NICs (adapter names such as ``Ethernet 2``), when the automatic choice is not wanted.
    persist
        ``store=persistent`` (default: pillar, else true) or ``store=active`` for netsh.
    exclusive
        Remove managed VIPs not named here (the state does this). Default: false.
    test
        Return the changes a run would make and touch nothing.
    state_file
        Path; default from minion config ``lvs_realserver``, else ProgramData.

    CLI Example:

    .. code-block:: bash

        salt 'rs-win*' lvs_realserver.apply
        salt 'rs-win*' lvs_realserver.apply vips='[198.51.100.100]' test=True
    """
    return _common("apply_with")(BACKEND, vips=vips, scope=scope, interfaces=interfaces,
                                 persist=persist, device=device, label=label,
                                 exclusive=exclusive, test=test, **paths)


def remove(vips=None, persist=None, test=False, **paths):
    """
    Remove managed VIPs (all by default), VIP first, then set the weak-host settings this
    module enabled back to what they were, when no remaining VIP needs them. Addresses this
    module does not manage are never touched.

    CLI Example:

    .. code-block:: bash

        salt 'rs-win*' lvs_realserver.remove
        salt 'rs-win*' lvs_realserver.remove vips='[198.51.100.100]' test=True
    """
    return _common("remove_with")(BACKEND, vips=vips, persist=persist, test=test, **paths)


def managed(**paths):
    """
    The VIPs and settings this module manages on this host (its state record).

    CLI Example:

    .. code-block:: bash

        salt 'rs-win*' lvs_realserver.managed
    """
    return _common("managed_with")(BACKEND, **paths)


def audit(vips=None, interfaces=None, **paths):
    """
    Read-only check of this host for its VIPs: where each VIP is held and with what mask,
    skipassource, and the weak-host settings of the loopback adapter and the NICs. The same
    findings as on Linux, in Windows terms: a missing VIP, a VIP on a NIC (answers ARP), a
    mask wider than /32, and missing weak-host settings (the host drops traffic for the VIP).
    Returns ``{ok, findings: [{severity, vip, interface, message, fix}], vips, interfaces,
    source}``.

    CLI Example:

    .. code-block:: bash

        salt-call --local lvs_realserver.audit
        salt 'rs-win*' lvs_realserver.audit vips='[198.51.100.100]'
    """
    return _common("audit_with")(BACKEND, vips=vips, interfaces=interfaces, **paths)
