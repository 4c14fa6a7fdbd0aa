"""The pure parts of lvs_realserver: plan ordering, relax rules, audit logic. No kernel needed."""

import ipaddress

import pytest
from salt.exceptions import SaltInvocationError

from tests.loadmod import load

pytestmark = pytest.mark.unit

rs = load("modules", "lvs_realserver", salt={}, pillar={}, opts={"id": "rs1"})
ip = ipaddress.ip_address

LO, ETH0, ETH1, VETH = 1, 2, 3, 4
VIP = "198.51.100.100"


def observed(conf=None, extra_addrs=(), links=None):
    links = links or {
        "lo": rs.Link(LO, "lo", rs.IFF_LOOPBACK | rs.IFF_UP, 772),
        "eth0": rs.Link(ETH0, "eth0", rs.IFF_UP, rs.ARPHRD_ETHER),
        "eth1": rs.Link(ETH1, "eth1", rs.IFF_UP, rs.ARPHRD_ETHER),
    }
    addrs = [
        rs.Addr(ip("127.0.0.1"), 8, LO),
        rs.Addr(ip("198.51.100.11"), 24, ETH0),
        rs.Addr(ip("203.0.113.11"), 24, ETH1),
        *extra_addrs,
    ]
    base = {n: {"arp_ignore": 0, "arp_announce": 0} for n in ["all", "default", *links]}
    for name, values in (conf or {}).items():
        base[name].update(values)
    return rs.Observed(links=links, addrs=addrs, conf=base)


def paths(tmp_path):
    return {
        "state_file": str(tmp_path / "state.json"),
        "sysctl_file": str(tmp_path / "sysctl.conf"),
        "vip_file": str(tmp_path / "vips.batch"),
        "unit_file": str(tmp_path / "unit" / "lvs-realserver.service"),
    }


def spec(vips, **kw):
    kw.setdefault("persist", False)
    return rs.make_spec(vips, **kw)


def kinds(plan):
    return [(a.kind, a.target) for a in plan.actions if a.kind != "record"]


def test_suppression_comes_before_the_vip(tmp_path):
    plan = rs.plan_changes(spec([VIP], persist=True), observed(), None, paths(tmp_path))
    order = [a.kind for a in plan.actions]
    first_addr = order.index("addr_add")
    assert order.index("sysctl") < first_addr
    sysctl_file = [i for i, a in enumerate(plan.actions) if a.target.endswith("sysctl.conf")]
    assert sysctl_file[0] < first_addr, "the boot drop-in must hold the suppression first"
    record = [i for i, a in enumerate(plan.actions) if a.kind == "record"]
    assert record[0] < first_addr, "the VIP is recorded as managed before it appears"
    assert plan.changes()["sysctl"] == {
        "net.ipv4.conf.eth0.arp_ignore": {"old": 0, "new": 1},
        "net.ipv4.conf.eth0.arp_announce": {"old": 0, "new": 2},
    }
    assert plan.changes()["address"] == {
        f"{VIP}/32 dev lo": {"old": None, "new": f"{VIP}/32 dev lo"}
    }


def test_only_the_nic_facing_the_vip_is_touched():
    plan = rs.plan_changes(spec([VIP]), observed(), None, paths_dummy())
    assert {a.target for a in plan.actions if a.kind == "sysctl"} == {
        "net.ipv4.conf.eth0.arp_ignore",
        "net.ipv4.conf.eth0.arp_announce",
    }


def paths_dummy():
    return {k: f"/nonexistent/saltext-lvs-test/{k}"
            for k in ("state_file", "sysctl_file", "vip_file", "unit_file")}


def test_routed_vip_falls_back_to_every_arp_nic():
    plan = rs.plan_changes(spec(["203.0.113.200"]), observed(), None, paths_dummy())
    # 203.0.113.200 is on eth1's subnet: only eth1
    assert {a.target.split(".")[3] for a in plan.actions if a.kind == "sysctl"} == {"eth1"}
    plan = rs.plan_changes(spec(["198.51.100.250"], interfaces=["eth1"]), observed(), None,
                           paths_dummy())
    assert {a.target.split(".")[3] for a in plan.actions if a.kind == "sysctl"} == {"eth1"}
    links = {
        "lo": rs.Link(LO, "lo", rs.IFF_LOOPBACK, 772),
        "eth0": rs.Link(ETH0, "eth0", 0, rs.ARPHRD_ETHER),
        "eth1": rs.Link(ETH1, "eth1", 0, rs.ARPHRD_ETHER),
    }
    remote = rs.plan_changes(spec(["203.0.113.250"]), observed(links=links), None, paths_dummy())
    assert {a.target.split(".")[3] for a in remote.actions if a.kind == "sysctl"} == {"eth1"}


def test_ipv6_vip_needs_no_arp_step():
    plan = rs.plan_changes(spec(["2001:db8::100"]), observed(), None, paths_dummy())
    assert [a.kind for a in plan.actions if a.kind != "record"] == ["addr_add"]
    assert plan.changes()["address"] == {
        "2001:db8::100/128 dev lo": {"old": None, "new": "2001:db8::100/128 dev lo"}
    }


def test_satisfied_values_are_left_alone():
    obs = observed(conf={"eth0": {"arp_ignore": 2, "arp_announce": 2}})
    plan = rs.plan_changes(spec([VIP]), obs, None, paths_dummy())
    assert "sysctl" not in plan.changes()


def test_all_arp_ignore_3_is_refused_under_interface_scope():
    obs = observed(conf={"all": {"arp_ignore": 3}})
    with pytest.raises(SaltInvocationError, match="max\\(all, interface\\) = 3"):
        rs.plan_changes(spec([VIP]), obs, None, paths_dummy())


def test_scope_all_writes_conf_all_and_warns():
    plan = rs.plan_changes(spec([VIP], scope="all"), observed(), None, paths_dummy())
    assert {a.target for a in plan.actions if a.kind == "sysctl"} == {
        "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.all.arp_announce",
    }
    assert any("veth" in w for w in plan.warnings)


def test_vip_on_a_nic_is_refused():
    obs = observed(extra_addrs=[rs.Addr(ip(VIP), 24, ETH0)])
    with pytest.raises(SaltInvocationError, match="configured on eth0"):
        rs.plan_changes(spec([VIP]), obs, None, paths_dummy())


def test_wide_prefix_on_lo_is_replaced_by_a_host_route():
    obs = observed(
        conf={"eth0": {"arp_ignore": 1, "arp_announce": 2}},
        extra_addrs=[rs.Addr(ip(VIP), 24, LO)],
    )
    plan = rs.plan_changes(spec([VIP]), obs, None, paths_dummy())
    assert kinds(plan) == [("addr_del", f"{VIP}/24 dev lo"), ("addr_add", f"{VIP}/32 dev lo")]


def test_existing_vip_is_adopted_and_reported():
    obs = observed(
        conf={"eth0": {"arp_ignore": 1, "arp_announce": 2}},
        extra_addrs=[rs.Addr(ip(VIP), 32, LO)],
    )
    plan = rs.plan_changes(spec([VIP]), obs, None, paths_dummy())
    assert plan.changes() == {
        "address": {f"{VIP}/32 dev lo": {"old": "present, unmanaged", "new": "present, managed"}}
    }
    # once recorded, nothing more to do
    again = rs.plan_changes(spec([VIP]), obs, plan.record, paths_dummy())
    assert again.changes() == {}


def converged(vips, conf=None):
    """The observation after a successful run."""
    return observed(
        conf=conf or {"eth0": {"arp_ignore": 1, "arp_announce": 2}},
        extra_addrs=[rs.Addr(ip(v), 32 if ":" not in v else 128, LO) for v in vips],
    )


def test_removal_deletes_the_vip_before_relaxing():
    first = rs.plan_changes(spec([VIP]), observed(), None, paths_dummy())
    plan = rs.plan_changes(spec([]), converged([VIP]), first.record, paths_dummy())
    assert kinds(plan) == [
        ("addr_del", f"{VIP}/32 dev lo"),
        ("sysctl", "net.ipv4.conf.eth0.arp_announce"),
        ("sysctl", "net.ipv4.conf.eth0.arp_ignore"),
    ]
    assert plan.changes()["sysctl"]["net.ipv4.conf.eth0.arp_ignore"] == {"old": 1, "new": 0}
    assert plan.record["sysctl"] == {} and plan.record["vips"] == {}


def test_relax_restores_the_value_found_and_waits_for_the_last_vip():
    obs = observed(conf={"eth0": {"arp_announce": 1}})
    first = rs.plan_changes(spec([VIP, "198.51.100.101"]), obs, None, paths_dummy())
    after = converged([VIP, "198.51.100.101"])
    one_left = rs.plan_changes(spec([VIP]), after, first.record, paths_dummy())
    assert kinds(one_left) == [("addr_del", "198.51.100.101/32 dev lo")], "still needed by VIP"
    none_left = rs.plan_changes(spec([]), converged([VIP]), one_left.record, paths_dummy())
    assert none_left.changes()["sysctl"]["net.ipv4.conf.eth0.arp_announce"] == {
        "old": 2,
        "new": 1,
    }


def test_a_value_changed_by_someone_else_is_not_relaxed():
    first = rs.plan_changes(spec([VIP]), observed(), None, paths_dummy())
    obs = converged([VIP], conf={"eth0": {"arp_ignore": 2, "arp_announce": 2}})
    plan = rs.plan_changes(spec([]), obs, first.record, paths_dummy())
    relaxed = {a.target for a in plan.actions if a.kind == "sysctl"}
    assert relaxed == {"net.ipv4.conf.eth0.arp_announce"}
    assert any("someone changed it" in w for w in plan.warnings)


def test_unmanaged_addresses_are_never_removed():
    first = rs.plan_changes(spec([VIP]), observed(), None, paths_dummy())
    obs = converged([VIP, "203.0.113.50"])
    plan = rs.plan_changes(spec([]), obs, first.record, paths_dummy())
    assert [t for k, t in kinds(plan) if k == "addr_del"] == [f"{VIP}/32 dev lo"]


def test_non_exclusive_apply_keeps_other_managed_vips():
    first = rs.plan_changes(spec([VIP]), observed(), None, paths_dummy())
    plan = rs.plan_changes(
        spec(["198.51.100.101"]), converged([VIP]), first.record, paths_dummy(), exclusive=False
    )
    assert [k for k, _ in kinds(plan)] == ["addr_add"]
    assert set(plan.record["vips"]) == {VIP, "198.51.100.101"}


def test_switching_scope_raises_the_new_before_relaxing_the_old():
    first = rs.plan_changes(spec([VIP]), observed(), None, paths_dummy())
    plan = rs.plan_changes(spec([VIP], scope="all"), converged([VIP]), first.record,
                           paths_dummy())
    targets = [a.target for a in plan.actions if a.kind == "sysctl"]
    assert targets[:2] == ["net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce"]
    assert set(targets[2:]) == {"net.ipv4.conf.eth0.arp_ignore", "net.ipv4.conf.eth0.arp_announce"}


def test_persisted_files(tmp_path):
    p = paths(tmp_path)
    plan = rs.plan_changes(spec([VIP, "2001:db8::100"], persist=True, label="lo:vip"),
                           observed(), None, p)
    files = plan.changes()["file"]
    assert files[p["sysctl_file"]]["new"].endswith(
        "net.ipv4.conf.eth0.arp_announce = 2\nnet.ipv4.conf.eth0.arp_ignore = 1\n"
    )
    vips = files[p["vip_file"]]["new"].splitlines()[-2:]
    assert vips == [
        f"address replace {VIP}/32 dev lo label lo:vip",
        "address replace 2001:db8::100/128 dev lo nodad preferred_lft 0",
    ]
    unit = files[p["unit_file"]]["new"]
    execs = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert execs == [
        f"ExecStart=/sbin/sysctl -q -e -p {p['sysctl_file']}",
        f"ExecStart=/sbin/ip -force -batch {p['vip_file']}",
    ], "sysctls strictly before VIPs"
    wants = str(tmp_path / "unit" / "sysinit.target.wants" / "lvs-realserver.service")
    assert files[wants] == {"old": None, "new": f"-> {p['unit_file']}"}


def test_bad_arguments_name_the_key():
    with pytest.raises(SaltInvocationError, match="vips:0: '10.0.0.300' is not an IP"):
        rs.make_spec(["10.0.0.300"])
    with pytest.raises(SaltInvocationError, match="vips:0: .* has a prefix"):
        rs.make_spec(["198.51.100.100/24"])
    with pytest.raises(SaltInvocationError, match="vips:0:label"):
        rs.make_spec([VIP], label="eth0:x")
    with pytest.raises(SaltInvocationError, match="scope: 'some'"):
        rs.make_spec([VIP], scope="some")
    with pytest.raises(SaltInvocationError, match="interfaces: 'eth9' does not exist"):
        rs.plan_changes(spec([VIP], interfaces=["eth9"]), observed(), None, paths_dummy())
    with pytest.raises(SaltInvocationError, match="device 'tunl0' does not exist.*ipip"):
        rs.plan_changes(spec([{"address": VIP, "device": "tunl0"}]), observed(), None,
                        paths_dummy())


# ---------------------------------------------------------------------------------------------
# audit


@pytest.mark.parametrize(
    "all_value,nic_value,answers",
    [(0, 0, True), (0, 1, False), (1, 0, False), (0, 2, False), (3, 0, True), (0, 3, True),
     (0, 5, True), (0, 8, False), (8, 0, False)],
)
def test_would_answer_uses_the_max_of_all_and_the_nic(all_value, nic_value, answers):
    obs = converged([VIP], conf={"all": {"arp_ignore": all_value},
                                 "eth0": {"arp_ignore": nic_value, "arp_announce": 2}})
    assert rs.would_answer(ip(VIP), "eth0", obs) is answers


@pytest.mark.parametrize("all_value,nic_value,leaks",
                         [(0, 0, True), (1, 0, True), (0, 2, False), (2, 0, False)])
def test_would_leak(all_value, nic_value, leaks):
    obs = converged([VIP], conf={"all": {"arp_announce": all_value},
                                 "eth0": {"arp_ignore": 1, "arp_announce": nic_value}})
    assert rs.would_leak(ip(VIP), "eth0", obs) is leaks
    # announce 1 keeps the VIP only when it lies in the NIC's subnet: not so for eth1
    obs1 = converged([VIP], conf={"eth1": {"arp_announce": 1}})
    assert rs.would_leak(ip(VIP), "eth1", obs1) is False


def test_audit_of_the_classic_broken_setup():
    obs = converged([VIP], conf={"lo": {"arp_ignore": 1, "arp_announce": 2}})
    report = rs.audit_observed([ip(VIP)], obs)
    assert report["ok"] is False
    errors = {(f["interface"], f["message"].split()[1]) for f in report["findings"]
              if f["severity"] == "error"}
    assert errors == {("eth0", "answers"), ("eth0", "may")}
    infos = [f for f in report["findings"] if f["severity"] == "info"]
    assert {f["interface"] for f in infos} == {"lo"} and all("no effect" in f["message"]
                                                             for f in infos)
    eth1 = [f for f in report["findings"] if f["interface"] == "eth1"]
    assert eth1 and all(f["severity"] == "warning" for f in eth1), "eth1 does not face the VIP"
    for f in report["findings"]:
        assert set(f) == {"severity", "vip", "interface", "message", "fix"} and f["fix"]
    assert report["vips"][VIP]["held_on"] == [{"interface": "lo", "prefixlen": 32,
                                               "label": None}]
    assert report["interfaces"]["eth0"]["answers_arp_for"] == [VIP]


def test_audit_of_a_fixed_host_is_ok():
    obs = converged([VIP], conf={"eth0": {"arp_ignore": 1, "arp_announce": 2},
                                 "eth1": {"arp_ignore": 1, "arp_announce": 2}})
    report = rs.audit_observed([ip(VIP)], obs)
    assert report["ok"] is True and report["findings"] == []


def test_audit_names_wide_prefix_default_and_arp_ignore_8():
    obs = observed(
        conf={"default": {"arp_ignore": 1}, "all": {"arp_announce": 2},
              "eth0": {"arp_ignore": 8}, "eth1": {"arp_ignore": 1}},
        extra_addrs=[rs.Addr(ip(VIP), 24, LO)],
    )
    report = rs.audit_observed([ip(VIP)], obs)
    messages = [(f["severity"], f["interface"], f["message"]) for f in report["findings"]]
    assert any(s == "error" and i == "lo" and "whole /24 local" in m for s, i, m in messages)
    assert any(s == "warning" and i == "eth0" and "is 8" in m for s, i, m in messages)
    assert not any(i == "default" for s, i, m in messages), "every NIC is already >= default"
    obs.conf["eth1"]["arp_ignore"] = 0
    report = rs.audit_observed([ip(VIP)], obs)
    assert any(f["interface"] == "default" and "only seeds" in f["message"]
               for f in report["findings"])


def test_audit_of_a_missing_vip_and_of_a_vip_on_a_nic():
    report = rs.audit_observed([ip(VIP)], observed())
    assert [f["severity"] for f in report["findings"]] == ["warning"]
    assert "not configured" in report["findings"][0]["message"]
    obs = observed(conf={"eth0": {"arp_ignore": 1, "arp_announce": 2}},
                   extra_addrs=[rs.Addr(ip(VIP), 24, ETH0)])
    report = rs.audit_observed([ip(VIP)], obs)
    assert any(f["severity"] == "error" and "an ARP interface" in f["message"]
               for f in report["findings"])
    assert report["ok"] is False


# ---------------------------------------------------------------------------------------------
# TUN real servers


TUNL0 = 5


def tun_observed(rp_all=1, up=False, vip_held=False):
    links = {
        "lo": rs.Link(LO, "lo", rs.IFF_LOOPBACK | rs.IFF_UP, 772),
        "eth0": rs.Link(ETH0, "eth0", rs.IFF_UP, rs.ARPHRD_ETHER),
        "tunl0": rs.Link(TUNL0, "tunl0", rs.IFF_NOARP | (rs.IFF_UP if up else 0), 768),
    }
    obs = observed(links=links, conf={"all": {"rp_filter": rp_all}, "tunl0": {"rp_filter": 0}})
    obs.addrs = [a for a in obs.addrs if a.index != ETH1]
    if vip_held:
        obs.addrs.append(rs.Addr(ip("203.0.113.100"), 32, TUNL0))
        obs.conf["tunl0"]["rp_filter"] = 2
        obs.conf["eth0"].update(arp_ignore=1, arp_announce=2)
        obs.links["tunl0"] = rs.Link(TUNL0, "tunl0", rs.IFF_NOARP | rs.IFF_UP, 768)
    return obs


def test_tun_vip_brings_tunl0_up_and_loosens_rp_filter_before_the_vip():
    vip = {"address": "203.0.113.100", "device": "tunl0"}
    plan = rs.plan_changes(spec([vip]), tun_observed(), None, paths_dummy())
    steps = kinds(plan)
    assert steps.index(("link", "tunl0")) < steps.index(("addr_add", "203.0.113.100/32 dev tunl0"))
    assert steps.index(("sysctl", "net.ipv4.conf.tunl0.rp_filter")) < steps.index(
        ("addr_add", "203.0.113.100/32 dev tunl0"))
    changes = plan.changes()
    assert changes["sysctl"]["net.ipv4.conf.tunl0.rp_filter"] == {"old": 0, "new": 2}
    assert "net.ipv4.conf.all.rp_filter" not in changes["sysctl"], "conf/all is never touched"
    # the VIP is not on eth0's subnet: eth0 still gets the ARP suppression (same segment)
    assert "net.ipv4.conf.eth0.arp_ignore" in changes["sysctl"]
    # removal: VIP first, then rp_filter back
    after = rs.plan_changes(spec([]), tun_observed(vip_held=True), plan.record, paths_dummy())
    steps = kinds(after)
    assert steps[0] == ("addr_del", "203.0.113.100/32 dev tunl0")
    assert ("sysctl", "net.ipv4.conf.tunl0.rp_filter") in steps[1:]


def test_tun_with_loose_or_off_rp_filter_needs_no_change():
    vip = {"address": "203.0.113.100", "device": "tunl0"}
    for rp_all in (0, 2):
        plan = rs.plan_changes(spec([vip]), tun_observed(rp_all=rp_all, up=True), None,
                               paths_dummy())
        assert "net.ipv4.conf.tunl0.rp_filter" not in plan.changes().get("sysctl", {})


def test_missing_tunl0_is_predicted_in_test_mode():
    obs = observed()
    tun_spec = spec([{"address": "203.0.113.100", "device": "tunl0"}])
    synthetic, changes = rs.ensure_tunnel_devices(tun_spec, obs, test=True)
    assert changes == {"kmod": {"ipip": {"old": "not loaded", "new": "loaded (tunl0)"}}}
    plan = rs.plan_changes(tun_spec, synthetic, None, paths_dummy())
    assert ("link", "tunl0") in kinds(plan)
