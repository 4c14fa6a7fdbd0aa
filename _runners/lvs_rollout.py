"""
The checks and waits of the LVS roll-out orchestrations (``salt/orch/lvs/``): what Salt's
``salt.state``/``salt.function`` cannot decide alone. Each function raises when its condition
does not hold, so the orchestration step fails and, with ``failhard``, the roll-out stops there.

- :func:`check_realservers`: every new real server audits clean (no NIC answers ARP for a VIP or
  uses one as ARP sender) and holds every VIP it manages. Run before any director adds it.
- :func:`drain`: on every director, weight 0 for the real servers' entries that the director's
  pillar no longer lists, then wait for their active connections to end. Refuses while the pillar
  still lists them (the director would add them back) and when connections remain.
- :func:`check_directors`: the directors' IPVS tables are what their pillar says, and the real
  servers are in them (after an add) or gone from them (after a removal).
- :func:`directors`: the directors of the ``lvs`` pillar, for the orchestrations' default target.

A check that does not hold returns ``{"Error": <why>, ...}`` and sets the runner's return code:
``salt.runner`` then fails the orchestration step with that text, and ``salt-run`` exits non-zero.

Minions are reached with ``LocalClient`` (list targets only). How to run the orchestrations:
docs/remediation.md, "Ordered roll-out".
"""

import functools
import ipaddress
import logging

import salt.client
import salt.pillar
import salt.utils.minions
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "lvs_rollout"

CMD_TIMEOUT = 60  # seconds a read-only call to a minion may take


def __virtual__():
    return __virtualname__


def _failing(func):
    """A check that does not hold is a failed runner job with the reason as ``Error``."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (CommandExecutionError, SaltInvocationError) as err:
            log.warning("lvs_rollout.%s: %s", func.__name__, err)
            try:
                __context__["retcode"] = 1  # pylint: disable=undefined-variable
            except NameError:
                pass
            return {"Error": str(err), **getattr(err, "details", {})}

    return wrapper


def _as_list(value, key):
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise SaltInvocationError(f"{key}: expected a list of minion ids")
    return list(value)


# --------------------------------------------------------------------------------------------
# Talking to minions and the master's data (the seams the in-process kernel-lane test replaces)
# --------------------------------------------------------------------------------------------


def _cmd(minions, fun, arg=(), kwarg=None, timeout=CMD_TIMEOUT):
    """``{minion: {"ret": ..., "retcode": int}}`` from a list-target call; missing = no answer."""
    with salt.client.LocalClient(mopts=__opts__) as client:  # pylint: disable=undefined-variable
        out = client.cmd(list(minions), fun, arg=list(arg), tgt_type="list", kwarg=kwarg or {},
                         timeout=timeout, full_return=True)
    return {m: {"ret": r.get("ret"), "retcode": r.get("retcode", 0)}
            for m, r in (out or {}).items() if isinstance(r, dict)}


def _pillar_of(minion):
    opts = __opts__  # pylint: disable=undefined-variable
    id_, grains, _ = salt.utils.minions.get_minion_data(minion, opts)
    return salt.pillar.Pillar(opts, grains or {"fqdn": minion}, id_ or minion,
                              "base").compile_pillar()


def _cached_addresses(minion):
    _, grains, _ = salt.utils.minions.get_minion_data(minion, __opts__)  # pylint: disable=undefined-variable
    grains = grains or {}
    return set(grains.get("ipv4", [])) | set(grains.get("ipv6", []))


def _answers(minions, fun, arg=(), kwarg=None, timeout=CMD_TIMEOUT):
    """Call ``fun`` on every minion; raise naming the ones that did not answer or failed."""
    got = _cmd(minions, fun, arg, kwarg, timeout)
    bad = []
    for minion in minions:
        entry = got.get(minion)
        if entry is None:
            bad.append(f"{minion}: no answer to {fun}")
        elif entry["retcode"] or (isinstance(entry["ret"], str) and entry["ret"].startswith(
                ("ERROR", "Passed invalid arguments", "'lvs_"))):
            bad.append(f"{minion}: {fun} failed: {str(entry['ret'])[:500]}")
    if bad:
        raise CommandExecutionError("; ".join(bad))
    return {m: got[m]["ret"] for m in minions}


def _addresses_of(minions):
    """The addresses of the minions, asked live (``network.ip_addrs``/``ip_addrs6``), else the
    master's grains cache for those that do not answer."""
    live = _cmd(minions, "network.ip_addrs")
    live6 = _cmd(minions, "network.ip_addrs6")
    out = set()
    for minion in minions:
        found = set()
        for got in (live.get(minion), live6.get(minion)):
            if got and not got["retcode"] and isinstance(got["ret"], list):
                found.update(got["ret"])
        out |= found or _cached_addresses(minion)
    return out


def _address_of_dest(dest):
    """'198.51.100.11:80' or '[2001:db8::11]:80' -> the address."""
    host = dest.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


# --------------------------------------------------------------------------------------------
# Runner functions
# --------------------------------------------------------------------------------------------


def _directors_of(minion):
    lvs = (_pillar_of(minion) or {}).get("lvs") or {}
    found = sorted((lvs.get("directors") or {}).keys()) if isinstance(lvs, dict) else []
    if not found:
        raise CommandExecutionError(f"no lvs:directors in the pillar of {minion}")
    return found


@_failing
def directors(minion):
    """
    The directors (``lvs:directors`` keys) in ``minion``'s pillar: the orchestrations' default.

    CLI Example:

    .. code-block:: bash

        salt-run lvs_rollout.directors rs1
    """
    return _directors_of(minion)


def realserver_problems(audit, record):
    """What keeps a real server from taking traffic, from its audit and its record (pure)."""
    problems = []
    if not isinstance(audit, dict) or not isinstance(record, dict):
        return ["no audit or record came back"]
    managed = record.get("vips") or {}
    if not managed:
        problems.append("manages no VIP (is it a real server of a service in its pillar?)")
    for item in audit.get("findings", []):
        if item.get("severity") == "error":
            problems.append(item.get("message", str(item)))
    method = (record.get("options") or {}).get("arp_method", "sysctl")
    if method != "redirect":  # redirect holds no VIP on the host
        for addr, info in managed.items():
            full = 32 if ipaddress.ip_address(addr).version == 4 else 128
            held = (audit.get("vips") or {}).get(addr, {}).get("held_on", [])
            if not any(h.get("interface") == info.get("device", "lo")
                       and h.get("prefixlen") == full for h in held):
                problems.append(f"{addr} is not on {info.get('device', 'lo')} as /{full}")
    return problems


@_failing
def check_realservers(minions):
    """
    Every real server audits clean and holds every VIP it manages, or raise (stop the roll-out).

    CLI Example:

    .. code-block:: bash

        salt-run lvs_rollout.check_realservers minions='[rs3, rs4]'
    """
    minions = _as_list(minions, "minions")
    if not minions:
        raise SaltInvocationError("minions: name at least one real server")
    audits = _answers(minions, "lvs_realserver.audit")
    records = _answers(minions, "lvs_realserver.managed")
    report, failed = {}, []
    for minion in minions:
        problems = realserver_problems(audits[minion], records[minion])
        report[minion] = {"ok": not problems, "problems": problems,
                          "vips": sorted((records[minion] or {}).get("vips") or {})}
        if problems:
            failed.append(f"{minion}: {'; '.join(problems)}")
    if failed:
        raise CommandExecutionError("not ready for traffic, no director was changed: "
                                    + " | ".join(failed))
    return report


def drain_plan(statuses, wanted):
    """From each director's ``lvs_director.status``: which of the ``wanted`` addresses leave
    which services (live, and no longer in that director's pillar), and which the pillar still
    lists. Pure: ``({director: {address: [service]}}, [(director, service, dest)])``."""
    leaving, kept = {}, []
    for director, status in statuses.items():
        live = status.get("live") or {}
        pillar = status.get("pillar") or {}
        for service, entry in sorted(live.items()):
            in_pillar = set(((pillar.get(service) or {}).get("realservers") or {}))
            for dest in sorted(entry.get("realservers") or {}):
                address = _address_of_dest(dest)
                if address not in wanted:
                    continue
                if dest in in_pillar:
                    kept.append((director, service, dest))
                else:
                    leaving.setdefault(director, {}).setdefault(address, []).append(service)
    return leaving, kept


@_failing
def drain(realservers, directors=None, timeout=60, addresses=None, force=False):
    """
    Drain real servers the pillar no longer lists: on every director, weight 0 for each of
    their IPVS entries that the director's pillar dropped (all at once), then wait up to
    ``timeout`` seconds for their active connections to end. Established connections are never
    cut here. Raises (stopping the roll-out, the entries left at weight 0) when the pillar still
    lists one of them or when connections remain, unless ``force``.

    realservers
        Minion ids. Their addresses come from the minions (``network.ip_addrs``), else from the
        master's grains cache; ``addresses`` adds to them (a dead host).
    directors
        Default: every director in the first real server's pillar.

    CLI Example:

    .. code-block:: bash

        salt-run lvs_rollout.drain realservers='[rs3]' timeout=300
    """
    realservers = _as_list(realservers, "realservers")
    if not realservers:
        raise SaltInvocationError("realservers: name at least one real server")
    directors = _as_list(directors, "directors") or _directors_of(realservers[0])
    wanted = {str(ipaddress.ip_address(a)) for a in _as_list(addresses, "addresses")}
    wanted |= _addresses_of(realservers)
    if not wanted:
        raise CommandExecutionError(f"no address known for {', '.join(realservers)}: give "
                                    "addresses=[...]")
    statuses = _answers(directors, "lvs_director.status")
    leaving, kept = drain_plan(statuses, wanted)
    if kept:
        listed = ", ".join(f"{d}: {s} -> {dest}" for d, s, dest in kept)
        raise CommandExecutionError(
            f"still in the directors' pillar ({listed}): remove {', '.join(realservers)} from "
            "lvs:services:<name>:realservers first; nothing was drained")
    result = {"drained": True, "directors": {}, "addresses": sorted(wanted)}
    if not leaving:
        result["comment"] = (f"no director sends traffic to {', '.join(realservers)}: nothing "
                             "to drain")
        return result
    # weight 0 everywhere first, so that every entry drains during the same wait
    for director, addrs in leaving.items():
        for address, services in addrs.items():
            _answers([director], "lvs_director.drain", [address],
                     {"services": services, "timeout": 0})
    remaining = []
    for director, addrs in leaving.items():
        for address, services in addrs.items():
            ret = _answers([director], "lvs_director.drain", [address],
                           {"services": services, "timeout": timeout},
                           timeout=timeout + CMD_TIMEOUT)[director]
            result["directors"].setdefault(director, {})[address] = ret
            if not ret.get("drained"):
                active = {k: v for k, v in (ret.get("active") or {}).items() if v}
                remaining.append(f"{director}: {active}")
    if remaining:
        result["drained"] = False
        text = (f"active connections remain after {timeout} s ({'; '.join(remaining)}); the "
                "entries stay at weight 0. Rerun with a longer drain_timeout, or force=true to "
                "remove them with their connections")
        if not force:
            raise CommandExecutionError(text)
        result["comment"] = "forced: " + text
    return result


@_failing
def check_directors(directors, realservers=None, present=True):
    """
    The directors' IPVS tables are what their pillar says (``lvs_director.status`` ok) and the
    ``realservers`` are in them (``present``) or in none of them (``present=False``).

    CLI Example:

    .. code-block:: bash

        salt-run lvs_rollout.check_directors directors='[lb1]' realservers='[rs3]'
    """
    directors = _as_list(directors, "directors")
    realservers = _as_list(realservers, "realservers")
    statuses = _answers(directors, "lvs_director.status")
    wanted = _addresses_of(realservers) if realservers else set()
    problems, seen = [], set()
    for director, status in statuses.items():
        if not status.get("ok"):
            problems.append(f"{director}: differs from its pillar: "
                            f"{'; '.join(status.get('differences') or [])}")
        dests = {_address_of_dest(d) for entry in (status.get("live") or {}).values()
                 for d in (entry.get("realservers") or {})}
        seen |= dests & wanted
        if realservers and not present and dests & wanted:
            problems.append(f"{director}: still sends to {', '.join(sorted(dests & wanted))}")
    if realservers and present and not seen:
        problems.append(f"none of {', '.join(realservers)} is in the IPVS table of "
                        f"{', '.join(directors)}")
    if problems:
        raise CommandExecutionError(" | ".join(problems))
    return {d: {"ok": True} for d in directors}
