"""The lvs_realserver beacon's pure parts: what counts as drift (the same rules as the state),
when an event is sent (once when drift appears or grows, once when it clears, reminders), the
configuration check and the signature. No kernel needed; the kernel path is in
tests/integration/test_remediation.py and benchmarks/beacon.py."""

import base64
import ipaddress

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.loadmod import load

pytestmark = pytest.mark.unit

rs = load("modules", "lvs_realserver", salt={}, pillar={}, opts={"id": "rs1"})
beacon = load("beacons", "lvs_realserver", salt={}, context={}, opts={"id": "rs1"})
remediate = load("runners", "lvs_remediate", opts={})
ip = ipaddress.ip_address

LO, ETH0, ETH1, TUNL0 = 1, 2, 3, 4
VIP = "198.51.100.100"
VIP6 = "2001:db8::100"
CONF = "/proc/sys/net/ipv4/conf"


def observed(extra_links=(), extra_addrs=(), vips_on_lo=(VIP, VIP6)):
    links = {
        "lo": rs.Link(LO, "lo", rs.IFF_LOOPBACK | rs.IFF_UP, 772),
        "eth0": rs.Link(ETH0, "eth0", rs.IFF_UP, rs.ARPHRD_ETHER),
        "eth1": rs.Link(ETH1, "eth1", rs.IFF_UP, rs.ARPHRD_ETHER),
    }
    for link in extra_links:
        links[link.name] = link
    addrs = [
        rs.Addr(ip("127.0.0.1"), 8, LO),
        rs.Addr(ip("198.51.100.11"), 24, ETH0),
        rs.Addr(ip("203.0.113.11"), 24, ETH1),
        *[rs.Addr(ip(v), 32 if ip(v).version == 4 else 128, LO) for v in vips_on_lo],
        *extra_addrs,
    ]
    return rs.Observed(links=links, addrs=addrs, conf={})


def record(vips=(VIP, VIP6), device="lo", **options):
    return {"vips": {v: {"device": device, "label": None} for v in vips},
            "options": {"scope": "interfaces", "interfaces": [], **options}}


def values(**conf):
    """{path: value} as read from /proc/sys: all 0 unless given, e.g. eth0=(1, 2)."""
    out = {}
    for name in ("all", "eth0", "eth1", "eth2", "tunl0"):
        ignore, announce = conf.get(name, (0, 0))
        out[f"{CONF}/{name}/arp_ignore"] = ignore
        out[f"{CONF}/{name}/arp_announce"] = announce
        out[f"{CONF}/{name}/rp_filter"] = conf.get(f"{name}_rp", 0)
    return out


def kinds(findings):
    return sorted((f["kind"], f.get("interface") or f.get("device") or f.get("target"),
                   f.get("vip")) for f in findings)


def checks_for(rec, obs):
    return beacon.sysctl_checks(rec, obs, rs.arp_facing_interfaces)


# --------------------------------------------------------------------------------------------
# the same rules as the state


def test_quiet_values_are_the_modules():
    assert beacon.QUIET_ARP_IGNORE == rs.QUIET_ARP_IGNORE
    assert beacon.WANT_ARP_ANNOUNCE == rs.WANT_ARP_ANNOUNCE


def test_arp_facing_nics_are_the_states_and_ipv6_needs_none():
    checks = checks_for(record(), observed())
    assert checks == {"arp": {"eth0": [VIP]}, "rp_filter": [], "missing": []}
    paths = beacon.sysctl_paths(checks)
    assert paths == [f"{CONF}/all/arp_ignore", f"{CONF}/all/arp_announce",
                     f"{CONF}/eth0/arp_ignore", f"{CONF}/eth0/arp_announce"]


def test_a_new_nic_facing_the_vip_network_is_watched_and_its_defaults_are_drift():
    eth2 = rs.Link(5, "eth2", rs.IFF_UP, rs.ARPHRD_ETHER)
    obs = observed(extra_links=[eth2], extra_addrs=[rs.Addr(ip("198.51.100.21"), 24, 5)])
    checks = checks_for(record(), obs)
    assert checks["arp"] == {"eth0": [VIP], "eth2": [VIP]}
    found = beacon.sysctl_findings(checks, values(eth0=(1, 2), eth2=(0, 0)))
    assert kinds(found) == [("arp_announce", "eth2", None), ("arp_ignore", "eth2", None)]
    assert found[0]["message"].startswith("eth2 answers ARP for 198.51.100.100")


def test_effective_value_is_the_max_of_all_and_the_nic():
    checks = checks_for(record(), observed())
    assert beacon.sysctl_findings(checks, values(eth0=(1, 2))) == []
    assert beacon.sysctl_findings(checks, values(all=(1, 2), eth0=(0, 0))) == []  # wire is right
    assert kinds(beacon.sysctl_findings(checks, values(eth0=(0, 2)))) == [
        ("arp_ignore", "eth0", None)]
    assert kinds(beacon.sysctl_findings(checks, values(eth0=(1, 1)))) == [
        ("arp_announce", "eth0", None)]
    # 3 still answers for global addresses, 4-7 reply: drift even on a "raised" NIC
    for bad in (3, 4, 7):
        found = beacon.sysctl_findings(checks, values(all=(bad, 2), eth0=(1, 2)))
        assert kinds(found) == [("arp_ignore", "eth0", None)], bad
        assert found[0]["value"] == bad
    assert beacon.sysctl_findings(checks, values(eth0=(8, 2))) == []


def test_scope_all_and_explicit_interfaces():
    checks = checks_for(record(scope="all"), observed())
    assert checks["arp"] == {"all": [VIP]}
    assert kinds(beacon.sysctl_findings(checks, values(all=(0, 2)))) == [
        ("arp_ignore", "all", None)]
    checks = checks_for(record(interfaces=["eth1", "eth9"]), observed())
    assert checks["arp"] == {"eth1": [VIP]}
    found = beacon.sysctl_findings(checks, values(eth1=(1, 2)))
    assert kinds(found) == [("interface_missing", "eth9", None)]


def test_a_vanished_interface_is_not_drift_until_netlink_says_so():
    checks = checks_for(record(), observed())
    vals = values()
    vals[f"{CONF}/eth0/arp_ignore"] = None
    assert beacon.sysctl_findings(checks, vals) == []


def test_vips_missing_with_a_wide_prefix_or_on_a_nic():
    assert beacon.static_findings(record(), observed()) == []
    found = beacon.static_findings(record(), observed(vips_on_lo=(VIP6,)))
    assert kinds(found) == [("vip_missing", "lo", VIP)]
    wide = observed(vips_on_lo=(VIP6,), extra_addrs=[rs.Addr(ip(VIP), 24, LO)])
    assert kinds(beacon.static_findings(record(), wide)) == [
        ("vip_missing", "lo", VIP), ("vip_prefix", "lo", VIP)]
    both = observed(extra_addrs=[rs.Addr(ip(VIP), 24, LO)])
    assert kinds(beacon.static_findings(record(), both)) == [("vip_prefix", "lo", VIP)]
    on_nic = observed(extra_addrs=[rs.Addr(ip(VIP), 24, ETH0)])
    assert kinds(beacon.static_findings(record(), on_nic)) == [("vip_on_nic", "eth0", VIP)]


def test_tunnel_device_down_missing_or_strict_rp_filter():
    rec = record(vips=(VIP,), device="tunl0")
    down = rs.Link(TUNL0, "tunl0", 0, 768)
    obs = observed(extra_links=[down], vips_on_lo=(),
                   extra_addrs=[rs.Addr(ip(VIP), 32, TUNL0)])
    assert kinds(beacon.static_findings(rec, obs)) == [("device_down", "tunl0", VIP)]
    assert kinds(beacon.static_findings(rec, observed(vips_on_lo=()))) == [
        ("device_missing", "tunl0", VIP)]
    checks = checks_for(rec, obs)
    assert checks["rp_filter"] == ["tunl0"]
    assert beacon.sysctl_findings(checks, values(eth0=(1, 2), tunl0_rp=2)) == []
    assert beacon.sysctl_findings(checks, values(eth0=(1, 2), all_rp=2, tunl0_rp=1)) == []
    found = beacon.sysctl_findings(checks, values(eth0=(1, 2), tunl0_rp=1))
    assert kinds(found) == [("rp_filter", "tunl0", None)]


def test_rule_methods_check_no_sysctls_and_redirect_holds_no_vip():
    for method in ("nftables", "arptables"):
        checks = checks_for(record(arp_method=method), observed())
        assert checks["arp"] == {}
        assert beacon.static_findings(record(arp_method=method), observed()) == []
    rec = record(arp_method="redirect")
    assert checks_for(rec, observed())["arp"] == {}
    assert beacon.static_findings(rec, observed(vips_on_lo=())) == []
    assert kinds(beacon.static_findings(rec, observed(vips_on_lo=(VIP,)))) == [
        ("vip_held", "lo", VIP)]


def test_rule_findings_from_the_states_plan():
    changes = {
        "nftables": {"table arp saltext_lvs": {"old": None, "new": {"vips": [VIP]}}},
        "iptables": {"iptables nat SALTEXT_LVS": {"old": {"x": 1}, "new": {"x": 2}}},
        "address": {f"{VIP}/32 dev lo": {"old": None, "new": "..."}},
        "file": {"/x": {"old": None, "new": "..."}},
    }
    found = beacon.rule_findings(changes, "nftables")
    assert kinds(found) == [("rules", "iptables nat SALTEXT_LVS", None),
                            ("rules", "table arp saltext_lvs", None)]
    assert "is missing" in found[0]["message"]
    assert beacon.rule_findings({}, "nftables") == []


# --------------------------------------------------------------------------------------------
# when to say what


def drift(*names):
    return [{"kind": "arp_ignore", "interface": n, "message": n} for n in names]


def test_drift_is_reported_once_when_it_appears_and_once_when_it_clears():
    rep = beacon.Reporter()
    assert rep.step([], 0.0, remind=0) is None
    first = rep.step(drift("eth0"), 1.0, remind=0)
    assert first["event"] == "drift" and first["new"] == ["arp_ignore eth0"]
    assert not first["repeat"]
    for t in range(2, 100):
        assert rep.step(drift("eth0"), float(t), remind=0) is None
    cleared = rep.step([], 100.0, remind=0)
    assert cleared == {"event": "clear", "findings": [], "new": [], "repeat": False}
    assert rep.step([], 101.0, remind=0) is None


def test_new_findings_are_reported_a_smaller_drift_is_not():
    rep = beacon.Reporter()
    rep.step(drift("eth0"), 0.0, remind=0)
    grown = rep.step(drift("eth0", "eth1"), 1.0, remind=0)
    assert grown["new"] == ["arp_ignore eth1"] and len(grown["findings"]) == 2
    assert rep.step(drift("eth0"), 2.0, remind=0) is None  # partly repaired: nothing new
    again = rep.step(drift("eth0", "eth1"), 3.0, remind=0)  # back: new again
    assert again["new"] == ["arp_ignore eth1"]


def test_a_persisting_drift_is_resent_every_remind_seconds():
    rep = beacon.Reporter()
    rep.step(drift("eth0"), 0.0, remind=30)
    assert rep.step(drift("eth0"), 29.0, remind=30) is None
    reminder = rep.step(drift("eth0"), 30.0, remind=30)
    assert reminder["repeat"] is True and reminder["new"] == []
    assert rep.step(drift("eth0"), 59.0, remind=30) is None
    assert rep.step(drift("eth0"), 60.0, remind=30)["repeat"] is True
    assert rep.since == 0.0  # the drift is still the one that began at 0


def test_finding_keys_ignore_values():
    a = {"kind": "arp_ignore", "interface": "eth0", "value": 0, "message": "x"}
    b = {"kind": "arp_ignore", "interface": "eth0", "value": 3, "message": "y"}
    assert beacon.finding_key(a) == beacon.finding_key(b) == "arp_ignore eth0"
    assert beacon.finding_key({"kind": "vip_prefix", "device": "lo", "vip": VIP,
                               "prefixlen": 24}) == f"vip_prefix lo {VIP} 24"


# --------------------------------------------------------------------------------------------
# configuration and signature


def test_validate():
    assert beacon.validate([{"interval": 2}, {"disable_during_state_run": True},
                            {"remind": 120}, {"refresh": 60}, {"sign": True}])[0]
    assert beacon.validate([])[0]
    assert not beacon.validate({"interval": 2})[0]
    ok, msg = beacon.validate([{"remind": -1}])
    assert not ok and "remind" in msg
    ok, msg = beacon.validate([{"refresh": "soon"}])
    assert not ok and "refresh" in msg
    ok, msg = beacon.validate([{"sign": "yes"}])
    assert not ok and "sign" in msg
    ok, msg = beacon.validate([{"remidn": 5}])
    assert not ok and "remidn" in msg


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("pki") / "minion.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return path, pub


def test_what_the_beacon_signs_the_runner_verifies(keypair):
    path, pub = keypair
    msg = beacon.auth_message("drift", "rs1", 1764149000.5123456, "0123456789abcdef")
    assert msg == "lvs_realserver|drift|rs1|1764149000.512346|0123456789abcdef"
    sig = beacon.sign(msg, str(path))
    data = {"id": "rs1", "auth": {"msg": msg, "sig": sig}}
    parsed_msg, raw, stamp = remediate.parse_auth(data, "rs1")
    assert parsed_msg == msg and stamp == pytest.approx(1764149000.512346)
    assert remediate.verify_signature(pub, parsed_msg, raw) is True
    assert remediate.verify_signature(pub, msg.replace("rs1", "rs2"), raw) is False
    assert base64.b64decode(sig) == raw


def test_no_key_means_no_signature(tmp_path):
    assert beacon.sign("x", str(tmp_path / "missing.pem")) is None


def test_without_the_execution_module_it_says_so_once(caplog):
    lonely = load("beacons", "lvs_realserver", salt={}, context={}, opts={"id": "rs1"})
    for _ in range(3):
        assert lonely.beacon([]) == []
    assert sum("not loaded" in r.message for r in caplog.records) == 1
