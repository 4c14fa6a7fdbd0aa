"""The rule methods as pure functions: nft/arptables rendering and parsing, the plan's order
when a method is used or switched, redirect refusals. No kernel needed."""

import ipaddress
import json

import pytest
from salt.exceptions import SaltInvocationError

from tests.loadmod import load
from tests.unit.test_plan_audit import LO, VIP, converged, observed, paths_dummy

pytestmark = pytest.mark.unit

rs = load("modules", "lvs_realserver", salt={}, pillar={}, opts={"id": "rs1"})
ip = ipaddress.ip_address
RIP = "198.51.100.11"
ARP = "table arp saltext_lvs"


def spec(vips, **kw):
    kw.setdefault("persist", False)
    return rs.make_spec(vips, **kw)


def with_rules(obs, **rules):
    obs.rules = {"nft": True, **rules}
    return obs


def steps(plan):
    return [(a.kind, a.target) for a in plan.actions if a.kind not in ("record", "file")]


def arp_model(*vips, rewrite=None):
    return {"vips": list(vips), "rewrite": rewrite or {"eth0": RIP, "eth1": "203.0.113.11"}}


def test_nftables_table_comes_before_the_vip_and_no_sysctl_is_touched():
    plan = rs.plan_changes(spec([VIP], arp_method="nftables"), with_rules(observed()), None,
                           paths_dummy())
    assert steps(plan) == [("nftables", ARP), ("addr_add", f"{VIP}/32 dev lo")]
    assert plan.changes()["nftables"] == {ARP: {"old": None, "new": arp_model(VIP)}}
    script = plan.actions[0].data["script"]
    head = script.splitlines()[:3]
    assert head == [ARP, f"delete {ARP}", f"{ARP} {{"], "declare, delete, re-create: atomic"
    assert 'oifname "eth1" arp saddr ip @vips arp saddr ip set 203.0.113.11' in script


def test_ipv6_only_needs_no_arp_rules():
    plan = rs.plan_changes(spec(["2001:db8::100"], arp_method="nftables"),
                           with_rules(observed()), None, paths_dummy())
    assert steps(plan) == [("addr_add", "2001:db8::100/128 dev lo")]


def test_converged_nftables_host_has_nothing_to_do():
    obs = with_rules(converged([VIP], conf={"eth0": {}}), arp=arp_model(VIP))
    first = rs.plan_changes(spec([VIP], arp_method="nftables"), obs, None, paths_dummy())
    again = rs.plan_changes(spec([VIP], arp_method="nftables"), obs, first.record, paths_dummy())
    assert again.changes() == {}


def test_a_swap_of_vips_widens_the_table_first_and_narrows_it_last():
    obs = with_rules(converged([VIP], conf={"eth0": {}}), arp=arp_model(VIP))
    record = rs.plan_changes(spec([VIP], arp_method="nftables"), obs, None,
                             paths_dummy()).record
    plan = rs.plan_changes(spec(["198.51.100.101"], arp_method="nftables"), obs, record,
                           paths_dummy())
    assert steps(plan) == [("nftables", ARP), ("addr_add", "198.51.100.101/32 dev lo"),
                           ("addr_del", f"{VIP}/32 dev lo"), ("nftables", ARP)]
    assert plan.actions[0].new["vips"] == [VIP, "198.51.100.101"]
    assert plan.changes()["nftables"][ARP] == {"old": arp_model(VIP),
                                               "new": arp_model("198.51.100.101")}


def test_sysctl_to_nftables_loads_the_table_before_relaxing():
    first = rs.plan_changes(spec([VIP]), observed(), None, paths_dummy())
    obs = with_rules(converged([VIP]))
    plan = rs.plan_changes(spec([VIP], arp_method="nftables"), obs, first.record, paths_dummy())
    assert steps(plan) == [("nftables", ARP), ("sysctl", "net.ipv4.conf.eth0.arp_announce"),
                           ("sysctl", "net.ipv4.conf.eth0.arp_ignore")]
    assert plan.record["sysctl"] == {} and plan.record["options"]["arp_method"] == "nftables"


def test_nftables_to_sysctl_raises_before_removing_the_table():
    obs = with_rules(converged([VIP], conf={"eth0": {}}), arp=arp_model(VIP))
    record = rs.plan_changes(spec([VIP], arp_method="nftables"), obs, None,
                             paths_dummy()).record
    plan = rs.plan_changes(spec([VIP]), obs, record, paths_dummy())
    assert steps(plan) == [("sysctl", "net.ipv4.conf.eth0.arp_ignore"),
                           ("sysctl", "net.ipv4.conf.eth0.arp_announce"), ("nftables", ARP)]
    assert plan.actions[-2].data["script"] == f"{ARP}\ndelete {ARP}\n"


def test_removal_deletes_the_vip_before_the_table():
    obs = with_rules(converged([VIP], conf={"eth0": {}}), arp=arp_model(VIP))
    record = rs.plan_changes(spec([VIP], arp_method="nftables"), obs, None,
                             paths_dummy()).record
    plan = rs.plan_changes(spec([], arp_method="nftables"), obs, record, paths_dummy())
    assert steps(plan) == [("addr_del", f"{VIP}/32 dev lo"), ("nftables", ARP)]


def test_missing_nft_is_refused_naming_the_method():
    obs = observed()
    obs.rules = {"nft": False, "nft_error": "the nft command is not installed"}
    with pytest.raises(SaltInvocationError, match="'nftables' needs nftables: the nft command"):
        rs.plan_changes(spec([VIP], arp_method="nftables"), obs, None, paths_dummy())


def test_persisted_unit_loads_the_rules_between_sysctls_and_vips(tmp_path):
    p = {k: str(tmp_path / k) for k in ("state_file", "sysctl_file", "vip_file", "unit_file")}
    p = rs.complete_paths(p)
    plan = rs.plan_changes(spec([VIP], arp_method="nftables", persist=True),
                           with_rules(observed()), None, p)
    files = plan.changes()["file"]
    assert p["nft_file"] == str(tmp_path / "realserver.nft")
    assert files[p["nft_file"]]["new"].count(f"{ARP} {{") == 1
    unit = files[p["unit_file"]]["new"]
    execs = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert execs == [f"ExecStart=/usr/sbin/nft -f {p['nft_file']}",
                     f"ExecStart=/sbin/ip -force -batch {p['vip_file']}"]
    assert p["sysctl_file"] not in files
    order = [a.target for a in plan.actions if a.kind in ("file", "addr_add")]
    assert order.index(p["nft_file"]) < order.index(f"{VIP}/32 dev lo")


# ---------------------------------------------------------------------------------------------
# parsing what nft prints


def nft_json_of(model):
    """What ``nft -j list table arp saltext_lvs`` prints for a table the module wrote."""
    objects = [{"table": {"family": "arp", "name": "saltext_lvs"}},
               {"set": {"name": "vips", "elem": model["vips"]}}]
    drop = {"match": {"op": "==", "left": {"payload": {"protocol": "arp", "field": "daddr ip"}},
                      "right": "@vips"}}
    objects.append({"rule": {"chain": "input", "expr": [drop, {"drop": None}]}})
    sender = {"match": {"op": "==", "left": {"payload": {"protocol": "arp", "field": "saddr ip"}},
                        "right": "@vips"}}
    for iface, addr in model["rewrite"].items():
        oif = {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": iface}}
        objects.append({"rule": {"chain": "output", "expr": [
            oif, sender, {"mangle": {"key": {}, "value": addr}}]}})
    objects.append({"rule": {"chain": "output", "expr": [sender, {"drop": None}]}})
    return objects


def test_parse_arp_table_round_trip_and_tampering():
    model = arp_model(VIP, "198.51.100.101")
    assert rs.parse_arp_table(nft_json_of(model)) == model
    assert rs.parse_arp_table(None) is None
    no_drop = [o for o in nft_json_of(model) if o.get("rule", {}).get("chain") != "input"]
    assert rs.parse_arp_table(no_drop)["incomplete"] is True
    json.dumps(rs.parse_arp_table(no_drop))  # reported as changes: must be plain data
