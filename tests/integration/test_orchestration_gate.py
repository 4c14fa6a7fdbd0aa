"""orch.lvs.add_realserver through a real salt-master (Salt's own orchestrate runner, requisites,
failhard, batch) with a real salt-minion inside real server rs1's namespace.

This machine has no IPVS, so no director minion runs here: the director steps, the drain and the
removal run in the kernel lane (tests/kernel/test_orchestration.py). What is tested here is the
gate in front of the directors: a real server whose audit is not clean stops the roll-out before
any director is asked to do anything; with a good pillar the same orchestration goes on to the
director step.
"""

from __future__ import annotations

import copy
import json
import time

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

VIP = netlab.VIP
LVS = {
    "services": {
        "web": {"vip": VIP, "protocol": "tcp", "ports": [80], "method": "dr", "scheduler": "rr",
                "realservers": {"rs1": {"address": netlab.REALSERVERS["rs1"], "weight": 100}}},
    },
    "directors": {"lb1": {"interface": "eth0"}},
    "realserver": {"persist": False},
}


@pytest.fixture(scope="module")
def lab(session_netns):
    # rs1 has a second NIC on 203.0.113.0/24, which does not face the VIP network
    with netlab.Lab(realservers={"rs1": netlab.REALSERVERS["rs1"]},
                    second_nic={"rs1": "203.0.113.11"}) as lab:
        attach_session_netns(lab, session_netns)
        yield lab


@pytest.fixture(scope="module")
def salt_master(lab, salt_factories, repo_root):
    master = salt_factories.salt_master_daemon(
        "lvs-orch-master",
        overrides=master_overrides(repo_root),
    )
    pillar = master.pillar_tree.base
    with pillar.temp_file("top.sls", "base:\n  '*':\n    - lvs\n"), \
            pillar.temp_file("lvs.sls", json.dumps({"lvs": LVS})):
        with master.started():
            yield master


@pytest.fixture(scope="module")
def rs1(lab, salt_master, tmp_path_factory):
    minion = salt_master.salt_minion_daemon(
        "rs1", factory_class=NetnsSaltMinion, netns=lab.host("rs1").netns,
        overrides=minion_overrides(loop_interval=1, **lvs_realserver_opts(
            tmp_path_factory.mktemp("rs1-persist"))))
    with minion.started():
        yield minion


@pytest.fixture(scope="module")
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=120)


@pytest.fixture(scope="module")
def salt_run(salt_master, salt_cli, rs1):
    run = salt_master.salt_run_cli(timeout=300)
    ret = run.run("saltutil.sync_runners")
    assert ret.returncode == 0 and "runners.lvs_rollout" in ret.data, ret
    ret = salt_cli.run("saltutil.sync_all", minion_tgt="rs1")
    assert ret.returncode == 0, ret
    return run


def set_pillar(salt_master, salt_cli, lvs):
    path = salt_master.pillar_tree.base.write_path / "lvs.sls"
    path.write_text(json.dumps({"lvs": lvs}))
    ret = salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt="rs1")
    assert ret.returncode == 0, ret


def orchestrate(salt_run, sls, pillar, event_listener=None, salt_master=None):
    """Run an orchestration; with the event listener, also wait until the master's events of
    that run have reached it (its own return event comes last)."""
    start = time.time()
    ret = salt_run.run("state.orchestrate", sls, f"pillar={json.dumps(pillar)}")
    deadline = time.monotonic() + 60
    while event_listener is not None and not [
            e for e in event_listener.get_events([(salt_master.id, "salt/run/*/ret")],
                                                 after_time=start)
            if e.data.get("fun") == "runner.state.orchestrate"]:
        assert time.monotonic() < deadline, "the orchestration's return event did not arrive"
        time.sleep(0.5)
    data = ret.data if isinstance(ret.data, dict) else {}
    states = next(iter((data.get("data") or {}).values()), {})
    steps = sorted(states.values(), key=lambda s: s.get("__run_num__", 0)) \
        if isinstance(states, dict) else []
    # a runner's failure is in its return (the comment only says that it failed)
    return ret, [(s["__id__"], s["result"],
                  f"{s['comment']} {(s.get('changes') or {}).get('return', '')}")
                 for s in steps]


def director_jobs(event_listener, salt_master, after):
    """What the orchestration addressed to lb1: its step records (``salt/run/<jid>/args``, fired
    before it publishes) and any job published to lb1."""
    found = event_listener.get_events([(salt_master.id, "salt/run/*/args"),
                                       (salt_master.id, "salt/job/*/new")], after_time=after)
    return [e for e in found if "lb1" in (e.data.get("tgt") or [])
            or "lb1" in (e.data.get("minions") or [])]


def test_input_is_required(salt_run):
    ret, steps = orchestrate(salt_run, "orch.lvs.add_realserver", {})
    assert ret.returncode != 0
    assert [(sid, ok) for sid, ok, _ in steps] == [("lvs-add-realserver-input", False)], steps
    assert "needs pillar realservers" in steps[0][2]


def test_a_real_server_that_would_steal_arp_never_reaches_a_director(
        lab, salt_master, salt_cli, salt_run, event_listener):
    """A pillar that points ARP suppression at the wrong NIC: the real-server state applies
    cleanly, the audit sees eth0 answer ARP for the VIP, and the roll-out stops there."""
    bad = copy.deepcopy(LVS)
    bad["realserver"]["interfaces"] = ["eth1"]
    set_pillar(salt_master, salt_cli, bad)
    t0 = time.time()
    ret, steps = orchestrate(salt_run, "orch.lvs.add_realserver", {"realservers": ["rs1"]},
                             event_listener, salt_master)
    print("\n" + json.dumps(steps, indent=1))
    assert ret.returncode != 0
    assert [(sid, ok) for sid, ok, _ in steps] == [
        ("lvs-add-realserver-state", True), ("lvs-add-realserver-audit", False)], steps
    assert "not ready for traffic" in steps[1][2] and "eth0 answers ARP" in steps[1][2]
    assert not director_jobs(event_listener, salt_master, t0), "no director was asked anything"
    # the gate was right: rs1 holds the VIP and eth0 answers ARP for it
    rs1 = lab.host("rs1")
    assert f"{VIP}/32" in rs1.addresses("lo")
    assert rs1.arp_sysctls()["eth1"] == (1, 2) and rs1.arp_sysctls()["eth0"] == (0, 0)
    assert "rs1" in lab.arp_responders()


def test_with_a_good_pillar_the_roll_out_goes_on_to_the_directors(
        lab, salt_master, salt_cli, salt_run, event_listener):
    set_pillar(salt_master, salt_cli, LVS)
    t0 = time.time()
    ret, steps = orchestrate(salt_run, "orch.lvs.add_realserver",
                             {"realservers": "rs1", "batch": 1}, event_listener, salt_master)
    print("\n" + json.dumps(steps, indent=1))
    ids = [(sid, ok) for sid, ok, _ in steps]
    assert ids[:2] == [("lvs-add-realserver-state", True), ("lvs-add-realserver-audit", True)]
    # reached; lb1 has no minion on this host (no IPVS here), so that step fails
    assert ids[2] == ("lvs-add-director-state", False) and "No minions" in steps[2][2], steps
    assert director_jobs(event_listener, salt_master, t0), "the director step was addressed"
    assert lab.host("rs1").arp_sysctls()["eth0"] == (1, 2)
    assert lab.arp_responders() == {"lb1"}
