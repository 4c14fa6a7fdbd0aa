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


# ---------------------------------------------------------------------------------------------
# redirect


pillar_mod = load("modules", "lvs_pillar", opts={"id": "rs1"}, pillar={})


def redirect_pillar(**svc_extra):
    return {
        "services": {
            "web": {"vip": VIP, "protocol": "tcp", "ports": [80, 443],
                    "realservers": {"rs1": {"address": RIP}}},
            "dns": {"vip": VIP, "protocol": "udp", "ports": [53],
                    "realservers": {"rs1": {"address": RIP}}},
            **svc_extra,
        },
        "realserver": {"arp_method": "redirect"},
    }


def test_pillar_gives_redirect_the_ports_of_every_service_on_a_vip():
    conf = pillar_mod.realserver("rs1", redirect_pillar())
    assert conf["arp_method"] == "redirect"
    assert conf["vips"][0]["ports"] == ["tcp/80", "tcp/443", "udp/53"]
    spec_ = rs.make_spec(conf["vips"], arp_method="redirect")
    assert spec_.vips[0].ports == (("tcp", 80), ("tcp", 443), ("udp", 53))


@pytest.mark.parametrize("extra,key", [
    ({"fw": {"vip": "198.51.100.102", "protocol": "fwmark", "fwmark": 1,
             "realservers": {"rs1": {"address": RIP}}}}, "lvs:services:fw:protocol: 'fwmark'"),
    ({"tun": {"vip": "203.0.113.100", "ports": [80], "method": "tun",
              "realservers": {"rs1": {"address": RIP}}}}, "lvs:services:tun:method: 'tun'"),
])
def test_redirect_refuses_fwmark_and_tun_services_naming_the_key(extra, key):
    with pytest.raises(SaltInvocationError, match=key):
        pillar_mod.realserver("rs1", redirect_pillar(**extra))
    # another minion that does not serve them is fine
    assert pillar_mod.realserver("rs9", redirect_pillar(**extra))["vips"] == []


def test_redirect_plan_order_from_sysctl_and_back():
    first = rs.plan_changes(spec([VIP]), observed(), None, paths_dummy())
    web = {"address": VIP, "ports": [80]}
    plan = rs.plan_changes(spec([web], arp_method="redirect"), with_rules(converged([VIP])),
                           first.record, paths_dummy())
    assert steps(plan) == [("nftables", "table ip saltext_lvs"), ("addr_del", f"{VIP}/32 dev lo"),
                           ("sysctl", "net.ipv4.conf.eth0.arp_announce"),
                           ("sysctl", "net.ipv4.conf.eth0.arp_ignore")]
    obs = with_rules(observed(), redirect={"ip": {VIP: ["tcp/80"]}, "ip6": None})
    back = rs.plan_changes(spec([VIP]), obs, plan.record, paths_dummy())
    assert steps(back) == [("sysctl", "net.ipv4.conf.eth0.arp_ignore"),
                           ("sysctl", "net.ipv4.conf.eth0.arp_announce"),
                           ("addr_add", f"{VIP}/32 dev lo"), ("nftables", "table ip saltext_lvs")]


def test_parse_redirect_table():
    daddr = {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": VIP}}
    dport = {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": {"set": [80, 443]}}}
    objects = [{"rule": {"chain": "prerouting", "expr": [daddr, dport, {"redirect": None}]}}]
    assert rs.parse_redirect_table(objects, 4) == {VIP: ["tcp/80", "tcp/443"]}
    objects.append({"rule": {"chain": "prerouting", "expr": [daddr, {"accept": None}]}})
    assert rs.parse_redirect_table(objects, 4)["incomplete"] is True


def test_redirect_uses_iptables_where_the_host_has_no_nft():
    obs = observed()
    obs.rules = {"nft": False, "nft_error": "no nft",
                 "iptables": {"binary": "iptables", "available": True, "ip": None, "ip6": None,
                              "jumps": {"ip": False, "ip6": False}}}
    web = {"address": VIP, "ports": [80]}
    plan = rs.plan_changes(spec([web], arp_method="redirect"), obs, None, paths_dummy())
    assert steps(plan) == [("iptables", "iptables nat SALTEXT_LVS")]
    script = plan.actions[0].data["stdin"]
    assert script.splitlines() == [
        "*nat", ":SALTEXT_LVS - [0:0]",
        f"-A SALTEXT_LVS -d {VIP}/32 -p tcp -m tcp --dport 80 -j REDIRECT",
        "-I PREROUTING 1 -j SALTEXT_LVS", "COMMIT"]
    obs.rules["iptables"]["available"] = False
    with pytest.raises(SaltInvocationError, match="needs nftables: no nft \\(or install iptables"):
        rs.plan_changes(spec([web], arp_method="redirect"), obs, None, paths_dummy())


def test_parse_iptables_nat():
    text = "\n".join(["*nat", ":PREROUTING ACCEPT [0:0]", ":SALTEXT_LVS - [0:0]",
                      "-A PREROUTING -j SALTEXT_LVS",
                      f"-A SALTEXT_LVS -d {VIP}/32 -p tcp -m tcp --dport 80 -j REDIRECT",
                      "COMMIT"])
    assert rs.parse_iptables_nat(text, 4) == {VIP: ["tcp/80"]}
    no_jump = text.replace("-A PREROUTING -j SALTEXT_LVS\n", "")
    assert rs.parse_iptables_nat(no_jump, 4)["incomplete"] is True
    assert rs.parse_iptables_nat("*nat\nCOMMIT\n", 4) is None


# ---------------------------------------------------------------------------------------------
# audit: rules, legacy kernels, IPv6 source guard, TUN MTU


def nft_ruleset(drop=True, rewrite=True, table="saltext_lvs"):
    """``nft -j list ruleset arp`` for a table like the module's (or an operator's)."""
    objects = [
        {"table": {"family": "arp", "name": table}},
        {"set": {"family": "arp", "table": table, "name": "vips", "elem": [VIP]}},
        {"chain": {"family": "arp", "table": table, "name": "input", "hook": "input"}},
        {"chain": {"family": "arp", "table": table, "name": "output", "hook": "output"}},
    ]
    daddr = {"match": {"op": "==", "left": {"payload": {"protocol": "arp", "field": "daddr ip"}},
                       "right": "@vips"}}
    saddr = {"match": {"op": "==", "left": {"payload": {"protocol": "arp", "field": "saddr ip"}},
                       "right": "@vips"}}
    oif = {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}}
    if drop:
        objects.append({"rule": {"table": table, "chain": "input",
                                 "expr": [daddr, {"drop": None}]}})
    if rewrite:
        objects.append({"rule": {"table": table, "chain": "output",
                                 "expr": [oif, saddr, {"mangle": {"value": RIP}}]}})
    return objects


def audited(effect, conf=None, **rules):
    obs = converged([VIP], conf=conf or {"eth0": {}, "eth1": {"arp_ignore": 1,
                                                            "arp_announce": 2}})
    obs.rules = {"arp_effect": effect, **rules}
    return rs.audit_observed([ip(VIP)], obs)


def test_audit_agrees_with_rule_methods():
    ok = audited(rs.arp_effect_from_nft(nft_ruleset()))
    assert ok["ok"] is True and ok["findings"] == [], ok["findings"]
    assert ok["vips"][VIP]["arp_rules"] == ["nft table arp saltext_lvs chain input",
                                             "nft table arp saltext_lvs chain output"]
    # the classic half-done rule method: a drop without the output rewrite leaks
    half = audited(rs.arp_effect_from_nft(nft_ruleset(rewrite=False)))
    errors = [f for f in half["findings"] if f["severity"] == "error"]
    assert [(f["interface"], "a rule method needs both" in f["message"]) for f in errors] == [
        ("eth0", True)]
    # no drop, but the rewrite: the reply's sender is rewritten too, so the VIP is not
    # answered on the wire; the audit warns instead of reporting an answer
    half = audited(rs.arp_effect_from_nft(nft_ruleset(drop=False)))
    assert half["ok"] is True
    assert [f["severity"] for f in half["findings"]] == ["warning"]
    assert "only the output rule keeps the VIP out of the reply" in half["findings"][0]["message"]
    # neither: it answers and leaks
    none = audited(rs.arp_effect_from_nft(nft_ruleset(drop=False, rewrite=False)))
    assert {f["message"].split()[1] for f in none["findings"] if f["severity"] == "error"} == {
        "answers", "may"}


def test_audit_reads_legacy_arptables_and_operator_chains():
    text = "\n".join(["*filter", ":INPUT ACCEPT", ":OUTPUT ACCEPT", ":LVS_RS_IN_A -",
                      ":LVS_RS_OUT_A -", "-A INPUT -j LVS_RS_IN_A", "-A OUTPUT -j LVS_RS_OUT_A",
                      f"-A LVS_RS_IN_A -j DROP -d {VIP} --opcode 1",
                      f"-A LVS_RS_OUT_A -j mangle -o eth0 -s {VIP} --mangle-ip-s {RIP}",
                      f"-A LVS_RS_OUT_A -j DROP -s {VIP}"])
    effect = rs.arp_effect_from_arptables_save(text)
    assert rs.rule_covers(effect, "drop", VIP, "eth0") == "arptables chain LVS_RS_IN_A"
    assert rs.rule_covers(effect, "rewrite", VIP, "eth0") == "arptables chain LVS_RS_OUT_A"
    assert audited(effect)["ok"] is True
    # an unreferenced chain does nothing
    orphan = text.replace("-A INPUT -j LVS_RS_IN_A\n", "")
    assert rs.rule_covers(rs.arp_effect_from_arptables_save(orphan), "drop", VIP, "eth0") is None


def test_audit_of_a_redirected_vip_is_info_not_a_warning():
    obs = observed()
    obs.rules = {"arp_effect": {}, "redirected": {VIP: "table ip saltext_lvs"}}
    report = rs.audit_observed([ip(VIP)], obs)
    assert report["ok"] is True
    assert [(f["severity"], "redirected by table ip saltext_lvs" in f["message"])
            for f in report["findings"]] == [("info", True)]


def test_audit_reports_hidden_and_noarp_read_only():
    obs = converged([VIP])
    obs.legacy = {"hidden": {"all": 1, "eth0": 0, "lo": 1}, "noarp": True}
    report = rs.audit_observed([ip(VIP)], obs)
    infos = [f for f in report["findings"] if f["severity"] == "info"]
    assert any("'hidden' patch" in f["message"] and "hidden=1 on all, lo" in f["message"]
               for f in infos)
    assert any("noarp kernel module" in f["message"] for f in infos)
    assert report["ok"] is True
    assert rs.legacy_findings({"hidden": {}, "noarp": False}) == []


def test_audit_warns_about_a_preferred_ipv6_vip():
    vip6 = "2001:db8::100"
    obs = observed(extra_addrs=[rs.Addr(ip(vip6), 128, LO)])
    report = rs.audit_observed([ip(vip6)], obs)
    assert [f["severity"] for f in report["findings"]] == ["warning"]
    assert "preferred_lft 0" in report["findings"][0]["fix"]
    obs = observed(extra_addrs=[rs.Addr(ip(vip6), 128, LO, flags=rs.IFA_F_DEPRECATED)])
    assert rs.audit_observed([ip(vip6)], obs)["findings"] == []


def test_audit_gives_mtu_advice_for_tun_vips():
    links = {
        "lo": rs.Link(LO, "lo", rs.IFF_LOOPBACK | rs.IFF_UP, 772, 65536),
        "eth0": rs.Link(2, "eth0", rs.IFF_UP, rs.ARPHRD_ETHER, 1500),
        "tunl0": rs.Link(5, "tunl0", rs.IFF_NOARP | rs.IFF_UP, 768, 1480),
    }
    obs = observed(links=links, conf={"eth0": {"arp_ignore": 1, "arp_announce": 2}})
    obs.addrs = [a for a in obs.addrs if a.index != 3] + [rs.Addr(ip(VIP), 32, 5)]
    report = rs.audit_observed([ip(VIP)], obs)
    mtu = [f for f in report["findings"] if f["interface"] == "tunl0"]
    assert len(mtu) == 1 and mtu[0]["severity"] == "info"
    assert "becomes 1520 bytes" in mtu[0]["message"] and "tunl0 MTU 1480" in mtu[0]["message"]
    assert "--set-mss 1440" in mtu[0]["fix"]


# ---------------------------------------------------------------------------------------------
# a dedicated interface instead of lo


def test_a_missing_dedicated_interface_is_predicted_as_a_noarp_dummy():
    dspec = spec([{"address": VIP, "device": "lvsvip0"}])
    synthetic, changes = rs.ensure_tunnel_devices(dspec, observed(), test=True)
    assert changes == {"link": {"lvsvip0": {"old": None, "new": "dummy, NOARP, up"}}}
    link = synthetic.links["lvsvip0"]
    assert not link.arp_capable and link.flags & rs.IFF_UP
    plan = rs.plan_changes(dspec, synthetic, None, paths_dummy(), created=["lvsvip0"])
    assert steps(plan) == [("sysctl", "net.ipv4.conf.eth0.arp_ignore"),
                           ("sysctl", "net.ipv4.conf.eth0.arp_announce"),
                           ("addr_add", f"{VIP}/32 dev lvsvip0")], "no rp_filter on a dummy"
    assert plan.record["devices"] == {"lvsvip0": "dummy"}
    with pytest.raises(SaltInvocationError, match="not a valid interface name"):
        rs.ensure_tunnel_devices(spec([{"address": VIP, "device": "a/b"}]), observed(), True)


def test_the_dummy_goes_after_its_last_vip():
    links = {**observed().links, "lvsvip0": rs.Link(9, "lvsvip0", rs.IFF_NOARP | rs.IFF_UP,
                                                    rs.ARPHRD_ETHER)}
    obs = observed(links=links, conf={"eth0": {"arp_ignore": 1, "arp_announce": 2}},
                   extra_addrs=[rs.Addr(ip(VIP), 32, 9)])
    record = {"version": 1, "vips": {VIP: {"device": "lvsvip0", "label": None}},
              "sysctl": {}, "devices": {"lvsvip0": "dummy"}}
    plan = rs.plan_changes(spec([]), obs, record, paths_dummy())
    assert steps(plan) == [("addr_del", f"{VIP}/32 dev lvsvip0"), ("link_del", "lvsvip0")]
    assert plan.changes()["link"] == {"lvsvip0": {"old": "dummy", "new": None}}
    assert "devices" not in plan.record


def test_boot_file_creates_the_dummy_before_its_vips():
    text = rs.render_vip_file([rs.Vip(ip(VIP), "lvsvip0")], ["lvsvip0"])
    assert text.splitlines()[-3:] == ["link add name lvsvip0 type dummy",
                                      "link set dev lvsvip0 up",
                                      f"address replace {VIP}/32 dev lvsvip0"]


def test_pillar_places_dr_vips_on_the_dedicated_device():
    lvs = redirect_pillar()
    lvs["realserver"] = {"device": "lvsvip0"}
    assert {v["device"] for v in pillar_mod.realserver("rs1", lvs)["vips"]} == {"lvsvip0"}
    lvs["realserver"] = {"device": "tunl0"}
    with pytest.raises(SaltInvocationError, match="lvs:realserver:device: 'tunl0'"):
        pillar_mod.realserver("rs1", lvs)
