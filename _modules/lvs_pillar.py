"""
The ``lvs`` pillar: one source of truth for directors and real servers.

This module validates the whole ``lvs:`` tree and derives what one minion has to do from it.
Every error names the key it is about (``lvs:services:web:vip: '10.0.0.300' is not an IP
address``) and all errors are reported at once, before any module touches the host.

The contract (see ``pillar.example`` for the documented tree):

.. code-block:: yaml

    lvs:
      services:
        web:
          vip: 198.51.100.100
          protocol: tcp            # tcp | udp | sctp | fwmark
          ports: [80, 443]
          method: dr               # dr | tun | nat (nat: director only)
          scheduler: wlc
          persistence: 0
          realservers:
            rs1: {address: 198.51.100.11, weight: 100}
      directors:
        lb1: {interface: eth0}
      realserver:                  # defaults for real servers
        arp_method: sysctl
        scope: interfaces          # interfaces | all
        persist: true

:platform: any
"""

import ipaddress

from salt.exceptions import SaltInvocationError

__virtualname__ = "lvs_pillar"

PROTOCOLS = ("tcp", "udp", "sctp", "fwmark")
METHODS = ("dr", "tun", "nat")
ARP_METHODS = ("sysctl", "nftables", "arptables", "redirect")
# The arp methods this version can apply; any other is refused with a clear error.
ARP_METHODS_AVAILABLE = ("sysctl", "nftables", "redirect", "arptables")
SCOPES = ("interfaces", "all")
REALSERVER_DEFAULTS = {
    "arp_method": "sysctl",
    "scope": "interfaces",
    "persist": True,
    "interfaces": None,
    "label": None,
    # DR VIPs on a dedicated interface instead of lo (created as a dummy when missing)
    "device": None,
}
# Where a real server holds the VIP, per forwarding method.
VIP_DEVICE = {"dr": "lo", "tun": "tunl0"}
# IPVS scheduler flags: the generic names and the named aliases ipvsadm knows.
SCHED_FLAGS = {
    "flag-1": 1, "flag-2": 2, "flag-3": 3,
    "sh-fallback": 1, "sh-port": 2, "mh-fallback": 1, "mh-port": 2,
}
TUN_TYPES = ("ipip", "gue", "gre")
TUN_CSUM = ("nocsum", "csum", "remcsum")
DIRECTOR_DEFAULTS = {
    "interface": None,
    "services": None,  # None: every service in lvs:services
    "prune": False,  # remove IPVS services the pillar does not name
    "label": None,
    "garp_count": 3,
    "garp_interval": 0.2,
    "expire_nodest_conn": True,
    "expire_quiescent_template": True,
}


def __virtual__():
    return __virtualname__


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def parse_ip(value, key, errors):
    """Parse a plain IP address (no prefix); on failure append an error naming ``key``."""
    if isinstance(value, str) and "/" in value:
        errors.append(
            f"{key}: '{value}' has a prefix; give the bare address "
            "(real servers hold it as /32 or /128)"
        )
        return None
    try:
        return ipaddress.ip_address(value if not isinstance(value, str) else value.strip())
    except (ValueError, TypeError):
        errors.append(f"{key}: '{value}' is not an IP address")
        return None


def _check_choice(value, choices, key, errors):
    if value not in choices:
        errors.append(f"{key}: '{value}' is not one of {', '.join(choices)}")
        return False
    return True


def _check_mapping(value, key, errors, required=True):
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{key}: expected a mapping, got {type(value).__name__}")
        return {}
    return value


def _validate_service(name, svc, errors):
    key = f"lvs:services:{name}"
    svc = _check_mapping(svc, key, errors)
    if not svc:
        return None
    out = {"name": name}
    if "vip" not in svc:
        errors.append(f"{key}:vip: missing")
        vip = None
    else:
        vip = parse_ip(svc["vip"], f"{key}:vip", errors)
    out["vip"] = vip
    protocol = svc.get("protocol", "tcp")
    _check_choice(protocol, PROTOCOLS, f"{key}:protocol", errors)
    out["protocol"] = protocol
    if protocol == "fwmark":
        mark = svc.get("fwmark")
        if not _is_int(mark) or not 1 <= mark <= 0xFFFFFFFF:
            errors.append(f"{key}:fwmark: '{mark}' must be an integer from 1 to 4294967295")
        out["fwmark"] = mark
        out["ports"] = []
    else:
        ports = svc.get("ports")
        if ports is None:
            errors.append(f"{key}:ports: missing (a list of ports from 1 to 65535)")
            ports = []
        elif _is_int(ports):
            ports = [ports]
        if not isinstance(ports, list) or not ports:
            errors.append(f"{key}:ports: expected a non-empty list of ports")
            ports = []
        for idx, port in enumerate(ports):
            if not _is_int(port) or not 1 <= port <= 65535:
                errors.append(f"{key}:ports:{idx}: '{port}' is not a port from 1 to 65535")
        out["ports"] = ports
    method = svc.get("method", "dr")
    _check_choice(method, METHODS, f"{key}:method", errors)
    out["method"] = method
    out["scheduler"] = svc.get("scheduler", "wlc")
    if not isinstance(out["scheduler"], str) or not out["scheduler"]:
        errors.append(f"{key}:scheduler: '{out['scheduler']}' is not a scheduler name")
    persistence = svc.get("persistence", 0)
    if not _is_int(persistence) or persistence < 0:
        errors.append(f"{key}:persistence: '{persistence}' must be an integer of seconds >= 0")
    out["persistence"] = persistence
    out["scheduler_flags"] = _sched_flags(svc.get("scheduler_flags", []), f"{key}:scheduler_flags",
                                          errors)
    netmask = svc.get("persistence_netmask")
    if netmask is not None:
        netmask = _persistence_netmask(netmask, vip, f"{key}:persistence_netmask", errors)
    out["persistence_netmask"] = netmask
    ops = svc.get("one_packet", False)
    if not isinstance(ops, bool):
        errors.append(f"{key}:one_packet: '{ops}' must be true or false")
    elif ops and protocol != "udp":
        errors.append(f"{key}:one_packet: one-packet scheduling is for udp services only")
    out["one_packet"] = ops

    rs_key = f"{key}:realservers"
    realservers = svc.get("realservers")
    if not realservers:
        errors.append(f"{rs_key}: a service needs at least one real server")
        realservers = {}
    realservers = _check_mapping(realservers, rs_key, errors)
    out["realservers"] = {}
    for rs_id, rs in realservers.items():
        rkey = f"{rs_key}:{rs_id}"
        rs = _check_mapping(rs, rkey, errors)
        if not rs:
            continue
        if "address" not in rs:
            errors.append(f"{rkey}:address: missing")
            address = None
        else:
            address = parse_ip(rs["address"], f"{rkey}:address", errors)
        if address is not None and vip is not None and address == vip:
            errors.append(
                f"{rkey}:address: '{address}' equals the service VIP; a real server needs an "
                "address of its own (the RIP) besides the VIP"
            )
        if (
            address is not None
            and vip is not None
            and method == "dr"
            and address.version != vip.version
        ):
            errors.append(
                f"{rkey}:address: IPv{address.version} real server for an IPv{vip.version} "
                "VIP: direct routing needs both in the same family"
            )
        weight = rs.get("weight", 1)
        if not _is_int(weight) or not 0 <= weight <= 65535:
            errors.append(f"{rkey}:weight: '{weight}' must be an integer from 0 to 65535")
        entry = {"address": address, "weight": weight}
        for name in ("upper_threshold", "lower_threshold"):
            value = rs.get(name, 0)
            if not _is_int(value) or not 0 <= value <= 0xFFFFFFFF:
                errors.append(f"{rkey}:{name}: '{value}' must be an integer >= 0 (0 = none)")
            entry[name] = value
        if entry["upper_threshold"] and entry["lower_threshold"] > entry["upper_threshold"]:
            errors.append(f"{rkey}:lower_threshold: greater than upper_threshold")
        port = rs.get("port")
        if port is not None:
            if method != "nat":
                errors.append(f"{rkey}:port: only NAT can map ports; DR and TUN real servers "
                              "listen on the service port")
            elif not _is_int(port) or not 1 <= port <= 65535:
                errors.append(f"{rkey}:port: '{port}' is not a port from 1 to 65535")
        entry["port"] = port
        tun_type = rs.get("tun_type", svc.get("tun_type"))
        if tun_type is not None:
            if method != "tun":
                errors.append(f"{rkey}:tun_type: only for method tun")
            else:
                _check_choice(tun_type, TUN_TYPES, f"{rkey}:tun_type", errors)
        entry["tun_type"] = tun_type
        tun_port = rs.get("tun_port", svc.get("tun_port"))
        if tun_type == "gue" and (not _is_int(tun_port) or not 1 <= tun_port <= 65535):
            errors.append(f"{rkey}:tun_port: gue needs the UDP port of the real server's FOU "
                          "receiver (1..65535)")
        entry["tun_port"] = tun_port
        tun_csum = rs.get("tun_csum", svc.get("tun_csum"))
        if tun_csum is not None:
            _check_choice(tun_csum, TUN_CSUM, f"{rkey}:tun_csum", errors)
        entry["tun_csum"] = tun_csum
        out["realservers"][str(rs_id)] = entry
    return out


def _sched_flags(flags, key, errors):
    if isinstance(flags, str):
        flags = [f.strip() for f in flags.split(",") if f.strip()]
    if not isinstance(flags, list):
        errors.append(f"{key}: expected a list such as [sh-fallback, sh-port]")
        return []
    out = []
    for idx, flag in enumerate(flags):
        if flag not in SCHED_FLAGS:
            errors.append(f"{key}:{idx}: '{flag}' is not one of {', '.join(SCHED_FLAGS)}")
        else:
            out.append(flag)
    return out


def _persistence_netmask(value, vip, key, errors):
    """IPv4: a dotted mask or a prefix length; IPv6: a prefix length. Returned as prefix length."""
    if vip is None:
        return None
    try:
        if vip.version == 4 and isinstance(value, str) and "." in value:
            return ipaddress.ip_network(f"0.0.0.0/{value}").prefixlen
        plen = int(value)
    except (ValueError, TypeError):
        errors.append(f"{key}: '{value}' is not a netmask")
        return None
    if not 0 < plen <= vip.max_prefixlen:
        errors.append(f"{key}: '{value}' is out of range for an IPv{vip.version} VIP")
        return None
    return plen


def _validate_director(director, key, services, errors):
    out = dict(DIRECTOR_DEFAULTS)
    for name in sorted(set(director) - set(DIRECTOR_DEFAULTS)):
        errors.append(f"{key}:{name}: unknown key (known: {', '.join(DIRECTOR_DEFAULTS)})")
    out.update({k: v for k, v in director.items() if k in DIRECTOR_DEFAULTS})
    if not isinstance(out["interface"], str) or not out["interface"]:
        errors.append(f"{key}:interface: missing or not an interface name")
    if out["services"] is not None:
        if not isinstance(out["services"], list):
            errors.append(f"{key}:services: expected a list of service names")
            out["services"] = None
        else:
            for idx, name in enumerate(out["services"]):
                if name not in services:
                    errors.append(f"{key}:services:{idx}: '{name}' is not in lvs:services")
    for name in ("prune", "expire_nodest_conn", "expire_quiescent_template"):
        if not isinstance(out[name], bool):
            errors.append(f"{key}:{name}: '{out[name]}' must be true or false")
    if not _is_int(out["garp_count"]) or not 0 <= out["garp_count"] <= 100:
        errors.append(f"{key}:garp_count: '{out['garp_count']}' must be an integer from 0 to 100")
    if not isinstance(out["garp_interval"], (int, float)) or isinstance(
        out["garp_interval"], bool
    ) or not 0 <= out["garp_interval"] <= 10:
        errors.append(f"{key}:garp_interval: '{out['garp_interval']}' must be seconds from 0 to 10")
    if out["label"] is not None and not isinstance(out["label"], str):
        errors.append(f"{key}:label: '{out['label']}' must be a string")
    return out


def _validate_realserver_defaults(rs, errors):
    key = "lvs:realserver"
    rs = _check_mapping(rs, key, errors, required=False)
    out = dict(REALSERVER_DEFAULTS)
    unknown = sorted(set(rs) - set(REALSERVER_DEFAULTS))
    for name in unknown:
        errors.append(f"{key}:{name}: unknown key (known: {', '.join(REALSERVER_DEFAULTS)})")
    out.update({k: v for k, v in rs.items() if k in REALSERVER_DEFAULTS})
    if _check_choice(out["arp_method"], ARP_METHODS, f"{key}:arp_method", errors):
        if out["arp_method"] not in ARP_METHODS_AVAILABLE:
            errors.append(
                f"{key}:arp_method: '{out['arp_method']}' is not available in this version "
                f"(available: {', '.join(ARP_METHODS_AVAILABLE)})"
            )
    _check_choice(out["scope"], SCOPES, f"{key}:scope", errors)
    if not isinstance(out["persist"], bool):
        errors.append(f"{key}:persist: '{out['persist']}' must be true or false")
    ifaces = out["interfaces"]
    if ifaces is not None:
        if isinstance(ifaces, str):
            ifaces = [ifaces]
        if not isinstance(ifaces, list) or not all(isinstance(i, str) and i for i in ifaces):
            errors.append(f"{key}:interfaces: expected a list of interface names")
            ifaces = None
        out["interfaces"] = ifaces
    if out["label"] is not None and not isinstance(out["label"], str):
        errors.append(f"{key}:label: '{out['label']}' must be a string")
    dev = out["device"]
    if dev is not None and (not isinstance(dev, str) or not 0 < len(dev) <= 15
                            or any(c in dev for c in "/: ") or dev in VIP_DEVICE.values()):
        errors.append(
            f"{key}:device: '{dev}' must be an interface name of at most 15 characters other "
            "than lo and tunl0 (a dedicated interface for DR VIPs, created as a dummy if missing)"
        )
    return out


def validate(lvs=None):
    """
    Validate the whole ``lvs`` pillar and return it normalised (IP addresses as strings).

    Raises ``SaltInvocationError`` listing every problem, each naming its key.

    CLI Example:

    .. code-block:: bash

        salt '*' lvs_pillar.validate
    """
    model = _model(lvs)
    return _plain(model)


def _model(lvs=None):
    if lvs is None:
        lvs = __pillar__.get("lvs", {})  # pylint: disable=undefined-variable
    errors = []
    lvs = _check_mapping(lvs, "lvs", errors, required=False)
    unknown = sorted(set(lvs) - {"services", "directors", "director", "realserver"})
    for name in unknown:
        errors.append(f"lvs:{name}: unknown key (known: services, directors, director, realserver)")
    services = _check_mapping(lvs.get("services"), "lvs:services", errors, required=False)
    model = {"services": {}, "directors": {}, "realserver": None}
    for name, svc in services.items():
        parsed = _validate_service(name, svc, errors)
        if parsed is not None:
            model["services"][str(name)] = parsed
    shared = _check_mapping(lvs.get("director"), "lvs:director", errors, required=False)
    directors = _check_mapping(lvs.get("directors"), "lvs:directors", errors, required=False)
    for name, director in directors.items():
        dkey = f"lvs:directors:{name}"
        director = _check_mapping(director, dkey, errors)
        model["directors"][str(name)] = _validate_director(
            {**shared, **director}, dkey, model["services"], errors
        )
    model["realserver"] = _validate_realserver_defaults(lvs.get("realserver"), errors)
    _check_vip_methods(model, errors)
    if errors:
        raise SaltInvocationError("invalid lvs pillar:\n" + "\n".join(errors))
    return model


def _check_vip_methods(model, errors):
    """One VIP can serve many services, but a real server holds it on one device."""
    seen = {}
    for name, svc in model["services"].items():
        if svc["vip"] is None or svc["method"] not in VIP_DEVICE:
            continue
        other = seen.setdefault(svc["vip"], (name, svc["method"]))
        if other[1] != svc["method"]:
            errors.append(
                f"lvs:services:{name}:method: '{svc['method']}' for VIP {svc['vip']}, but "
                f"lvs:services:{other[0]} uses '{other[1]}'; a real server holds a VIP on one "
                "device, so one VIP needs one forwarding method"
            )


def _plain(model):
    """The model with addresses as strings, for output and for msgpack."""

    def conv(value):
        if isinstance(value, dict):
            return {k: conv(v) for k, v in value.items()}
        if isinstance(value, list):
            return [conv(v) for v in value]
        if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return str(value)
        return value

    return conv(model)


def _minion_id(minion_id):
    return minion_id or __opts__["id"]  # pylint: disable=undefined-variable


def realserver(minion_id=None, lvs=None):
    """
    What this minion has to do as a real server, derived from the pillar.

    Returns ``{"vips": [{"address", "device", "label", "services", "ports"}], "arp_method",
    "scope", "interfaces", "persist"}``. A minion finds its VIPs by its id under
    ``lvs:services:<name>:realservers``; NAT services put no VIP on real servers. ``ports``
    (``["tcp/80", "udp/53"]``) is what ``arp_method: redirect`` redirects; that method cannot
    serve a ``fwmark`` service (the mark is set on the director, the real server never sees
    it) nor a ``tun`` one, and says so naming the service's key.

    CLI Example:

    .. code-block:: bash

        salt '*' lvs_pillar.realserver
    """
    model = _model(lvs)
    minion_id = _minion_id(minion_id)
    defaults = model["realserver"]
    vips = {}
    errors = []
    for name, svc in model["services"].items():
        if minion_id not in svc["realservers"] or svc["method"] not in VIP_DEVICE:
            continue
        if defaults["arp_method"] == "redirect":
            if svc["protocol"] == "fwmark":
                errors.append(
                    f"lvs:services:{name}:protocol: 'fwmark' cannot be served with "
                    "lvs:realserver:arp_method 'redirect': the real server sees no mark and no "
                    "port list to redirect; use another arp_method for this minion, or give the "
                    "service its protocol and ports"
                )
            if svc["method"] == "tun":
                errors.append(
                    f"lvs:services:{name}:method: 'tun' cannot be served with "
                    "lvs:realserver:arp_method 'redirect': a TUN real server must hold the VIP "
                    "on tunl0"
                )
        entry = vips.setdefault(
            str(svc["vip"]),
            {
                "address": str(svc["vip"]),
                "device": (defaults["device"] if svc["method"] == "dr" and defaults["device"]
                           else VIP_DEVICE[svc["method"]]),
                "label": defaults["label"],
                "services": [],
                "ports": [],
            },
        )
        entry["services"].append(name)
        for port in svc["ports"]:
            item = f"{svc['protocol']}/{port}"
            if item not in entry["ports"]:
                entry["ports"].append(item)
    if errors:
        raise SaltInvocationError("invalid lvs pillar:\n" + "\n".join(errors))
    return {
        "vips": list(vips.values()),
        "arp_method": defaults["arp_method"],
        "scope": defaults["scope"],
        "interfaces": defaults["interfaces"],
        "persist": defaults["persist"],
    }


def director(minion_id=None, lvs=None):
    """
    What this minion has to do as a director, derived from the pillar: its options and the
    services it balances (all of ``lvs:services`` unless ``lvs:directors:<id>:services`` names
    some), each with its real servers.

    CLI Example:

    .. code-block:: bash

        salt '*' lvs_pillar.director
    """
    model = _model(lvs)
    minion_id = _minion_id(minion_id)
    options = model["directors"].get(minion_id)
    if options is None:
        return {"options": None, "services": {}}
    names = options["services"] or list(model["services"])
    return _plain({"options": options, "services": {n: model["services"][n] for n in names}})


def roles(minion_id=None, lvs=None):
    """
    The LVS roles of this minion: ``realserver`` and/or ``director``.

    Tolerant by design, because ``salt/lvs/init.sls`` uses it to pick states: with a broken pillar
    it still names the role whose state will then report the error by key.

    CLI Example:

    .. code-block:: bash

        salt '*' lvs_pillar.roles
    """
    minion_id = _minion_id(minion_id)
    if lvs is None:
        lvs = __pillar__.get("lvs", {})  # pylint: disable=undefined-variable
    found = []
    services = lvs.get("services") if isinstance(lvs, dict) else None
    if isinstance(services, dict):
        for svc in services.values():
            rss = svc.get("realservers") if isinstance(svc, dict) else None
            if isinstance(rss, dict) and minion_id in rss:
                found.append("realserver")
                break
    directors = lvs.get("directors") if isinstance(lvs, dict) else None
    if isinstance(directors, dict) and minion_id in directors:
        found.append("director")
    return found
