"""lvs_realserver against a real kernel: what the kernel holds, which changes are reported."""

import pytest

pytestmark = pytest.mark.functional

VIP = "198.51.100.100"
VIP2 = "198.51.100.101"
VIP6 = "2001:db8::100"


def test_apply_from_scratch_then_nothing_to_do(realserver):
    rs = realserver()
    res = rs.module("apply", vips=[VIP, VIP6], scope="interfaces", persist=True, **rs.paths)
    assert res["changes"]["sysctl"] == {
        "net.ipv4.conf.eth0.arp_ignore": {"old": 0, "new": 1},
        "net.ipv4.conf.eth0.arp_announce": {"old": 0, "new": 2},
    }
    assert set(res["changes"]["address"]) == {f"{VIP}/32 dev lo", f"{VIP6}/128 dev lo"}
    # what the kernel holds: suppression on the NIC only, VIPs as host routes on lo
    assert rs.arp("eth0") == (1, 2)
    assert rs.arp("all") == (0, 0) and rs.arp("lo") == (0, 0)
    assert rs.addrs() == sorted(["127.0.0.1/8", "::1/128", f"{VIP}/32", f"{VIP6}/128"])
    flags = rs.ns.run("ip", "-6", "addr", "show", "dev", "lo").stdout
    assert "nodad" in flags
    # the journal shows the order in which the kernel was written
    journal = res["journal"]
    first_add = next(i for i, e in enumerate(journal) if e.startswith("add "))
    assert all(e.startswith(("sysctl", "file")) for e in journal[:first_add])
    assert any(e.startswith("sysctl") for e in journal[:first_add])
    again = rs.module("apply", vips=[VIP, VIP6], scope="interfaces", persist=True, **rs.paths)
    assert again["changes"] == {} and again["journal"] == []


def test_test_mode_changes_nothing_and_predicts_exactly(realserver):
    rs = realserver()
    before = rs.snapshot()
    predicted = rs.present(vips=[VIP, VIP6], persist=True, test=True)
    assert predicted["result"] is None
    assert predicted["changes"], "a fresh host must have something to do"
    assert rs.snapshot() == before, "test=True touched the host"
    done = rs.present(vips=[VIP, VIP6], persist=True)
    assert done["result"] is True, done["comment"]
    assert done["changes"] == predicted["changes"]
    second = rs.present(vips=[VIP, VIP6], persist=True)
    assert second["result"] is True and second["changes"] == {}, second
    # and test mode after convergence predicts nothing, with result True (not None)
    quiet = rs.present(vips=[VIP, VIP6], persist=True, test=True)
    assert quiet["result"] is True and quiet["changes"] == {}


def test_removal_prediction_is_exact_too(realserver):
    rs = realserver()
    rs.present(vips=[VIP, VIP2], persist=True)
    before = rs.snapshot()
    predicted = rs.present(vips=[VIP], persist=True, test=True)
    assert rs.snapshot() == before
    done = rs.present(vips=[VIP], persist=True)
    assert done["changes"] == predicted["changes"]
    assert set(done["changes"]["address"]) == {f"{VIP2}/32 dev lo"}


def test_declarative_removal_relaxes_only_after_the_last_vip(realserver):
    rs = realserver()
    # an operator's own setting and an address the module does not manage
    rs.ns.write_sysctl("net/ipv4/conf/eth0/arp_announce", 1)
    rs.ns.ip("addr", "add", "203.0.113.50/32", "dev", "lo")
    rs.present(vips=[VIP, VIP2], persist=False)
    assert rs.arp("eth0") == (1, 2)

    one = rs.present(vips=[VIP], persist=False)
    assert one["changes"] == {"address": {f"{VIP2}/32 dev lo": {"old": f"{VIP2}/32 dev lo",
                                                                   "new": None}}}
    assert rs.arp("eth0") == (1, 2), "VIP still needs the suppression"

    none = rs.present(vips=[], persist=False)
    assert none["changes"]["address"] == {f"{VIP}/32 dev lo": {"old": f"{VIP}/32 dev lo",
                                                                "new": None}}
    assert none["changes"]["sysctl"] == {
        "net.ipv4.conf.eth0.arp_ignore": {"old": 1, "new": 0},
        "net.ipv4.conf.eth0.arp_announce": {"old": 2, "new": 1},  # back to what it found
    }
    assert rs.arp("eth0") == (0, 1)
    assert "203.0.113.50/32" in rs.addrs(), "an unmanaged address was touched"
    assert rs.present(vips=[], persist=False)["changes"] == {}


def test_absent_removes_everything_it_manages_and_nothing_else(realserver):
    rs = realserver()
    rs.ns.ip("addr", "add", "203.0.113.50/32", "dev", "lo")
    rs.present(vips=[VIP, VIP6], persist=True)
    predicted = rs.absent(test=True)
    done = rs.absent()
    assert done["result"] is True and done["changes"] == predicted["changes"]
    assert rs.addrs() == sorted(["127.0.0.1/8", "::1/128", "203.0.113.50/32"])
    assert rs.arp("eth0") == (0, 0)
    leftover = {p: t for p, t in rs.files().items() if not p.endswith("state.json")}
    assert leftover == {}, "boot files must go with the VIPs"
    assert rs.absent()["changes"] == {}


def test_two_nics_only_the_one_facing_the_vip_changes(realserver):
    rs = realserver(eth0="198.51.100.11/24", eth1="203.0.113.11/24")
    rs.present(vips=[VIP], persist=False)
    assert rs.arp("eth0") == (1, 2)
    assert rs.arp("eth1") == (0, 0)
    assert rs.arp("all") == (0, 0)


def test_scope_all_is_opt_in_and_warned(realserver):
    rs = realserver()
    res = rs.present(vips=[VIP], scope="all", persist=False)
    assert rs.arp("all") == (1, 2) and rs.arp("eth0") == (0, 0)
    assert "veth" in res["comment"]
    # switching back raises eth0 first, then relaxes all
    back = rs.module("apply", vips=[VIP], scope="interfaces", persist=False, exclusive=True,
                     **rs.paths)
    journal = back["journal"]
    assert journal.index("sysctl net.ipv4.conf.eth0.arp_ignore=1") < journal.index(
        "sysctl net.ipv4.conf.all.arp_ignore=0")
    assert rs.arp("all") == (0, 0) and rs.arp("eth0") == (1, 2)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"vips": ["10.0.0.300"]}, "vips:0: '10.0.0.300' is not an IP address"),
        ({"vips": [f"{VIP}/24"]}, "has a prefix"),
        ({"vips": [VIP], "scope": "most"}, "scope: 'most'"),
        ({"vips": [VIP], "interfaces": ["eth9"]}, "interfaces: 'eth9' does not exist"),
        ({"vips": [VIP], "label": "eth0:vip"}, "vips:0:label"),
    ],
)
def test_bad_arguments_change_nothing(realserver, kwargs, words):
    rs = realserver()
    before = rs.snapshot()
    res = rs.present(persist=True, **kwargs)
    assert res["result"] is False and words in res["comment"], res["comment"]
    assert "Nothing was changed" in res["comment"]
    assert rs.snapshot() == before


def test_interface_vanishing_mid_run_is_reported_and_the_next_run_converges(realserver):
    rs = realserver(eth0="198.51.100.11/24", eth1="198.51.100.21/24")  # both face the VIP
    loaders = rs.loaders
    paths = rs.paths

    def run():
        import subprocess

        from salt.exceptions import CommandExecutionError

        mod = loaders.modules.lvs_realserver
        # reach the module's own functions through its loaded globals
        g = mod.apply.__globals__
        spec = g["make_spec"]([VIP], persist=False)
        observed = g["observe"]()
        plan = g["plan_changes"](spec, observed, g["read_record"](paths["state_file"]), paths)
        subprocess.run(["ip", "link", "del", "eth1"], check=True)  # between plan and apply
        try:
            g["execute"](plan, observed)
        except CommandExecutionError as err:
            return str(err), err.info
        return None, None

    message, info = rs.ns.call(run)
    assert message and "eth1" in message and "failed" in message
    assert info["changes"]["sysctl"] == {
        "net.ipv4.conf.eth0.arp_announce": {"old": 0, "new": 2},
        "net.ipv4.conf.eth0.arp_ignore": {"old": 0, "new": 1},
    }
    assert f"addr_add {VIP}/32 dev lo" in info["not_applied"]
    assert VIP + "/32" not in rs.addrs(), "the VIP must not appear after a failed suppression"
    again = rs.present(vips=[VIP], persist=False)
    assert again["result"] is True
    assert again["changes"] == {"address": {f"{VIP}/32 dev lo": {"old": None,
                                                                  "new": f"{VIP}/32 dev lo"}}}
    assert rs.present(vips=[VIP], persist=False)["changes"] == {}


def test_refused_write_is_reported_with_what_was_applied(realserver, tmp_path):
    rs = realserver()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be\n")
    bad = dict(rs.paths, sysctl_file=str(blocker / "90-lvs.conf"))
    res = rs.state("present", vips=[VIP], persist=True, **bad)
    assert res["result"] is False
    assert "90-lvs.conf failed" in res["comment"] and "Not applied" in res["comment"]
    assert set(res["changes"]["sysctl"]) == {"net.ipv4.conf.eth0.arp_ignore",
                                             "net.ipv4.conf.eth0.arp_announce"}
    assert "address" not in res["changes"]
    assert f"{VIP}/32" not in rs.addrs()
    fixed = rs.present(vips=[VIP], persist=True)
    assert fixed["result"] is True
    assert set(fixed["changes"]) == {"address", "file"}, "sysctls were already applied"
    assert f"{VIP}/32" in rs.addrs()


def test_audit_with_no_arguments_reads_lo(realserver):
    rs = realserver()
    rs.ns.ip("addr", "add", f"{VIP}/32", "dev", "lo")
    report = rs.module("audit")
    assert report["source"] == "lo/tunl0"
    assert report["ok"] is False
    assert {(f["interface"], f["severity"]) for f in report["findings"]} == {("eth0", "error")}
    rs.present(vips=[VIP], persist=False)
    fixed = rs.module("audit")
    assert fixed["ok"] is True and fixed["findings"] == []
    assert fixed["interfaces"]["eth0"]["arp_ignore"] == 1
