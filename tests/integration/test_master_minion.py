"""A real salt-master and a real salt-minion inside real server rs1's namespace.

Topology (lab.netlab): client, director lb1 (holding the VIP), rs1 and rs2 on one bridge; pytest's
own namespace joins the bridge as 198.51.100.1 and runs the master. The minion ``rs1`` runs
inside rs1's namespace, so every sysctl and address it changes is rs1's alone.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from lab import netlab
from tests.conftest import lvs_realserver_opts
from tests.integration.netns_minion import (
    NetnsSaltMinion,
    attach_session_netns,
    master_overrides,
    minion_overrides,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(session_netns):
    with netlab.Lab() as lab:
        attach_session_netns(lab, session_netns)
        yield lab


@pytest.fixture(scope="module")
def salt_master(lab, salt_factories, repo_root):
    master = salt_factories.salt_master_daemon(
        "lvs-master",
        overrides=master_overrides(repo_root),
    )
    # The pillar is the lvs tree of pillar.example, for every minion.
    example = yaml.safe_load((repo_root / "pillar.example").read_text())
    pillar = master.pillar_tree.base
    with pillar.temp_file("top.sls", "base:\n  '*':\n    - lvs\n"), pillar.temp_file(
        "lvs.sls", json.dumps({"lvs": example["lvs"]})
    ):
        with master.started():
            yield master


@pytest.fixture(scope="module")
def rs1(lab, salt_master, tmp_path_factory):
    persist = tmp_path_factory.mktemp("rs1-persist")
    minion = salt_master.salt_minion_daemon(
        "rs1",
        factory_class=NetnsSaltMinion,
        netns=lab.host("rs1").netns,
        overrides=minion_overrides(**lvs_realserver_opts(persist)),
    )
    with minion.started():
        yield minion


@pytest.fixture(scope="module")
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=120)


def test_minion_runs_in_rs1_namespace(salt_cli, rs1, lab):
    ret = salt_cli.run("grains.get", "ipv4", minion_tgt="rs1")
    assert ret.returncode == 0, ret
    assert lab.host("rs1").address in ret.data
    assert "198.51.100.1" not in ret.data  # pytest's (the master's) address is not the minion's
    ret = salt_cli.run("sysctl.get", "net.ipv4.conf.eth0.arp_ignore", minion_tgt="rs1")
    assert ret.returncode == 0, ret
    assert str(ret.data) == "0"


# --------------------------------------------------------------------------------------------
# state.apply lvs through the master

VIP = netlab.VIP
VIP6 = "2001:db8::100"  # pillar.example's web6 service
LVS_STATE = "lvs_realserver_|-lvs-realserver_|-lvs-realserver_|-present"


def kernel_view(host) -> dict:
    """What rs1's kernel holds: ARP sysctls of all/default/lo/eth0, addresses on lo and eth0."""
    return {
        "arp": host.arp_sysctls(),
        "lo": sorted(host.addresses("lo")),
        "eth0": sorted(host.addresses("eth0")),
    }


def files_under(path) -> list[str]:
    return sorted(str(p) for p in path.rglob("*") if p.is_file() or p.is_symlink())


def all_changes(state_ret: dict) -> dict:
    return {sid: s["changes"] for sid, s in state_ret.items()}


@pytest.fixture(scope="module")
def rs1_persist(rs1):
    return pathlib.Path(rs1.config["lvs_realserver"]["state_file"]).parent


@pytest.fixture(scope="module")
def synced(salt_cli, rs1):
    ret = salt_cli.run("saltutil.sync_all", minion_tgt="rs1")
    assert ret.returncode == 0, ret
    return ret.data


@pytest.fixture(scope="module")
def dry_run(salt_cli, synced, lab, rs1_persist):
    """state.apply lvs test=True on a rs1 that was never configured."""
    host = lab.host("rs1")
    before = kernel_view(host)
    ret = salt_cli.run("state.apply", "lvs", "test=True", minion_tgt="rs1")
    return {"ret": ret, "before": before, "after": kernel_view(host),
            "files": files_under(rs1_persist)}


@pytest.fixture(scope="module")
def applied(salt_cli, dry_run, lab):
    """The real state.apply lvs, after the dry run."""
    ret = salt_cli.run("state.apply", "lvs", minion_tgt="rs1")
    return {"ret": ret, "after": kernel_view(lab.host("rs1"))}


def test_sync_all_ships_the_extension(synced):
    assert "modules.lvs_realserver" in synced["modules"]
    assert "modules.lvs_pillar" in synced["modules"]
    assert "states.lvs_realserver" in synced["states"]


def test_dry_run_predicts_and_touches_nothing(dry_run):
    ret = dry_run["ret"]
    assert ret.returncode == 0, ret
    assert dry_run["before"]["arp"]["eth0"] == (0, 0)  # really a fresh real server
    state = ret.data[LVS_STATE]
    assert state["result"] is None, state
    assert set(state["changes"]) == {"sysctl", "file", "address"}, state["changes"]
    assert dry_run["after"] == dry_run["before"]
    assert dry_run["files"] == []


def test_apply_configures_rs1(applied, dry_run, lab, rs1_persist):
    ret = applied["ret"]
    assert ret.returncode == 0, ret
    assert all(s["result"] is True for s in ret.data.values()), ret.data
    changes = ret.data[LVS_STATE]["changes"]
    # ARP suppression on the ARP-facing NIC only (scope: interfaces), never conf/all
    assert changes["sysctl"] == {
        "net.ipv4.conf.eth0.arp_ignore": {"old": 0, "new": 1},
        "net.ipv4.conf.eth0.arp_announce": {"old": 0, "new": 2},
    }
    assert changes["address"] == {
        f"{VIP}/32 dev lo": {"old": None, "new": f"{VIP}/32 dev lo"},
        f"{VIP6}/128 dev lo": {"old": None, "new": f"{VIP6}/128 dev lo"},
    }
    # every persisted file went to the test's folder, and holds what the changes said
    for path, change in changes["file"].items():
        assert pathlib.Path(path).is_relative_to(rs1_persist), path
        if not change["new"].startswith("-> "):
            assert pathlib.Path(path).read_text() == change["new"]

    # test=True predicted exactly this run
    assert all_changes(dry_run["ret"].data) == all_changes(ret.data)

    kernel = applied["after"]
    assert kernel["arp"]["eth0"] == (1, 2)
    rs1_ns = lab.host("rs1").ns  # and once more straight from rs1's /proc/sys
    assert rs1_ns.sysctl("net/ipv4/conf/eth0/arp_ignore") == "1"
    assert rs1_ns.sysctl("net/ipv4/conf/eth0/arp_announce") == "2"
    assert kernel["arp"]["all"] == (0, 0)
    assert f"{VIP}/32" in kernel["lo"] and f"{VIP6}/128" in kernel["lo"]
    assert kernel["eth0"] == dry_run["before"]["eth0"]
    # rs2 has no minion: untouched, so the change stayed in rs1's namespace
    assert lab.host("rs2").arp_sysctls()["eth0"] == (0, 0)
    assert not any(a.startswith(VIP) for a in lab.host("rs2").addresses("lo"))


def test_only_the_director_answers_arp_for_the_vip(applied, lab):
    assert applied["ret"].returncode == 0
    assert lab.arp_responders() == {"lb1"}
    # rs1's own ARP requests (sent while it answers from the VIP) carry its own address
    assert lab.own_arp_senders("rs1") == {lab.host("rs1").address}


def test_second_apply_changes_nothing(applied, salt_cli, lab):
    assert applied["ret"].returncode == 0
    ret = salt_cli.run("state.apply", "lvs", minion_tgt="rs1")
    assert ret.returncode == 0, ret
    assert all(s["result"] is True for s in ret.data.values()), ret.data
    assert all_changes(ret.data) == {sid: {} for sid in ret.data}
    assert kernel_view(lab.host("rs1")) == applied["after"]
