"""Salt loaders (pytest-salt-factories) for the repository's modules, called inside namespaces.

The loaders live in the pytest process; each call runs in a child forked into a throwaway
namespace (``Netns.call``), so module code meets a real kernel without touching pytest's own
namespace. Results come back pickled: state results are turned into plain dicts in the child.
"""

import json
import pathlib
import subprocess

import pytest
from saltfactories.utils.functional import Loaders

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def loaders(salt_factories, tmp_path_factory):
    factory = salt_factories.salt_minion_daemon(
        "functional",
        overrides={
            "file_client": "local",
            # the loader looks in <dir>/_modules and <dir>/_states: the repository as shipped
            "module_dirs": [str(REPO)],
            # paths are passed per call; these catch any call that forgets (never /etc)
            "lvs_realserver": {
                k: str(tmp_path_factory.mktemp("unused") / k)
                for k in ("state_file", "sysctl_file", "vip_file", "unit_file")
            },
        },
    )
    return Loaders(factory.config.copy())


@pytest.fixture
def paths(tmp_path):
    base = tmp_path / "persist"
    return {
        "state_file": str(base / "state.json"),
        "sysctl_file": str(base / "sysctl.d" / "90-lvs-realserver.conf"),
        "vip_file": str(base / "vips.batch"),
        "unit_file": str(base / "systemd" / "lvs-realserver.service"),
    }


class RealServer:
    """A real-server namespace with NICs on a LAN namespace, and ways to call Salt inside it."""

    def __init__(self, ns, lan, loaders, paths, nics):
        self.ns = ns
        self.lan = lan
        self.loaders = loaders
        self.paths = paths
        for i, (ifname, cidr) in enumerate(nics.items()):
            peer = f"p{i}"
            subprocess.run(
                ["ip", "-n", ns.name, "link", "add", ifname, "type", "veth", "peer", "name",
                 peer, "netns", lan.name],
                check=True,
            )
            ns.ip("addr", "add", cidr, "dev", ifname)
            ns.ip("link", "set", ifname, "up")
            lan.ip("link", "set", peer, "up")

    def module(self, fun, *args, **kwargs):
        loaders = self.loaders

        def run():
            return getattr(loaders.modules.lvs_realserver, fun)(*args, **kwargs)

        return self.ns.call(run)

    def state(self, fun, **kwargs):
        loaders = self.loaders

        def run():
            res = getattr(loaders.states.lvs_realserver, fun)(name="rs", **kwargs)
            return {"result": res.result, "changes": res.changes, "comment": res.comment}

        return self.ns.call(run)

    def present(self, **kwargs):
        return self.state("present", **self.paths, **kwargs)

    def absent(self, **kwargs):
        return self.state("absent", **self.paths, **kwargs)

    def addrs(self, dev="lo"):
        out = self.ns.run("ip", "-j", "addr", "show", "dev", dev).stdout
        return sorted(
            f"{a['local']}/{a['prefixlen']}"
            for link in json.loads(out)
            for a in link["addr_info"]
        )

    def arp(self, conf):
        return tuple(int(self.ns.sysctl(f"net/ipv4/conf/{conf}/{k}"))
                     for k in ("arp_ignore", "arp_announce"))

    def files(self):
        base = pathlib.Path(self.paths["state_file"]).parent
        if not base.exists():
            return {}
        return {
            str(p): (p.read_text() if not p.is_symlink() else f"-> {p.readlink()}")
            for p in sorted(base.rglob("*"))
            if p.is_file() or p.is_symlink()
        }

    def snapshot(self):
        """Everything a run may change: sysctls of every conf dir, all addresses, the files."""
        confs = self.ns.call(lambda: sorted(__import__("os").listdir("/proc/sys/net/ipv4/conf")))
        links = json.loads(self.ns.run("ip", "-j", "addr").stdout)
        return {
            "sysctl": {c: self.arp(c) for c in confs},
            "addrs": sorted(
                f"{link['ifname']} {a['local']}/{a['prefixlen']}"
                for link in links
                for a in link["addr_info"]
            ),
            "files": self.files(),
        }


@pytest.fixture
def realserver(netns, loaders, paths):
    """Factory: ``realserver(eth0="198.51.100.11/24", eth1=...)`` -> RealServer."""

    def make(**nics):
        lan = netns("lan")
        ns = netns("rs")
        return RealServer(ns, lan, loaders, paths, nics or {"eth0": "198.51.100.11/24"})

    return make
