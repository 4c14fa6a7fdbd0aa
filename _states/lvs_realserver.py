"""
Declare an LVS real server: its VIPs held locally, never answered for in ARP.

The state is declarative. ``present`` makes the VIPs this minion manages exactly the ones
named (by default: this minion's VIPs in the ``lvs`` pillar); a managed VIP the pillar no
longer names is removed, VIP first, then the ARP suppression it needed is relaxed when no
other managed VIP needs it. Addresses the module does not manage are never touched.

.. code-block:: yaml

    # from pillar (what salt/lvs/realserver.sls does)
    lvs-realserver:
      lvs_realserver.present

    # explicit
    web-vips:
      lvs_realserver.present:
        - vips: [198.51.100.100, 2001:db8::100]
        - scope: interfaces
        - persist: true

    no-longer-a-real-server:
      lvs_realserver.absent

``test=True`` reports exactly the changes a real run then makes and touches nothing. Changes
are reported as ``{old, new}`` per sysctl (``sysctl``), per address (``address``) and per
persisted file (``file``).

Use one ``lvs_realserver.present`` per minion: two with different VIP lists would undo each
other, because each declares the whole set.
"""

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

__virtualname__ = "lvs_realserver"


def __virtual__():
    if "lvs_realserver.apply" in __salt__:  # pylint: disable=undefined-variable
        return __virtualname__
    return False, "lvs_realserver: the lvs_realserver execution module is not available"


def _comment(verb_test, verb_done, changes, test):
    if not changes:
        return "The real server is already as declared."
    plural = {"address": "addresses", "sysctl": "sysctls", "file": "files"}
    parts = []
    for group, items in changes.items():
        parts.append(f"{len(items)} {group if len(items) == 1 else plural.get(group, group)}")
    return f"{verb_test if test else verb_done}: {', '.join(parts)}."


def _call(name, fun, kwargs, verb_test, verb_done):
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    test = bool(__opts__.get("test"))  # pylint: disable=undefined-variable
    try:
        res = __salt__[fun](test=test, **kwargs)  # pylint: disable=undefined-variable
    except SaltInvocationError as err:
        ret["comment"] = f"Nothing was changed: {err}"
        return ret
    except CommandExecutionError as err:
        info = getattr(err, "info", None) or {}
        ret["changes"] = info.get("changes", {})
        ret["comment"] = str(err)
        return ret
    ret["changes"] = res["changes"]
    ret["comment"] = _comment(verb_test, verb_done, res["changes"], test)
    if res.get("warnings"):
        ret["warnings"] = res["warnings"]
        ret["comment"] += " Warnings: " + "; ".join(res["warnings"])
    ret["result"] = None if test and res["changes"] else True
    return ret


def present(
    name,
    vips=None,
    scope=None,
    interfaces=None,
    persist=None,
    device="lo",
    label=None,
    **paths,
):
    """
    Ensure the real server holds exactly these VIPs, with ARP suppression in force first.

    name
        A label for the state.
    vips
        Addresses or ``{address, device, label}`` mappings. Default: this minion's VIPs from
        the ``lvs`` pillar (found by its id under ``lvs:services:<name>:realservers``).
    scope
        ``interfaces`` (the ARP-facing NICs, default) or ``all`` (opt-in: every interface,
        including container veths).
    interfaces
        ARP-facing NICs to use instead of the automatic choice.
    persist
        Restore all of it at boot, sysctls before VIPs (default: pillar, else true).
    device, label
        Where the VIPs live (default ``lo``) and an optional label such as ``lo:vip``.
    state_file, sysctl_file, vip_file, unit_file
        Override the paths of the minion config ``lvs_realserver``.
    """
    kwargs = dict(
        vips=vips,
        scope=scope,
        interfaces=interfaces,
        persist=persist,
        device=device,
        label=label,
        exclusive=True,
        **paths,
    )
    return _call(name, "lvs_realserver.apply", kwargs, "Would change", "Changed")


def absent(name, persist=None, **paths):
    """
    Ensure the real server manages no VIP: managed VIPs are removed first, then the ARP
    suppression this module raised goes back to the values it found, and the boot files go.

    name
        A label for the state.
    """
    return _call(name, "lvs_realserver.remove", dict(persist=persist, **paths),
                 "Would remove", "Removed")
