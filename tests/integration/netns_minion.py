"""Salt minions inside lab namespaces, and the link between pytest's namespace and the lab LAN.

A real server in the lab is a network namespace. To test the extension the way it runs in
production, the salt-minion daemon has to live *inside* that namespace (its ``/proc/sys``, its
``lo``, its netlink), while the salt-master stays in pytest's own namespace (so the
salt-factories event listener and log server, which run in pytest, stay reachable on the LAN).

``ip netns exec NS cmd`` enters the namespace and execs ``cmd`` in place: the daemon keeps the
PID salt-factories started, so its start checks and its termination work unchanged.
"""

from __future__ import annotations

import attr
from saltfactories.cli.call import SaltCall
from saltfactories.daemons.minion import SaltMinion

from lab import netlab

# pytest's own namespace joins the lab LAN at this address; the master listens on it.
SALT_ADDRESS = "198.51.100.1"


@attr.s(kw_only=True, slots=True)
class NetnsSaltCall(SaltCall):
    """``salt-call`` run inside ``netns`` (as the minion it belongs to would see the machine)."""

    netns = attr.ib()

    def cmdline(self, *args, **kwargs):  # pylint: disable=arguments-differ
        return ["ip", "netns", "exec", self.netns, *super().cmdline(*args, **kwargs)]


@attr.s(kw_only=True, slots=True)
class NetnsSaltMinion(SaltMinion):
    """A salt-minion daemon that runs inside the network namespace named ``netns``."""

    netns = attr.ib()

    def cmdline(self, *args):
        return ["ip", "netns", "exec", self.netns, *super().cmdline(*args)]

    def salt_call_cli(self, factory_class=NetnsSaltCall, **factory_class_kwargs):
        factory_class_kwargs.setdefault("netns", self.netns)
        return super().salt_call_cli(factory_class=factory_class, **factory_class_kwargs)


def master_overrides(repo_root, **extra) -> dict:
    """Config for the master in pytest's namespace, listening on the LAN address the lab's
    minions reach. Its file root is the formula (salt://lvs/...) and, through symlinks in salt/,
    the custom types (salt://_modules/...): not the repository root, where Salt would walk .venv
    and .git."""
    overrides = {
        "interface": SALT_ADDRESS,
        "file_roots": {"base": [str(repo_root / "salt")]},
        "file_ignore_regex": [r"(^|/)__pycache__(/|$)"],
        "log_level_logfile": "info",
        "pytest-master": {"log": {"level": "info"}},
    }
    overrides.update(extra)
    return overrides


def minion_overrides(master_address: str = SALT_ADDRESS, **extra) -> dict:
    """Config for a minion in a lab namespace: master, event returner and log server all sit in
    pytest's namespace, which the minion reaches over the LAN (127.0.0.1 is its own lo)."""
    overrides = {
        "master": master_address,
        "pytest-minion": {
            "returner_address": {"host": master_address},
            # info, not salt-factories' debug: see the master's fixture in test_master_minion
            "log": {"host": master_address, "level": "info"},
        },
    }
    overrides.update(extra)
    return overrides


class _AttachedNamespace:
    """Netns-like handle on pytest's own namespace for ``lab.netlab.Lab``.

    ``Lab.close()`` deletes every host's namespace; this one must survive (pytest runs in it).
    Its LAN NIC needs no cleanup either: it is one end of a veth pair whose other end lives in
    the lab's LAN namespace, so deleting that namespace removes both ends.
    """

    def __init__(self, name: str):
        self.name = name

    def delete(self) -> None:
        pass


def attach_session_netns(lab: netlab.Lab, session_netns, name: str = "salt",
                         address: str = SALT_ADDRESS) -> netlab.Host:
    """Give pytest's namespace an ``eth0`` on the lab LAN (at ``address``), as host ``name``."""
    if not session_netns.name:
        raise RuntimeError("pytest's namespace has no name; tests/conftest.py should have named it")
    host = netlab.Host(name=name, role="host", ns=_AttachedNamespace(session_netns.name))
    lab.hosts[name] = host
    lab.add_nic(name, "eth0", address)
    return host
