"""
Declare an LVS director: its IPVS table, its VIPs and their announcement, from the pillar.

.. code-block:: yaml

    lvs-director:
      lvs_director.present     # what salt/lvs/director.sls does

    retired-director:
      lvs_director.absent

``present`` adds services and real servers, edits them in place (a live service is never
deleted and re-added, which would drop its connections), puts the VIPs on the director's
interface after their services and announces them with gratuitous ARP. What this director
manages and the pillar no longer names is removed, VIP first; entries it does not manage are
removed only with ``prune: true`` under ``lvs:directors:<id>``. ``test=True`` predicts exactly;
changes are ``{old, new}`` per ``service``, ``realserver``, ``address`` and ``sysctl``.
"""

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

__virtualname__ = "lvs_director"


def __virtual__():
    if "lvs_director.apply" in __salt__:  # pylint: disable=undefined-variable
        return __virtualname__
    return False, "lvs_director: the lvs_director execution module is not available"


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
    changes = res["changes"]
    ret["changes"] = changes
    if changes:
        plural = {"address": "addresses"}
        counts = ", ".join(
            f"{len(v)} {k if len(v) == 1 else plural.get(k, k + 's')}" for k, v in changes.items()
        )
        ret["comment"] = f"{verb_test if test else verb_done}: {counts}."
    else:
        ret["comment"] = "The director is already as declared."
        if res.get("checked") == "quick":
            ret["comment"] += (" (quick check: pillar, record, VIPs, sysctls and /proc/net/ip_vs "
                               "as the last run left them; verify: full reads every attribute)")
    if res.get("warnings"):
        ret["warnings"] = res["warnings"]
    ret["result"] = None if test and changes else True
    return ret


def present(name, minion_id=None, lvs=None, **paths):
    """
    Ensure this director's IPVS table and VIPs are what the ``lvs`` pillar says.

    name
        A label for the state.
    minion_id, lvs
        Act as this director of this ``lvs`` tree (orchestration, tests); default: the
        minion's own id and pillar.
    state_file
        Override the record path of the minion config ``lvs_director``.
    verify
        ``quick`` (default) or ``full``: see ``lvs_director.apply`` and docs/director.md. With
        ``quick`` a run with nothing to do ends after comparing the pillar with
        /proc/net/ip_vs; ``full`` reads every attribute of the table on every run.
    """
    return _call(name, "lvs_director.apply", dict(paths, minion_id=minion_id, lvs=lvs),
                 "Would change", "Changed")


def absent(name, minion_id=None, lvs=None, **paths):
    """
    Ensure this director manages nothing: VIPs first, then real servers and services.
    """
    return _call(name, "lvs_director.remove", dict(paths, minion_id=minion_id, lvs=lvs),
                 "Would remove", "Removed")
