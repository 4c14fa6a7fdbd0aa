"""
The shared half of the command-driven LVS real server backends: FreeBSD, Solaris/illumos, Windows.

On Linux, ``lvs_realserver`` speaks netlink and ``/proc/sys`` itself. On the other systems the
platform's own commands do the work (``ifconfig``, ``sysrc``, ``ipadm``, ``netsh``,
PowerShell), and each system has a backend of its own, an execution module whose virtual name
is also ``lvs_realserver``; Salt loads the one whose ``__virtual__`` accepts the minion's
``kernel`` grain:

- ``lvs_realserver_freebsd``: the VIP as a ``lo0`` alias, kept in ``rc.conf``;
- ``lvs_realserver_solaris``: ``ipadm`` address objects on ``lo0``, or ``lo0:N`` logical
  interfaces and ``/etc/hostname.lo0:N`` where there is no ``ipadm``;
- ``lvs_realserver_windows``: the loopback adapter with weak-host send and receive.

Everything that is the same on the three lives here, reached the Salt way (``__salt__``),
because a synced ``_modules`` file cannot import a sibling:

- model: arguments or the ``lvs`` pillar become a validated spec; every error names its key
  and nothing has run yet;
- the run: the backend observes (parses command output) and plans (a pure function); in test
  mode the plan's changes are returned and nothing is touched; otherwise the intent is recorded,
  the steps run in order through ``cmd.run_all`` and the final record is written;
- apply: the first failed command stops the run, which reports what was and was not applied;
- the record of what is managed, and the audit's choice of VIPs and its result shape.

A backend is a mapping of its functions and facts::

    os          "FreeBSD" (for messages)
    paths       default paths (state_file and the backend's own)
    devices     {"lo": "lo0"}: the pillar's device names to this system's (None: find it)
    families    (4, 6): the address families it supports
    observe     observe(paths) -> observed
    plan        plan(spec, observed, record, paths, exclusive) -> {steps, warnings, vips, settings}
    audit       audit(addresses, observed, interfaces) -> {findings: [tuples], vips, interfaces}
    local_vips  local_vips(observed) -> [address], and local_source, their name in the report

A step is plain data: ``group``, ``item``, ``old``, ``new`` (what the state reports as
``changes[group][item]``), ``run`` (argument lists, run in order) and ``write`` (``(path,
text)``; ``text`` None deletes the file). A step with neither ``run`` nor ``write`` is
bookkeeping (an address taken under management).

The functions here take the backend's functions as an argument: they serve the backends and
are not meant for the command line.

:platform: FreeBSD, SunOS, Windows
"""

import ipaddress
import json
import logging
import os
import shlex
import tempfile

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "lvs_realserver_cmd"

KERNELS = ("FreeBSD", "SunOS", "Windows")
SCOPES = ("interfaces", "all")
# pillar devices that mean a forwarding method the command-driven backends do not handle
TUNNEL_DEVICES = ("tunl0",)
FINDING_FIELDS = ("severity", "vip", "interface", "message", "fix")


def __virtual__():
    if __grains__.get("kernel") in KERNELS:  # pylint: disable=undefined-variable
        return __virtualname__
    return False, "lvs_realserver_cmd: only for the FreeBSD, Solaris and Windows real servers"


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def parse_vips(vips, device="lo", key="vips"):
    """``["198.51.100.100", {"address": ..., "device": ...}]`` -> ``[{address, device, key}]``.

    ``key`` is where each VIP came from (``vips:0``), for error messages.
    """
    if vips is None:
        vips = []
    if isinstance(vips, str):
        vips = [v.strip() for v in vips.split(",") if v.strip()]
    if not isinstance(vips, (list, tuple)):
        raise SaltInvocationError(f"{key}: expected a list of addresses")
    errors = []
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
        out.append({"address": address, "device": entry.get("device") or device, "key": ikey})
    seen = set()
    for vip in out:
        if vip["address"] in seen:
            errors.append(f"{key}: {vip['address']} is listed twice")
        seen.add(vip["address"])
    if errors:
        raise SaltInvocationError("\n".join(errors))
    return out


def make_spec(backend, vips, scope="interfaces", interfaces=None, persist=True, device="lo",
              label=None):
    """Validate everything and map the pillar's device names to this system's."""
    errors = []
    if scope not in SCOPES:
        errors.append(f"scope: '{scope}' is not one of {', '.join(SCOPES)}")
    if isinstance(interfaces, str):
        interfaces = [i.strip() for i in interfaces.split(",") if i.strip()]
    if interfaces is not None and not all(isinstance(i, str) and i for i in interfaces):
        errors.append("interfaces: expected a list of interface names")
    if not isinstance(persist, bool):
        errors.append(f"persist: '{persist}' must be true or false")
    try:
        parsed = parse_vips(vips, device=device)
    except SaltInvocationError as err:
        errors.append(str(err))
        parsed = []
    system = backend["os"]
    for vip in parsed:
        if vip["device"] in TUNNEL_DEVICES:
            errors.append(
                f"{vip['key']}: {vip['address']} is a TUN VIP (device {vip['device']}): "
                f"{system} real servers are handled for direct routing only in this version"
            )
        elif vip["address"].version not in backend["families"]:
            errors.append(
                f"{vip['key']}: {vip['address']}: IPv{vip['address'].version} VIPs are not "
                f"handled on {system} in this version"
            )
        vip["device"] = backend["devices"].get(vip["device"], vip["device"])
    if errors:
        raise SaltInvocationError("\n".join(errors))
    warnings = []
    if label:
        warnings.append(f"label '{label}' is a Linux address label; {system} ignores it")
    return {
        "vips": parsed,
        "scope": scope,
        "interfaces": list(interfaces) if interfaces else None,
        "persist": persist,
        "warnings": warnings,
    }


def _pillar_realserver():
    return __salt__["lvs_pillar.realserver"]()  # pylint: disable=undefined-variable


def resolve(backend, vips=None, scope=None, interfaces=None, persist=None, device="lo",
            label=None):
    """Arguments win; what they leave out comes from this minion's ``lvs`` pillar."""
    need_pillar = vips is None or scope is None or persist is None
    conf = _pillar_realserver() if need_pillar else {}
    method = conf.get("arp_method", "sysctl")
    if method == "redirect":
        raise SaltInvocationError(
            f"lvs:realserver:arp_method: 'redirect' puts no VIP on the host; {backend['os']} "
            "real servers hold the VIP on the loopback interface, which never answers ARP: "
            "give this minion another arp_method"
        )
    spec = make_spec(
        backend,
        vips=conf.get("vips", []) if vips is None else vips,
        scope=scope or conf.get("scope", "interfaces"),
        interfaces=interfaces if interfaces is not None else conf.get("interfaces"),
        persist=conf.get("persist", True) if persist is None else persist,
        device=device,
        label=label,
    )
    if method != "sysctl":
        spec["warnings"].append(
            f"lvs:realserver:arp_method '{method}' is a Linux method: {backend['os']} needs none "
            "(the VIP on the loopback interface never answers ARP); ignored"
        )
    return spec


def resolve_paths(defaults, overrides):
    """Path arguments win over the minion config ``lvs_realserver:``, which wins over defaults."""
    # salt-call and minion jobs add __pub_* keyword arguments to every **kwargs function
    overrides = {k: v for k, v in overrides.items() if not k.startswith("__")}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise SaltInvocationError(f"unknown argument(s): {', '.join(unknown)}")
    try:
        config_get = __salt__["config.get"]  # pylint: disable=undefined-variable
        conf = config_get("lvs_realserver", {}) or {}
    except (NameError, KeyError):
        conf = {}
    paths = dict(defaults)
    paths.update({k: v for k, v in conf.items() if k in defaults and v})
    paths.update({k: v for k, v in overrides.items() if v})
    return paths


# --------------------------------------------------------------------------------------------
# The record of what is managed
# --------------------------------------------------------------------------------------------


def empty_record():
    return {"version": 1, "vips": {}, "settings": {}, "options": {}}


def read_text(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_text(path, text):
    """Write a file atomically (readers see the old or the new content); None deletes it."""
    if text is None:
        if os.path.exists(path):
            os.unlink(path)
        return
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


def read_record(path):
    text = read_text(path)
    record = empty_record()
    if text is None:
        return record
    try:
        record.update(json.loads(text))
    except ValueError as err:
        raise CommandExecutionError(f"{path}: not valid JSON ({err}); fix or remove it") from err
    return record


def _record_text(record):
    return json.dumps(record, indent=1, sort_keys=True)


def _write_record(path, record):
    text = _record_text(record)
    if read_text(path) != text:  # a run with nothing to do writes nothing
        write_text(path, text)


# --------------------------------------------------------------------------------------------
# Observe, changes and apply
# --------------------------------------------------------------------------------------------


def read(argv):
    """Run a read-only command (``observe``) and return its output; raise when it fails."""
    res = __salt__["cmd.run_all"](  # pylint: disable=undefined-variable
        argv, python_shell=False, ignore_retcode=True
    )
    if res.get("retcode") != 0:
        output = (res.get("stderr") or res.get("stdout") or "").strip()
        raise CommandExecutionError(
            f"'{shlex.join(argv)}' failed (exit {res.get('retcode')}: {output or 'no output'}); "
            "nothing was changed"
        )
    return res.get("stdout", "")


def changes(steps):
    """``{group: {item: {old, new}}}``; an item touched twice reports its first old, last new."""
    out = {}
    for step in steps:
        group = step.get("group")
        if not group:
            continue
        bucket = out.setdefault(group, {})
        item = step["item"]
        if item in bucket:
            bucket[item]["new"] = step["new"]
            if bucket[item]["old"] == bucket[item]["new"]:
                del bucket[item]
        else:
            bucket[item] = {"old": step["old"], "new": step["new"]}
    return {k: v for k, v in out.items() if v}


def _summary(done):
    return ", ".join(f"{group} {item}" for group, items in changes(done).items() for item in items)


def _describe(step):
    return f"{step['group']} {step['item']}" if step.get("group") else "bookkeeping"


def execute(steps):
    """Run the steps in order and return the journal of what ran.

    The first command that fails stops the run with a ``CommandExecutionError`` whose ``info``
    holds the changes applied before it, the journal and the steps not applied.
    """
    journal = []
    done = []
    for idx, step in enumerate(steps):
        for argv in step.get("run", ()):
            res = __salt__["cmd.run_all"](  # pylint: disable=undefined-variable
                argv, python_shell=False, ignore_retcode=True
            )
            if res.get("retcode") != 0:
                output = (res.get("stderr") or res.get("stdout") or "").strip()
                pending = [_describe(s) for s in steps[idx:] if s.get("group")]
                raise CommandExecutionError(
                    f"'{shlex.join(argv)}' failed (exit {res.get('retcode')}: "
                    f"{output or 'no output'}). "
                    f"Applied before the failure: {_summary(done) or 'nothing'}. "
                    f"Not applied: {', '.join(pending)}. The next run converges from here.",
                    info={"changes": changes(done), "journal": journal, "not_applied": pending},
                )
            journal.append(shlex.join(argv))
        if step.get("write"):
            path, text = step["write"]
            try:
                write_text(path, text)
            except OSError as err:
                pending = [_describe(s) for s in steps[idx:] if s.get("group")]
                raise CommandExecutionError(
                    f"writing {path} failed: {err}. Applied before the failure: "
                    f"{_summary(done) or 'nothing'}. Not applied: {', '.join(pending)}.",
                    info={"changes": changes(done), "journal": journal, "not_applied": pending},
                ) from err
            journal.append(f"file {path}")
        done.append(step)
    return journal


def converge(backend, spec, paths, exclusive, test):
    """Observe, plan, and (unless ``test``) apply: what ``apply`` and ``remove`` both do.

    The record of the VIPs about to be managed is written before the first command, so a run
    that stops half way never leaves a VIP the module does not know it manages.
    """
    observed = backend["observe"](paths)
    record = read_record(paths["state_file"])
    plan = backend["plan"](spec, observed, record, paths, exclusive)
    ret = {
        "changes": changes(plan["steps"]),
        "warnings": spec.get("warnings", []) + plan["warnings"],
        "test": bool(test),
        "journal": [],
    }
    if test:
        return ret
    after = empty_record()
    after["vips"] = plan["vips"]
    after["settings"] = plan.get("settings", {})
    after["options"] = {
        "scope": spec["scope"],
        "interfaces": spec["interfaces"] or [],
        "persist": spec["persist"],
    }
    intent = empty_record()
    intent["vips"] = {**record["vips"], **after["vips"]}
    intent["settings"] = {**record["settings"], **after["settings"]}
    intent["options"] = record["options"] or after["options"]
    if any(step.get("run") or step.get("write") for step in plan["steps"]):
        _write_record(paths["state_file"], intent)
    ret["journal"] = execute(plan["steps"])
    _write_record(paths["state_file"], after)
    return ret


# --------------------------------------------------------------------------------------------
# What the backends' public functions call
# --------------------------------------------------------------------------------------------


def apply_with(backend, vips=None, scope=None, interfaces=None, persist=None, device="lo",
               label=None, exclusive=False, test=False, **overrides):
    """``lvs_realserver.apply`` of a backend (see the backend's docstring)."""
    paths = resolve_paths(backend["paths"], overrides)
    spec = resolve(backend, vips, scope, interfaces, persist, device, label)
    return converge(backend, spec, paths, exclusive, test)


def remove_with(backend, vips=None, persist=None, test=False, **overrides):
    """``lvs_realserver.remove`` of a backend: the managed VIPs (all by default), VIPs first."""
    paths = resolve_paths(backend["paths"], overrides)
    record = read_record(paths["state_file"])
    managed = record["vips"]
    drop = set(managed) if vips is None else {str(v["address"]) for v in parse_vips(vips)}
    keep = [
        {"address": addr, "device": info["device"]}
        for addr, info in managed.items()
        if addr not in drop
    ]
    options = record.get("options") or {}
    spec = make_spec(
        backend,
        keep,
        scope=options.get("scope", "interfaces"),
        interfaces=options.get("interfaces") or None,
        persist=options.get("persist", True) if persist is None else persist,
    )
    return converge(backend, spec, paths, True, test)


def managed_with(backend, **overrides):
    """``lvs_realserver.managed`` of a backend: its record."""
    return read_record(resolve_paths(backend["paths"], overrides)["state_file"])


def audit_with(backend, vips=None, interfaces=None, **overrides):
    """``lvs_realserver.audit`` of a backend: read-only, the same result shape as on Linux.

    VIPs come from ``vips``, else this minion's pillar, else every address the loopback holds.
    """
    paths = resolve_paths(backend["paths"], overrides)
    observed = backend["observe"](paths)
    if vips is not None:
        addrs = [v["address"] for v in parse_vips(vips)]
        source = "arguments"
    else:
        try:
            pillar_vips = (
                _pillar_realserver()["vips"]
                if __pillar__.get("lvs")  # pylint: disable=undefined-variable
                else []
            )
        except (NameError, KeyError, SaltInvocationError):
            pillar_vips = []
        if pillar_vips:
            addrs = [ipaddress.ip_address(v["address"]) for v in pillar_vips]
            source = "pillar"
        else:
            addrs = backend["local_vips"](observed)
            source = backend["local_source"]
    if isinstance(interfaces, str):
        interfaces = [i.strip() for i in interfaces.split(",") if i.strip()]
    result = backend["audit"](addrs, observed, interfaces)
    findings = [dict(zip(FINDING_FIELDS, f)) for f in result["findings"]]
    for finding in findings:
        finding["vip"] = str(finding["vip"]) if finding["vip"] is not None else None
    return {
        "ok": not any(f["severity"] == "error" for f in findings),
        "findings": findings,
        "vips": result["vips"],
        "interfaces": result["interfaces"],
        "source": source,
    }
