"""The director's quick no-op check on a real kernel: a run with nothing to do ends after
comparing the pillar with /proc/net/ip_vs (lvs_director, "The no-op check"), and every drift it
must see sends the run down the full path, which then reports exactly what it changes.

The pillar is the every-feature one of test_director_table: IPv4 and IPv6, fwmark, persistence
(the kernel prints jiffies in /proc), one-packet, scheduler flags, thresholds and a GUE tunnel.
Drift is made with ipvsadm, sysctl and ip, as an operator would.
"""

import copy
import os

import pytest

from tests.kernel.test_director_table import LVS
from tests.kernel.test_director_table import VIP
from tests.kernel.test_director_table import director_ns

pytestmark = pytest.mark.kernel


@pytest.fixture
def lb(netns, loaders, tmp_path, kmod):
    ns = director_ns(netns, kmod)
    state_file = str(tmp_path / "director.json")

    def apply(lvs=LVS, **kwargs):
        def run():
            ret = loaders.modules.lvs_director.apply(
                minion_id="lb1", lvs=lvs, state_file=state_file, **kwargs)
            return dict(ret)

        return ns.call(run)

    first = apply()
    assert first["checked"] == "full" and first["changes"], first
    assert os.path.exists(state_file + ".check"), "no check file after a successful run"
    again = apply()
    assert again == {"changes": {}, "warnings": [], "test": False, "journal": [],
                     "checked": "quick"}, again
    return ns, apply, state_file


def host_state(ns):
    """What a test-mode run must leave alone: the IPVS table, the addresses, the sysctls."""
    return (ns.run("ipvsadm", "-Sn").stdout, ns.run("ip", "-o", "addr", "show").stdout,
            ns.run("sysctl", "net.ipv4.vs.expire_nodest_conn",
                   "net.ipv4.vs.expire_quiescent_template").stdout)


def converges(ns, apply, expect):
    """The drift is seen (test mode predicts it exactly and changes nothing), repaired as
    predicted, then quick again."""
    before = host_state(ns)
    predicted = apply(test=True)
    assert predicted["checked"] == "full", predicted
    assert predicted["changes"] == expect, predicted["changes"]
    assert host_state(ns) == before, "test mode changed the host"
    done = apply()
    assert done["changes"] == expect, done["changes"]
    after = apply()
    assert after["checked"] == "quick" and after["changes"] == {}, after


def test_every_feature_is_checked_quickly_and_test_mode_agrees(lb):
    ns, apply, _ = lb
    before = host_state(ns)
    res = apply(test=True)
    assert res["checked"] == "quick" and res["changes"] == {} and res["test"] is True
    assert host_state(ns) == before


def test_a_weight_edited_by_hand_is_put_back(lb):
    ns, apply, _ = lb
    ns.run("ipvsadm", "-e", "-t", f"{VIP}:80", "-r", "198.51.100.12:80", "-g", "-w", "7")
    converges(ns, apply, {"realserver": {
        f"tcp {VIP}:80 -> 198.51.100.12:80": {"old": {"weight": 7}, "new": {"weight": 65535}}}})


def test_a_deleted_real_server_and_service_come_back(lb):
    ns, apply, _ = lb
    ns.run("ipvsadm", "-d", "-t", f"{VIP}:80", "-r", "198.51.100.12:80")
    ns.run("ipvsadm", "-D", "-t", "198.51.100.102:8080")
    converges(ns, apply, {
        "service": {"tcp 198.51.100.102:8080": {
            "old": None, "new": {"scheduler": "wrr", "persistence": 0}}},
        "realserver": {
            f"tcp {VIP}:80 -> 198.51.100.12:80": {
                "old": None, "new": {"forward": "dr", "weight": 65535}},
            "tcp 198.51.100.102:8080 -> 203.0.113.11:80": {
                "old": None, "new": {"forward": "nat", "weight": 5}},
        },
    })


def test_thresholds_the_pillar_sets_are_read_over_netlink(lb):
    ns, apply, _ = lb
    # weight unchanged: /proc/net/ip_vs shows nothing of this
    ns.run("ipvsadm", "-e", "-t", f"{VIP}:80", "-r", "198.51.100.11:80", "-g", "-w", "0",
           "-x", "5", "-y", "2")
    converges(ns, apply, {"realserver": {f"tcp {VIP}:80 -> 198.51.100.11:80": {
        "old": {"upper_threshold": 5, "lower_threshold": 2},
        "new": {"upper_threshold": 1000, "lower_threshold": 800}}}})


def test_scheduler_flags_and_persistence_edited_by_hand_are_put_back(lb):
    ns, apply, _ = lb
    ns.run("ipvsadm", "-E", "-u", f"{VIP}:53", "-s", "sh", "-o", "-b", "sh-port")
    ns.run("ipvsadm", "-E", "-t", f"{VIP}:443", "-s", "wlc", "-p", "900", "-M", "255.255.255.0")
    converges(ns, apply, {"service": {
        f"udp {VIP}:53": {"old": {"flags": ["one-packet", "flag-2"]},
                          "new": {"flags": ["one-packet", "flag-1", "flag-2"]}},
        f"tcp {VIP}:443": {"old": {"persistence": 900}, "new": {"persistence": 600}},
    }})


def test_the_vip_and_the_sysctls_are_watched(lb):
    ns, apply, _ = lb
    ns.ip("addr", "del", "198.51.100.101/32", "dev", "eth0")
    ns.run("sysctl", "-qw", "net.ipv4.vs.expire_nodest_conn=0")
    converges(ns, apply, {
        "address": {"198.51.100.101/32 dev eth0": {"old": None,
                                                   "new": "198.51.100.101/32 dev eth0"}},
        "sysctl": {"net.ipv4.vs.expire_nodest_conn": {"old": 0, "new": 1}},
    })


def test_an_unmanaged_service_is_warned_about_on_every_run(lb):
    ns, apply, _ = lb
    ns.run("ipvsadm", "-A", "-t", "198.51.100.200:80", "-s", "rr")
    for _ in range(2):
        res = apply()
        assert res["checked"] == "full" and res["changes"] == {}
        assert res["warnings"] == [
            "tcp 198.51.100.200:80: in IPVS but not in the pillar; left alone (prune: false)"]


def test_a_new_pillar_or_a_lost_record_takes_the_full_path(lb):
    _ns, apply, state_file = lb
    changed = copy.deepcopy(LVS)
    changed["services"]["nat"]["realservers"]["rs1"]["weight"] = 6
    res = apply(changed)
    assert res["checked"] == "full"
    assert res["changes"] == {"realserver": {"tcp 198.51.100.102:8080 -> 203.0.113.11:80": {
        "old": {"weight": 5}, "new": {"weight": 6}}}}
    assert apply(changed)["checked"] == "quick"
    os.unlink(state_file)
    res = apply(changed)
    assert res["checked"] == "full" and res["changes"] == {}
    assert apply(changed)["checked"] == "quick"


def test_what_quick_cannot_see_full_does(lb):
    """The documented blind spot: a threshold set by hand where the pillar leaves the default."""
    ns, apply, _ = lb
    ns.run("ipvsadm", "-e", "-t", "198.51.100.102:8080", "-r", "203.0.113.11:80", "-m", "-w", "5",
           "-x", "9")
    quick = apply()
    assert quick["checked"] == "quick" and quick["changes"] == {}
    full = apply(verify="full")
    assert full["checked"] == "full"
    assert full["changes"] == {"realserver": {"tcp 198.51.100.102:8080 -> 203.0.113.11:80": {
        "old": {"upper_threshold": 9, "lower_threshold": 0},
        "new": {"upper_threshold": None, "lower_threshold": None}}}}
