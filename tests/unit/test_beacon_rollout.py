"""The roll-out runner's pure decisions (_runners/lvs_rollout.py): when a new real server is
ready for traffic, which IPVS entries a removal drains, and how a check that fails looks to
Salt. The orchestrations run end to end in tests/integration/test_orchestration_gate.py (real master)
and tests/kernel/test_orchestration.py (real IPVS)."""

import pytest

from tests.loadmod import load

pytestmark = pytest.mark.unit

rollout = load("runners", "lvs_rollout", opts={}, context={})
VIP = "198.51.100.100"
SVC = f"tcp {VIP}:80"
SVC6 = "tcp [2001:db8::100]:80"


def audit(errors=(), held=None):
    held = {VIP: [{"interface": "lo", "prefixlen": 32}]} if held is None else held
    return {"ok": not errors,
            "findings": [{"severity": "error", "message": m} for m in errors]
            + [{"severity": "warning", "message": "a warning does not block"}],
            "vips": {vip: {"held_on": h} for vip, h in held.items()}}


def record(method="sysctl", vips=(VIP,)):
    return {"vips": {v: {"device": "lo"} for v in vips}, "options": {"arp_method": method}}


def test_a_clean_real_server_holding_its_vips_is_ready():
    assert rollout.realserver_problems(audit(), record()) == []


def test_what_keeps_a_real_server_from_traffic():
    assert rollout.realserver_problems(audit(["eth0 answers ARP for it"]), record()) == [
        "eth0 answers ARP for it"]
    assert rollout.realserver_problems(audit(held={VIP: []}), record()) == [
        f"{VIP} is not on lo as /32"]
    wide = {VIP: [{"interface": "lo", "prefixlen": 24}]}
    assert rollout.realserver_problems(audit(held=wide), record()) == [f"{VIP} is not on lo as /32"]
    assert rollout.realserver_problems(audit(), record(vips=()))[0].startswith("manages no VIP")
    assert rollout.realserver_problems(None, record()) == ["no audit or record came back"]
    # redirect holds no VIP on the host: only the audit counts
    assert rollout.realserver_problems(audit(held={VIP: []}), record("redirect")) == []


def status(live, pillar):
    def table(entries):
        return {svc: {"realservers": {d: {"weight": 100, "active": 0} for d in dests}}
                for svc, dests in entries.items()}

    return {"ok": live == pillar, "live": table(live), "pillar": table(pillar)}


def test_drain_plan_takes_only_the_entries_the_pillar_dropped():
    statuses = {
        "lb1": status({SVC: ["198.51.100.11:80", "198.51.100.13:80"],
                       SVC6: ["[2001:db8::13]:80"]},
                      {SVC: ["198.51.100.11:80"], SVC6: []}),
        "lb2": status({SVC: ["198.51.100.11:80"]}, {SVC: ["198.51.100.11:80"]}),
    }
    wanted = {"198.51.100.13", "2001:db8::13", VIP}
    leaving, kept = rollout.drain_plan(statuses, wanted)
    assert leaving == {"lb1": {"198.51.100.13": [SVC], "2001:db8::13": [SVC6]}}
    assert kept == []


def test_drain_plan_reports_what_the_pillar_still_lists():
    statuses = {"lb1": status({SVC: ["198.51.100.13:80"]}, {SVC: ["198.51.100.13:80"]})}
    leaving, kept = rollout.drain_plan(statuses, {"198.51.100.13"})
    assert leaving == {} and kept == [("lb1", SVC, "198.51.100.13:80")]


def test_a_failed_check_is_an_error_return_with_a_return_code():
    mod = load("runners", "lvs_rollout", opts={}, context={})
    mod._cmd = lambda minions, fun, *a, **k: {  # noqa: SLF001
        m: {"ret": audit(["eth0 answers ARP for it"]) if fun.endswith("audit") else record(),
            "retcode": 0} for m in minions}
    out = mod.check_realservers(["rs3"])
    assert out["Error"].startswith("not ready for traffic, no director was changed: rs3:")
    assert "eth0 answers ARP for it" in out["Error"]
    assert mod.__context__["retcode"] == 1


def test_a_minion_that_does_not_answer_is_a_failure():
    mod = load("runners", "lvs_rollout", opts={}, context={})
    mod._cmd = lambda minions, fun, *a, **k: {}  # noqa: SLF001
    out = mod.check_realservers("rs3,rs4")
    assert "rs3: no answer to lvs_realserver.audit" in out["Error"]
    assert "rs4: no answer" in out["Error"]


def test_drain_refuses_while_the_pillar_still_lists_the_real_server():
    mod = load("runners", "lvs_rollout", opts={}, context={})
    calls = []

    def cmd(minions, fun, arg=(), kwarg=None, timeout=None):
        calls.append((tuple(minions), fun))
        if fun.startswith("network.ip_addrs"):
            return {m: {"ret": ["198.51.100.13"], "retcode": 0} for m in minions}
        return {m: {"ret": status({SVC: ["198.51.100.13:80"]}, {SVC: ["198.51.100.13:80"]}),
                    "retcode": 0} for m in minions}

    mod._cmd = cmd  # noqa: SLF001
    out = mod.drain(["rs3"], directors=["lb1"], timeout=5)
    assert "still in the directors' pillar" in out["Error"]
    assert not [c for c in calls if c[1] == "lvs_director.drain"], "nothing was drained"


def test_drain_sets_every_weight_to_zero_before_it_waits():
    mod = load("runners", "lvs_rollout", opts={}, context={})
    calls = []

    def cmd(minions, fun, arg=(), kwarg=None, timeout=None):
        calls.append((minions[0], fun, tuple(arg), (kwarg or {}).get("timeout")))
        if fun.startswith("network.ip_addrs"):
            return {m: {"ret": ["198.51.100.13"] if fun == "network.ip_addrs"
                        else ["2001:db8::13"], "retcode": 0} for m in minions}
        if fun == "lvs_director.status":
            return {m: {"ret": status({SVC: ["198.51.100.13:80"], SVC6: ["[2001:db8::13]:80"]},
                                      {SVC: [], SVC6: []}), "retcode": 0} for m in minions}
        return {m: {"ret": {"drained": True, "active": {}}, "retcode": 0} for m in minions}

    mod._cmd = cmd  # noqa: SLF001
    out = mod.drain("rs3", directors="lb1", timeout=30)
    assert out["drained"] is True, out
    drains = [(c[2][0], c[3]) for c in calls if c[1] == "lvs_director.drain"]
    assert drains == [("198.51.100.13", 0), ("2001:db8::13", 0),
                      ("198.51.100.13", 30), ("2001:db8::13", 30)]


def test_remaining_connections_stop_the_removal_unless_forced():
    mod = load("runners", "lvs_rollout", opts={}, context={})

    def cmd(minions, fun, arg=(), kwarg=None, timeout=None):
        if fun.startswith("network.ip_addrs"):
            return {m: {"ret": ["198.51.100.13"], "retcode": 0} for m in minions}
        if fun == "lvs_director.status":
            return {m: {"ret": status({SVC: ["198.51.100.13:80"]}, {SVC: []}), "retcode": 0}
                    for m in minions}
        return {m: {"ret": {"drained": False, "active": {f"{SVC} -> 198.51.100.13:80": 2}},
                    "retcode": 0} for m in minions}

    mod._cmd = cmd  # noqa: SLF001
    out = mod.drain("rs3", directors="lb1", timeout=5)
    assert "active connections remain after 5 s" in out["Error"] and "weight 0" in out["Error"]
    forced = mod.drain("rs3", directors="lb1", timeout=5, force=True)
    assert forced["drained"] is False and forced["comment"].startswith("forced: ")
