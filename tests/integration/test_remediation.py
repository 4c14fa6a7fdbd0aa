"""Drift is seen and put right: the lvs_realserver beacon in a real salt-minion inside rs1's
namespace, the reactor and the lvs_remediate runner in a real salt-master, configured with the
shipped snippet (salt/reactor/lvs/master.d/lvs-remediation.conf).

Topology (lab.netlab): client, director lb1 (holding the VIP), rs1 and rs2 on one bridge; pytest's
namespace joins it as 198.51.100.1 and runs the master. rs1 runs the beacon; rs2 is a real server
whose pillar disables the beacon, so nothing but a forged event could ever make the master act on
it.

Each repair is checked on the wire (only the director answers ARP for the VIP) and in rs1's
kernel. Waits are bounded (REPAIR_WAIT); how long a repair took is printed, never asserted.
"""

from __future__ import annotations

import base64
import json
import pathlib
import re
import time

import pytest
import salt.crypt
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
VIP6 = netlab.VIP6
WINDOW = 40  # lvs_remediate:window for this master (the shipped default is 120)
REMIND = 5  # lvs_beacon:remind for rs1
REPAIR_WAIT = 120  # a bound on waiting for the wire to be right, not a performance claim
DRIFT_TAG = "salt/beacon/{}/lvs_realserver/drift"
CLEAR_TAG = "salt/beacon/{}/lvs_realserver/clear"


# --------------------------------------------------------------------------------------------
# daemons


@pytest.fixture(scope="module")
def lab(session_netns):
    with netlab.Lab() as lab:
        attach_session_netns(lab, session_netns)
        yield lab


@pytest.fixture(scope="module")
def salt_master(lab, salt_factories, repo_root):
    snippet = yaml.safe_load(
        (repo_root / "salt/reactor/lvs/master.d/lvs-remediation.conf").read_text())
    snippet["lvs_remediate"]["window"] = WINDOW
    master = salt_factories.salt_master_daemon(
        "lvs-remediation-master",
        overrides=master_overrides(repo_root, **snippet),
    )
    example = yaml.safe_load((repo_root / "pillar.example").read_text())
    top = "base:\n  '*':\n    - lvs\n  'rs1':\n    - beacon_rs1\n  'rs2':\n    - beacon_off\n"
    pillar = master.pillar_tree.base
    with pillar.temp_file("top.sls", top), \
            pillar.temp_file("lvs.sls", json.dumps({"lvs": example["lvs"]})), \
            pillar.temp_file("beacon_rs1.sls", json.dumps(
                {"lvs_beacon": {"interval": 1, "remind": REMIND, "refresh": 60}})), \
            pillar.temp_file("beacon_off.sls", json.dumps({"lvs_beacon": {"enabled": False}})):
        with master.started():
            yield master


def _minion(salt_master, lab, name, tmp_path_factory):
    persist = tmp_path_factory.mktemp(f"{name}-persist")
    return salt_master.salt_minion_daemon(
        name,
        factory_class=NetnsSaltMinion,
        netns=lab.host(name).netns,
        # Salt's default. salt-factories sets 0.05, and Salt counts a beacon's `interval` in
        # loop_interval units while it runs beacons once a second: interval 1 would be 20 s.
        overrides=minion_overrides(loop_interval=1, **lvs_realserver_opts(persist)),
    )


@pytest.fixture(scope="module")
def rs1(lab, salt_master, tmp_path_factory):
    minion = _minion(salt_master, lab, "rs1", tmp_path_factory)
    with minion.started():
        yield minion


@pytest.fixture(scope="module")
def rs2(lab, salt_master, tmp_path_factory):
    minion = _minion(salt_master, lab, "rs2", tmp_path_factory)
    with minion.started():
        yield minion


@pytest.fixture(scope="module")
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=120)


@pytest.fixture(scope="module")
def salt_run(salt_master):
    return salt_master.salt_run_cli(timeout=120)


@pytest.fixture(scope="module")
def deployed(salt_cli, salt_run, rs1, rs2, lab):
    """File-root deployment: runners synced to the master, sync_all and state.apply lvs on both
    real servers (rs1 gets the beacon from the formula, rs2 does not)."""
    ret = salt_run.run("saltutil.sync_runners")
    assert ret.returncode == 0, ret
    assert "runners.lvs_remediate" in ret.data, ret.data
    for name in ("rs1", "rs2"):
        ret = salt_cli.run("saltutil.sync_all", minion_tgt=name)
        assert ret.returncode == 0, ret
        assert "beacons.lvs_realserver" in ret.data["beacons"], ret.data
    applied = {}
    for name in ("rs1", "rs2"):
        ret = salt_cli.run("state.apply", "lvs", minion_tgt=name)
        assert ret.returncode == 0, ret
        assert all(s["result"] is True for s in ret.data.values()), ret.data
        applied[name] = ret.data
    assert lab.arp_responders() == {"lb1"}
    return applied


# --------------------------------------------------------------------------------------------
# helpers


def wait_until(what, check, timeout=REPAIR_WAIT, step=0.5):
    """Poll ``check()`` until it returns a truthy value; return (value, seconds waited)."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < timeout:
        last = check()
        if last:
            return last, time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def events(event_listener, master, tag, after, **match):
    """Master events with this tag (fnmatch) since ``after`` whose data holds ``match``."""
    found = event_listener.get_events([(master.id, tag)], after_time=after)
    out = [e for e in found if all(e.data.get(k) == v for k, v in match.items())]
    return sorted(out, key=lambda e: e.stamp)


def wait_event(event_listener, master, tag, after, timeout=REPAIR_WAIT, **match):
    found, _ = wait_until(f"event {tag} {match}",
                          lambda: events(event_listener, master, tag, after, **match), timeout)
    return found[0]


def state_jobs(event_listener, master, minion, after):
    """state.* jobs the master published to ``minion`` since ``after`` (Salt's own events)."""
    found = event_listener.get_events([(master.id, "salt/job/*/new")], after_time=after)
    return [e for e in found if minion in (e.data.get("minions") or [])
            and str(e.data.get("fun", "")).startswith("state.")]


def rs1_eth0_quiet(lab):
    return lab.host("rs1").arp_sysctls()["eth0"] == (1, 2)


def wire_right(lab):
    """Only the director answers ARP for the VIP."""
    return lab.arp_responders() == {"lb1"}


@pytest.fixture
def fresh_limit(salt_run, deployed):
    """Each repair test starts with no rate-limit record for rs1 (the operator's reset)."""
    ret = salt_run.run("lvs_remediate.reset", "rs1")
    assert ret.returncode == 0, ret


# --------------------------------------------------------------------------------------------
# repairs


def test_formula_installed_the_beacon_on_rs1_only(salt_cli, deployed):
    ret = salt_cli.run("beacons.list", "return_yaml=False", minion_tgt="rs1")
    assert ret.returncode == 0, ret
    conf = {k: v for item in ret.data["lvs_realserver"] for k, v in item.items()}
    assert conf == {"interval": 1, "disable_during_state_run": True, "remind": REMIND,
                    "refresh": 60}
    ret = salt_cli.run("beacons.list", "return_yaml=False", minion_tgt="rs2")
    assert ret.returncode == 0, ret
    assert "lvs_realserver" not in (ret.data or {})


def repaired(lab, event_listener, salt_master, t0, kernel_ok, what):
    """Wait until rs1's kernel and the wire are right again; print how long it took since the
    change was made (wall clock ``t0``)."""
    wait_until(what, lambda: kernel_ok() and wire_right(lab))
    took = time.time() - t0
    started = wait_event(event_listener, salt_master, "lvs/remediate/started", t0, id="rs1")
    clear = wait_event(event_listener, salt_master, CLEAR_TAG.format("rs1"), t0)
    print(f"\n{what}: repaired {took:.1f} s after the change "
          f"(remediation {started.data['jid']}, findings: {started.data.get('findings')})")
    return started, clear


def test_arp_ignore_reset_is_repaired(lab, event_listener, salt_master, fresh_limit):
    t0 = time.time()
    lab.host("rs1").ns.write_sysctl("net/ipv4/conf/eth0/arp_ignore", 0)
    assert "rs1" in lab.arp_responders()  # the race is back on the wire
    drift = wait_event(event_listener, salt_master, DRIFT_TAG.format("rs1"), t0)
    assert [f["kind"] for f in drift.data["findings"]] == ["arp_ignore"]
    assert drift.data["findings"][0]["interface"] == "eth0"
    repaired(lab, event_listener, salt_master, t0, lambda: rs1_eth0_quiet(lab),
             "arp_ignore=0 on eth0")
    assert rs1_eth0_quiet(lab)


def test_deleted_vip_is_repaired(lab, event_listener, salt_master, fresh_limit):
    rs1 = lab.host("rs1")
    t0 = time.time()
    rs1.ip("addr", "del", f"{VIP}/32", "dev", "lo")
    rs1.ip("addr", "del", f"{VIP6}/128", "dev", "lo")
    # two deletions: a beacon tick between them reports the first, then the second as new
    wait_until("both deletions reported", lambda: {
        (f["kind"], f["vip"])
        for e in events(event_listener, salt_master, DRIFT_TAG.format("rs1"), t0)
        for f in e.data["findings"]} >= {("vip_missing", VIP), ("vip_missing", VIP6)} or None)

    def held():
        lo = rs1.addresses("lo")
        return f"{VIP}/32" in lo and f"{VIP6}/128" in lo

    repaired(lab, event_listener, salt_master, t0, held, "VIPs deleted from lo")
    assert held() and rs1_eth0_quiet(lab)


def test_new_nic_with_default_sysctls_is_repaired(lab, event_listener, salt_master,
                                                  fresh_limit):
    t0 = time.time()
    lab.add_nic("rs1", "eth1", "198.51.100.21")  # same LAN: it faces the VIP network
    assert lab.host("rs1").arp_sysctls()["eth1"] == (0, 0)
    assert "rs1/eth1" in lab.arp_responders()
    drift = wait_event(event_listener, salt_master, DRIFT_TAG.format("rs1"), t0)
    assert {(f["kind"], f["interface"]) for f in drift.data["findings"]} >= {
        ("arp_ignore", "eth1"), ("arp_announce", "eth1")}
    repaired(lab, event_listener, salt_master, t0,
             lambda: lab.host("rs1").arp_sysctls()["eth1"] == (1, 2), "new NIC eth1")
    assert lab.host("rs1").arp_sysctls()["eth1"] == (1, 2)
    assert rs1_eth0_quiet(lab)


# --------------------------------------------------------------------------------------------
# forged and replayed events


def fire_raw(salt_cli, via, tag, data):
    """Send ``{tag, data}`` to the master from minion ``via`` as a beacon batch does: the master
    fires the inner event as is, whatever id it names (saltstack/salt#29273)."""
    preload = json.dumps({"events": [{"tag": tag, "data": data}]})
    ret = salt_cli.run("event.fire_master", "{}", "lvs-test/forge", f"preload={preload}",
                       minion_tgt=via)
    assert ret.returncode == 0 and ret.data is True, ret


def test_forged_events_naming_rs2_do_nothing_to_it(lab, salt_cli, salt_master, event_listener,
                                                    rs1, deployed):
    rs2 = lab.host("rs2")
    rs2.ns.write_sysctl("net/ipv4/conf/eth0/arp_ignore", 0)  # rs2 really drifts
    try:
        assert "rs2" in lab.arp_responders()
        tag = DRIFT_TAG.format("rs2")
        t0 = time.time()
        # (a) event.send from rs1 naming rs2 in the tag: the master records rs1 as the sender
        ret = salt_cli.run("event.send", tag, "data={\"id\": \"rs2\"}", minion_tgt="rs1")
        assert ret.returncode == 0, ret
        # (b) a beacon-shaped event claiming to be rs2, signed with rs1's own (valid) key
        stamp = time.time()
        msg = f"lvs_realserver|drift|rs2|{stamp:.6f}|0123456789abcdef"
        key = salt.crypt.PrivateKey.from_file(pathlib.Path(rs1.config["pki_dir"]) / "minion.pem")
        sig = base64.b64encode(key.sign(msg, "PKCS1v15-SHA224")).decode()
        forged = {"id": "rs2", "event": "drift", "findings": [], "repeat": False,
                  "auth": {"msg": msg, "sig": sig}}
        fire_raw(salt_cli, "rs1", tag, forged)
        # (c) the same without a signature
        fire_raw(salt_cli, "rs1", tag, dict(forged, auth={"msg": msg, "sig": None}))

        wait_until("two refusals", lambda: len(events(
            event_listener, salt_master, "lvs/remediate/refused", t0, id="rs2")) >= 2)
        reasons = [e.data["reason"] for e in events(
            event_listener, salt_master, "lvs/remediate/refused", t0, id="rs2")]
        print("\nrefused:", *reasons, sep="\n  ")
        assert any("signature does not verify" in r for r in reasons), reasons
        assert any("not signed" in r for r in reasons), reasons
        # the forged events did reach the master's bus under rs2's name
        assert events(event_listener, salt_master, tag, t0, id="rs2")
        # and nothing was done to rs2: no job, no remediation, still drifted on the wire
        assert not events(event_listener, salt_master, "lvs/remediate/started", t0, id="rs2")
        assert not state_jobs(event_listener, salt_master, "rs2", t0)
        assert rs2.ns.sysctl("net/ipv4/conf/eth0/arp_ignore") == "0"
        assert "rs2" in lab.arp_responders()
    finally:
        ret = salt_cli.run("state.apply", "lvs.realserver", minion_tgt="rs2")
        assert ret.returncode == 0, ret
    assert wire_right(lab)


def test_replayed_event_does_nothing(lab, salt_cli, salt_master, event_listener, rs2, deployed):
    """A genuine, signed drift event of rs1 sent again (here from rs2's minion): refused."""
    genuine = events(event_listener, salt_master, DRIFT_TAG.format("rs1"), 0.0, id="rs1")
    assert genuine, "the repair tests above produce signed drift events of rs1"
    data = {k: v for k, v in genuine[-1].full_data.items() if not k.startswith("_")}
    assert data["auth"]["sig"]
    t0 = time.time()
    fire_raw(salt_cli, "rs2", DRIFT_TAG.format("rs1"), data)
    refused = wait_event(event_listener, salt_master, "lvs/remediate/refused", t0, id="rs1")
    assert "replay" in refused.data["reason"] or "clock" in refused.data["reason"], refused.data
    assert not events(event_listener, salt_master, "lvs/remediate/started", t0, id="rs1")
    assert not state_jobs(event_listener, salt_master, "rs1", t0)
    assert wire_right(lab)


# --------------------------------------------------------------------------------------------
# flapping: at most one remediation per window, the skipped ones visible


def test_flapping_real_server_is_rate_limited(lab, salt_master, event_listener, fresh_limit):
    ns = lab.host("rs1").ns
    t0 = time.time()
    ns.write_sysctl("net/ipv4/conf/eth0/arp_ignore", 0)
    wait_until("first repair", lambda: rs1_eth0_quiet(lab) and wire_right(lab))
    first = wait_event(event_listener, salt_master, "lvs/remediate/started", t0, id="rs1")

    # three more flaps inside the window: each is reported, each remediation is skipped
    for flap in range(3):
        t_flap = time.time()
        ns.write_sysctl("net/ipv4/conf/eth0/arp_ignore", 0)
        wait_event(event_listener, salt_master, DRIFT_TAG.format("rs1"), t_flap)
        skipped = wait_event(event_listener, salt_master, "lvs/remediate/skipped", t_flap,
                             id="rs1")
        assert "rate limit" in skipped.data["reason"], skipped.data
        assert "rs1" in lab.arp_responders()  # really left as it is
        ns.write_sysctl("net/ipv4/conf/eth0/arp_ignore", 1)  # flaps back by itself
        wait_event(event_listener, salt_master, CLEAR_TAG.format("rs1"), t_flap)

    # the last flap stays: the beacon reminds, and once the window has passed it is repaired
    t_last = time.time()
    ns.write_sysctl("net/ipv4/conf/eth0/arp_ignore", 0)
    _, took = wait_until("repair after the window",
                         lambda: rs1_eth0_quiet(lab) and wire_right(lab))
    second = wait_event(event_listener, salt_master, "lvs/remediate/started", t_last, id="rs1")

    started = events(event_listener, salt_master, "lvs/remediate/started", t0, id="rs1")
    skipped = events(event_listener, salt_master, "lvs/remediate/skipped", t0, id="rs1")
    jobs = state_jobs(event_listener, salt_master, "rs1", t0)
    print(f"\nflapping: {len(started)} remediations, {len(skipped)} skipped, last drift "
          f"repaired {took:.1f} s after it appeared; gap between remediations "
          f"{(second.stamp - first.stamp).total_seconds():.1f} s (window {WINDOW} s)")
    assert [e.data["jid"] for e in started] == [first.data["jid"], second.data["jid"]]
    assert len(jobs) == 2  # Salt's own record of what was published to rs1
    assert (second.stamp - first.stamp).total_seconds() >= WINDOW  # the limit held
    assert len(skipped) >= 3
    log = pathlib.Path(salt_master.config["log_file"]).read_text(errors="replace")
    assert re.search(r"lvs_remediate: skipped rs1: rate limit", log), "skips are in the master log"
