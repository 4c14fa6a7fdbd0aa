"""The rule methods (nftables, arptables, redirect) and switching between methods, against a real
kernel: what the kernel holds afterwards, the changes reported, test mode, idempotency."""

import json
import pathlib

import pytest

pytestmark = pytest.mark.functional

VIP = "198.51.100.100"
VIP2 = "198.51.100.101"
VIP6 = "2001:db8::100"
RIP = "198.51.100.11"


def arp_table(rs):
    """Our arp table as nft prints it, or None."""
    proc = rs.ns.run("nft", "-j", "list", "table", "arp", "saltext_lvs", check=False)
    if proc.returncode:
        return None
    return json.loads(proc.stdout)["nftables"]


def nft_text(rs, family):
    proc = rs.ns.run("nft", "list", "table", family, "saltext_lvs", check=False)
    return proc.stdout if proc.returncode == 0 else None


def nft_file(rs):
    """Where the module keeps the nft rules when nft_file is not configured: next to vip_file."""
    return str(pathlib.Path(rs.paths["vip_file"]).parent / "realserver.nft")


def set_elements(objects):
    for obj in objects:
        if "set" in obj and obj["set"]["name"] == "vips":
            return sorted(obj["set"].get("elem", []))
    return None


def test_nftables_from_scratch_then_nothing_to_do(realserver):
    rs = realserver()
    before = rs.snapshot()
    predicted = rs.present(vips=[VIP, VIP6], arp_method="nftables", persist=True, test=True)
    assert rs.snapshot() == before and arp_table(rs) is None, "test=True touched the host"
    done = rs.present(vips=[VIP, VIP6], arp_method="nftables", persist=True)
    assert done["result"] is True, done["comment"]
    assert done["changes"] == predicted["changes"]
    assert done["changes"]["nftables"] == {
        "table arp saltext_lvs": {"old": None,
                                  "new": {"vips": [VIP], "rewrite": {"eth0": RIP}}}}
    assert "sysctl" not in done["changes"], "the nftables method leaves the sysctls alone"
    assert rs.arp("eth0") == (0, 0) and rs.arp("all") == (0, 0)
    assert set_elements(arp_table(rs)) == [VIP]
    assert f"{VIP}/32" in rs.addrs() and f"{VIP6}/128" in rs.addrs()
    text = nft_text(rs, "arp")
    assert 'oifname "eth0" arp saddr ip @vips arp saddr ip set 198.51.100.11' in text
    assert "arp operation request arp daddr ip @vips drop" in text
    again = rs.present(vips=[VIP, VIP6], arp_method="nftables", persist=True)
    assert again["result"] is True and again["changes"] == {}
    quiet = rs.present(vips=[VIP, VIP6], arp_method="nftables", persist=True, test=True)
    assert quiet["result"] is True and quiet["changes"] == {}
    # the boot files: the rules before the VIPs, no sysctl drop-in
    files = rs.files()
    unit = next(t for p, t in files.items() if p.endswith("lvs-realserver.service")
                and not t.startswith("->"))
    execs = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert execs == [f"/usr/sbin/nft -f {nft_file(rs)}",
                     f"/sbin/ip -force -batch {rs.paths['vip_file']}"]
    assert not any(p.endswith("90-lvs-realserver.conf") for p in files)


def test_nftables_leaves_the_operators_rules_alone(realserver):
    rs = realserver()
    operator = "table arp mine {\n chain input { type filter hook input priority 10; }\n}\n"
    rs.ns.run("nft", "-f", "-", input=operator)
    rs.ns.run("nft", "add", "table", "ip", "other")
    rs.present(vips=[VIP], arp_method="nftables", persist=False)
    rs.present(vips=[VIP, VIP2], arp_method="nftables", persist=False)
    assert set_elements(arp_table(rs)) == [VIP, VIP2]
    rs.absent()
    assert arp_table(rs) is None
    tables = rs.ns.run("nft", "list", "tables").stdout
    assert "table arp mine" in tables and "table ip other" in tables


def test_a_tampered_table_is_put_back(realserver):
    rs = realserver()
    rs.present(vips=[VIP], arp_method="nftables", persist=False)
    rs.ns.run("nft", "flush", "chain", "arp", "saltext_lvs", "input")
    fixed = rs.present(vips=[VIP], arp_method="nftables", persist=False)
    assert fixed["changes"]["nftables"]["table arp saltext_lvs"]["old"]["incomplete"] is True
    assert "arp daddr ip @vips drop" in nft_text(rs, "arp")
    assert rs.present(vips=[VIP], arp_method="nftables", persist=False)["changes"] == {}


def test_switching_sysctl_to_nftables_and_back(realserver):
    rs = realserver()
    rs.present(vips=[VIP], persist=False)
    assert rs.arp("eth0") == (1, 2)
    to_nft = rs.module("apply", vips=[VIP], arp_method="nftables", persist=False,
                       exclusive=True, **rs.paths)
    journal = to_nft["journal"]
    assert journal.index("nftables table arp saltext_lvs") < journal.index(
        "sysctl net.ipv4.conf.eth0.arp_ignore=0"), journal
    assert rs.arp("eth0") == (0, 0) and arp_table(rs) is not None
    assert f"{VIP}/32" in rs.addrs()
    back = rs.module("apply", vips=[VIP], arp_method="sysctl", persist=False, exclusive=True,
                     **rs.paths)
    journal = back["journal"]
    assert journal.index("sysctl net.ipv4.conf.eth0.arp_ignore=1") < journal.index(
        "nftables table arp saltext_lvs"), journal
    assert rs.arp("eth0") == (1, 2) and arp_table(rs) is None
    assert back["changes"]["nftables"]["table arp saltext_lvs"]["new"] is None


def test_adding_and_removing_vips_keeps_every_held_vip_covered(realserver):
    rs = realserver()
    rs.present(vips=[VIP], arp_method="nftables", persist=False)
    swap = rs.module("apply", vips=[VIP2], arp_method="nftables", persist=False,
                     exclusive=True, **rs.paths)
    j = swap["journal"]
    # the table first grows to cover both, then VIP2 comes, VIP goes, and the table shrinks
    assert j == ["nftables table arp saltext_lvs", f"add {VIP2}/32 dev lo",
                 f"del {VIP}/32 dev lo", "nftables table arp saltext_lvs"], j
    assert set_elements(arp_table(rs)) == [VIP2]


# --------------------------------------------------------------------------------------------
# redirect: no VIP on the host, nat redirect of VIP:port

WEB = {"address": VIP, "ports": [80, "udp/53"]}
WEB6 = {"address": VIP6, "ports": [80]}


def test_redirect_holds_no_vip_and_redirects_each_port(realserver):
    rs = realserver()
    before = rs.snapshot()
    predicted = rs.present(vips=[WEB, WEB6], arp_method="redirect", persist=True, test=True)
    assert rs.snapshot() == before
    done = rs.present(vips=[WEB, WEB6], arp_method="redirect", persist=True)
    assert done["result"] is True, done["comment"]
    assert done["changes"] == predicted["changes"]
    assert done["changes"]["nftables"] == {
        "table ip saltext_lvs": {"old": None, "new": {VIP: ["tcp/80", "udp/53"]}},
        "table ip6 saltext_lvs": {"old": None, "new": {VIP6: ["tcp/80"]}},
    }
    assert "address" not in done["changes"] and "sysctl" not in done["changes"]
    assert rs.addrs() == ["127.0.0.1/8", "::1/128"]
    text = nft_text(rs, "ip")
    assert "ip daddr 198.51.100.100 tcp dport 80 redirect" in text
    assert "ip daddr 198.51.100.100 udp dport 53 redirect" in text
    assert "ip6 daddr 2001:db8::100 tcp dport 80 redirect" in nft_text(rs, "ip6")
    assert rs.present(vips=[WEB, WEB6], arp_method="redirect", persist=True)["changes"] == {}
    unit = next(t for p, t in rs.files().items() if p.endswith("lvs-realserver.service")
                and not t.startswith("->"))
    execs = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert execs == [f"/usr/sbin/nft -f {nft_file(rs)}"], "no VIP list: the host holds none"
    gone = rs.absent()
    assert gone["result"] is True and set(gone["changes"]["nftables"]) == {
        "table ip saltext_lvs", "table ip6 saltext_lvs"}
    assert nft_text(rs, "ip") is None and nft_text(rs, "ip6") is None
    assert {p for p in rs.files() if not p.endswith("state.json")} == set()


def test_switching_sysctl_to_redirect_and_back(realserver):
    rs = realserver()
    rs.present(vips=[VIP], persist=False)
    to = rs.module("apply", vips=[WEB], arp_method="redirect", persist=False, exclusive=True,
                   **rs.paths)
    j = to["journal"]
    # redirect rules in, then the VIP off lo, then the sysctls relaxed
    assert j.index("nftables table ip saltext_lvs") < j.index(f"del {VIP}/32 dev lo") < j.index(
        "sysctl net.ipv4.conf.eth0.arp_ignore=0"), j
    assert rs.arp("eth0") == (0, 0) and f"{VIP}/32" not in rs.addrs()
    back = rs.module("apply", vips=[VIP], arp_method="sysctl", persist=False, exclusive=True,
                     **rs.paths)
    j = back["journal"]
    # suppression, then the VIP, then the redirect out
    assert j.index("sysctl net.ipv4.conf.eth0.arp_ignore=1") < j.index(
        f"add {VIP}/32 dev lo") < j.index("nftables table ip saltext_lvs"), j
    assert nft_text(rs, "ip") is None and f"{VIP}/32" in rs.addrs()


def test_redirect_without_ports_is_refused_naming_the_key(realserver):
    rs = realserver()
    before = rs.snapshot()
    res = rs.present(vips=[VIP], arp_method="redirect", persist=True)
    assert res["result"] is False and "vips:0:ports" in res["comment"], res["comment"]
    assert "Nothing was changed" in res["comment"] and rs.snapshot() == before
