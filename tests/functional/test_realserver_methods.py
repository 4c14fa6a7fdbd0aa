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


@pytest.mark.parametrize("binary", ["iptables-legacy", "iptables-nft"])
def test_redirect_with_iptables_where_that_is_what_the_host_has(realserver, binary):
    rs = realserver()
    opts = {"redirect_backend": "iptables", "iptables_bin": binary}
    save = [f"{binary}-save", "-t", "nat"]
    predicted = rs.present(vips=[WEB, WEB6], arp_method="redirect", persist=True, test=True,
                           **opts)
    done = rs.present(vips=[WEB, WEB6], arp_method="redirect", persist=True, **opts)
    assert done["result"] is True, done["comment"]
    assert done["changes"] == predicted["changes"]
    v6 = binary.replace("iptables", "ip6tables")
    assert done["changes"]["iptables"] == {
        f"{binary} nat SALTEXT_LVS": {"old": None, "new": {VIP: ["tcp/80", "udp/53"]}},
        f"{v6} nat SALTEXT_LVS": {"old": None, "new": {VIP6: ["tcp/80"]}},
    }
    assert "nftables" not in done["changes"] or binary == "iptables-nft"
    text = rs.ns.run(*save).stdout
    assert "-A PREROUTING -j SALTEXT_LVS" in text
    assert f"-A SALTEXT_LVS -d {VIP}/32 -p udp -m udp --dport 53 -j REDIRECT" in text
    assert f"{VIP}/32" not in rs.addrs()
    assert rs.present(vips=[WEB, WEB6], arp_method="redirect", persist=True, **opts)[
        "changes"] == {}
    unit = next(t for p, t in rs.files().items() if p.endswith("lvs-realserver.service")
                and not t.startswith("->"))
    execs = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert [e.split()[0].rsplit("/", 1)[-1] for e in execs] == [
        f"{binary}-restore", f"{v6}-restore"]
    # one more port: the chain is replaced in one commit, the jump stays single
    more = rs.present(vips=[{**WEB, "ports": [80, 443, "udp/53"]}, WEB6], arp_method="redirect",
                      persist=True, **opts)
    assert more["changes"]["iptables"][f"{binary} nat SALTEXT_LVS"]["new"][VIP] == [
        "tcp/80", "tcp/443", "udp/53"]
    assert rs.ns.run(*save).stdout.count("-j SALTEXT_LVS") == 1
    gone = rs.absent(**opts)
    assert gone["result"] is True, gone["comment"]
    assert "SALTEXT_LVS" not in rs.ns.run(*save).stdout
    assert {p for p in rs.files() if not p.endswith("state.json")} == set()


# --------------------------------------------------------------------------------------------
# arptables: legacy and nft-backed binaries


@pytest.mark.parametrize("binary", ["arptables-legacy", "arptables-nft"])
def test_arptables_chains_of_its_own_swapped_by_generation(realserver, binary):
    rs = realserver()
    opts = {"arptables_bin": binary}

    def saved():  # arptables-legacy-save lists with /usr/sbin/arptables, whatever that is
        return rs.ns.run(binary, "-L", "-n").stdout

    rs.ns.run(binary, "-A", "INPUT", "-s", "203.0.113.9", "-j", "DROP")  # the operator's own
    flavour = "nft" if binary.endswith("-nft") else "legacy"
    target = f"arptables ({flavour})"
    predicted = rs.present(vips=[VIP], arp_method="arptables", persist=True, test=True, **opts)
    done = rs.present(vips=[VIP], arp_method="arptables", persist=True, **opts)
    assert done["result"] is True, done["comment"]
    assert done["changes"] == predicted["changes"]
    assert done["changes"]["arptables"] == {
        target: {"old": None, "new": {"vips": [VIP], "rewrite": {"eth0": RIP}}}}
    assert "sysctl" not in done["changes"] and rs.arp("eth0") == (0, 0)
    text = saved()
    assert "-j LVS_RS_IN_A" in text and "-j LVS_RS_OUT_A" in text
    assert f"-d {VIP}" in text and f"--mangle-ip-s {RIP}" in text
    assert rs.present(vips=[VIP], arp_method="arptables", persist=True, **opts)["changes"] == {}
    # the audit sees these rules (legacy: through arptables -L; nft-backed: in nft's arp table)
    report = rs.module("audit", vips=[VIP], **opts)
    assert report["ok"] is True and report["findings"] == [], report["findings"]
    where = "nft table arp filter chain" if flavour == "nft" else f"{binary} chain"
    assert {src.rsplit(" ", 1)[0] for src in report["vips"][VIP]["arp_rules"]} == {where}

    # a second VIP: a new generation is filled and jumped to before the old one goes
    more = rs.module("apply", vips=[VIP, VIP2], arp_method="arptables", persist=True,
                     exclusive=True, **opts, **rs.paths)
    assert more["journal"][0] == f"arptables {target}", more["journal"]
    text = saved()
    assert "LVS_RS_IN_B" in text and "LVS_RS_IN_A" not in text
    assert text.count(f"--mangle-ip-s {RIP}") == 2
    assert "-j DROP -s 203.0.113.9" in text

    unit = next(t for p, t in rs.files().items() if p.endswith("lvs-realserver.service")
                and not t.startswith("->"))
    execs = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert execs[0].startswith("/bin/sh ") and execs[-1].startswith("/sbin/ip -force -batch")

    gone = rs.absent(**opts)
    assert gone["result"] is True, gone["comment"]
    text = saved()
    assert "LVS_RS" not in text and "203.0.113.9" in text, text
    assert f"{VIP}/32" not in rs.addrs()


def test_switching_nftables_to_arptables_and_back(realserver):
    rs = realserver()
    rs.present(vips=[VIP], arp_method="nftables", persist=False)
    to = rs.module("apply", vips=[VIP], arp_method="arptables", persist=False, exclusive=True,
                   arptables_bin="arptables-legacy", **rs.paths)
    j = to["journal"]
    assert j == ["arptables arptables (legacy)", "nftables table arp saltext_lvs"], j
    back = rs.module("apply", vips=[VIP], arp_method="nftables", persist=False, exclusive=True,
                     arptables_bin="arptables-legacy", **rs.paths)
    assert back["journal"] == ["nftables table arp saltext_lvs", "arptables arptables (legacy)"]
    assert "LVS_RS" not in rs.ns.run("arptables-legacy", "-L", "-n").stdout


# --------------------------------------------------------------------------------------------
# IPv6: the VIP is never chosen as a source address


def route_src(rs, dst):
    out = json.loads(rs.ns.run("ip", "-j", "-6", "route", "get", dst).stdout)
    return out[0].get("prefsrc")


def test_ipv6_vip_is_not_chosen_as_a_source_address(realserver):
    """A destination out of eth1, which has no global IPv6 address: candidates are eth0's
    2001:db8::11 and the VIP on lo; the VIP shares a longer prefix with the destination
    (RFC 6724 rule 8), so a preferred VIP wins. Deprecated (rule 3), it never does."""
    rs = realserver(eth0="198.51.100.11/24", eth1="203.0.113.11/24")
    vip6 = "2001:db8:1::100"
    rs.ns.ip("addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad")
    rs.ns.ip("-6", "route", "add", "2001:db8:1::/64", "dev", "eth1")
    rs.ns.ip("addr", "add", f"{vip6}/128", "dev", "lo", "nodad")  # the usual way: preferred
    assert route_src(rs, "2001:db8:1::5") == vip6, "control: a preferred VIP is picked"
    audit = rs.module("audit", vips=[vip6])
    assert [f["severity"] for f in audit["findings"]] == ["warning"]
    done = rs.present(vips=[vip6], persist=False)
    assert done["changes"]["address"] == {f"{vip6}/128 dev lo": {
        "old": f"{vip6}/128 dev lo (preferred: may be chosen as a source address)",
        "new": f"{vip6}/128 dev lo (deprecated: never chosen as a source address)"}}
    assert route_src(rs, "2001:db8:1::5") == "2001:db8::11"
    assert "deprecated" in rs.ns.run("ip", "-6", "addr", "show", "dev", "lo").stdout
    assert rs.present(vips=[vip6], persist=False)["changes"] == {}
    assert rs.module("audit", vips=[vip6])["findings"] == []
    # a VIP the module adds from scratch is deprecated from the start, and still accepts
    rs.absent()
    rs.present(vips=[vip6], persist=False)
    assert route_src(rs, "2001:db8:1::5") == "2001:db8::11"
    assert route_src(rs, vip6) == vip6  # local delivery to it still works


def test_changing_the_arptables_binary_moves_the_rules_to_the_other_table(realserver):
    """arptables-legacy and arptables-nft keep their rules in different kernel tables: after a
    change of binary the old flavour's chains must go too (once the new ones are in force)."""
    rs = realserver()
    rs.present(vips=[VIP], arp_method="arptables", persist=False, arptables_bin="arptables-legacy")
    moved = rs.module("apply", vips=[VIP], arp_method="arptables", persist=False, exclusive=True,
                      arptables_bin="arptables-nft", **rs.paths)
    assert moved["journal"] == ["arptables arptables (nft)",
                                "arptables arptables (legacy) arptables-legacy"], moved["journal"]
    assert "LVS_RS" not in rs.ns.run("arptables-legacy", "-L", "-n").stdout
    assert "LVS_RS_IN_A" in rs.ns.run("arptables-nft", "-L", "-n").stdout
    assert rs.present(vips=[VIP], arp_method="arptables", persist=False,
                      arptables_bin="arptables-nft")["changes"] == {}
    rs.absent(arptables_bin="arptables-nft")
    assert "LVS_RS" not in rs.ns.run("arptables-nft", "-L", "-n").stdout


def test_changing_the_iptables_binary_moves_the_redirect(realserver):
    rs = realserver()
    opts = {"redirect_backend": "iptables"}
    rs.present(vips=[WEB], arp_method="redirect", persist=False, iptables_bin="iptables-legacy",
               **opts)
    moved = rs.module("apply", vips=[WEB], arp_method="redirect", persist=False, exclusive=True,
                      iptables_bin="iptables-nft", **opts, **rs.paths)
    assert moved["journal"] == ["iptables iptables-nft nat SALTEXT_LVS",
                                "iptables iptables-legacy nat SALTEXT_LVS"], moved["journal"]
    assert "SALTEXT_LVS" not in rs.ns.run("iptables-legacy-save", "-t", "nat").stdout
    assert "SALTEXT_LVS" in rs.ns.run("iptables-nft-save", "-t", "nat").stdout


def test_a_dedicated_interface_this_kernel_cannot_create_changes_nothing(realserver):
    """This host's kernel has no dummy driver (the kernel lane's has: there the placement is
    tested end to end, tests/kernel/test_realserver_placement.py). Test mode predicts the
    dummy; a real run says why it cannot and leaves the host as it was."""
    rs = realserver()
    before = rs.snapshot()
    predicted = rs.present(vips=[{"address": VIP, "device": "lvsvip0"}], persist=True, test=True)
    assert predicted["changes"]["link"] == {"lvsvip0": {"old": None, "new": "dummy, NOARP, up"}}
    assert predicted["changes"]["address"] == {f"{VIP}/32 dev lvsvip0": {
        "old": None, "new": f"{VIP}/32 dev lvsvip0"}}
    res = rs.present(vips=[{"address": VIP, "device": "lvsvip0"}], persist=True)
    assert res["result"] is False
    assert "could not be created as a dummy interface" in res["comment"], res["comment"]
    assert rs.snapshot() == before
