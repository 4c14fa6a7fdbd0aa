"""FreeBSD real servers: the lvs_realserver_freebsd command layer against recorded output.

Recorded output, NOT a real system: ``tests/fixtures/freebsd/`` holds ``ifconfig -a``,
``sysrc -a`` and ``sysctl -n`` output written from FreeBSD's man pages (its SOURCES.md says
which), replayed by FakeCommands, which fails on any command nobody expected. Nothing here ran
on a FreeBSD kernel.
"""

import json
import pathlib
import shlex

import pytest
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from tests.fixtures.fake_commands import FakeCommands
from tests.fixtures.fake_commands import load_backend
from tests.fixtures.fake_commands import load_state
from tests.fixtures.fake_commands import recorded

pytestmark = pytest.mark.unit

VIP, VIP6 = "198.51.100.100", "2001:db8::100"
IFCONFIG = ["ifconfig", "-a"]
SYSRC = ["sysrc", "-f", "/etc/rc.conf", "-a"]
PROXYALL = ["sysctl", "-n", "net.link.ether.inet.proxyall"]
READS = [IFCONFIG, SYSRC, PROXYALL]
ADD4 = ["ifconfig", "lo0", "alias", VIP, "netmask", "0xffffffff", "-arp"]
ADD6 = ["ifconfig", "lo0", "inet6", VIP6, "prefixlen", "128", "alias"]
DEL4 = ["ifconfig", "lo0", "inet", VIP, "-alias"]
DEL6 = ["ifconfig", "lo0", "inet6", VIP6, "-alias"]
ENTRY4 = f"inet {VIP} netmask 0xffffffff"
ENTRY6 = f"inet6 {VIP6} prefixlen 128"


def sysrc_set(n, value):
    return ["sysrc", "-f", "/etc/rc.conf", f"ifconfig_lo0_alias{n}={value}"]


def sysrc_del(n):
    return ["sysrc", "-f", "/etc/rc.conf", "-x", f"ifconfig_lo0_alias{n}"]


def host(ifconfig="fresh", sysrc="fresh", proxyall="0"):
    """FakeCommands replaying one recorded state of a FreeBSD host (not a real system)."""
    return FakeCommands(reads={
        tuple(IFCONFIG): recorded("freebsd", f"ifconfig-a.{ifconfig}.txt"),
        tuple(SYSRC): recorded("freebsd", f"sysrc-a.{sysrc}.txt"),
        tuple(PROXYALL): recorded("freebsd", f"sysctl-proxyall.{proxyall}.txt"),
    })


@pytest.fixture
def paths(tmp_path):
    return {"state_file": str(tmp_path / "realserver.json")}


def apply(fake, paths, vips=(VIP, VIP6), **kw):
    kw.setdefault("persist", True)
    kw.setdefault("exclusive", True)
    mod = load_backend("freebsd", fake)
    return mod.apply(vips=list(vips), scope="interfaces", **paths, **kw)


def from_scratch(paths):
    fake = host()
    for cmd in (ADD4, ADD6, sysrc_set(1, ENTRY4), sysrc_set(2, ENTRY6)):
        fake.expect(cmd)
    return apply(fake, paths), fake


def test_backend_is_chosen_by_the_kernel_grain():
    mod = load_backend("freebsd", FakeCommands())
    assert mod.__virtual__() == "lvs_realserver"
    for kernel in ("Linux", "SunOS", "Windows"):
        mod.__grains__["kernel"] = kernel
        assert mod.__virtual__()[0] is False


def test_from_scratch_runs_the_exact_commands_in_order(paths):
    res, fake = from_scratch(paths)
    fake.assert_all_ran()
    assert fake.changes_run == [ADD4, ADD6, sysrc_set(1, ENTRY4), sysrc_set(2, ENTRY6)], \
        "live aliases first, then rc.conf, after the operator's own alias0"
    assert res["changes"] == {
        "address": {
            f"{VIP}/32 dev lo0": {"old": None, "new": f"{VIP}/32 dev lo0"},
            f"{VIP6}/128 dev lo0": {"old": None, "new": f"{VIP6}/128 dev lo0"},
        },
        "rc.conf": {
            "ifconfig_lo0_alias1": {"old": None, "new": ENTRY4},
            "ifconfig_lo0_alias2": {"old": None, "new": ENTRY6},
        },
    }
    assert res["journal"] == [shlex.join(c) for c in fake.changes_run]
    record = json.loads(open(paths["state_file"], encoding="utf-8").read())
    assert record["vips"] == {VIP: {"device": "lo0"}, VIP6: {"device": "lo0"}}
    assert record["options"]["persist"] is True


def test_second_run_on_the_applied_host_runs_nothing(paths):
    from_scratch(paths)
    before = open(paths["state_file"], encoding="utf-8").read()
    again = host("applied", "applied")
    res = apply(again, paths)
    assert res["changes"] == {} and res["journal"] == []
    assert again.changes_run == [] and again.reads_run == READS
    assert open(paths["state_file"], encoding="utf-8").read() == before


def test_test_mode_reads_only_and_predicts_the_real_run(paths):
    fake = host()
    predicted = apply(fake, paths, test=True)
    assert fake.changes_run == [], "test=True ran a command that changes the host"
    assert fake.reads_run == READS
    assert not pathlib.Path(paths["state_file"]).exists()
    done, _ = from_scratch(paths)
    assert predicted["changes"] == done["changes"] and predicted["test"] is True


def test_removing_a_vip_goes_live_first_then_rc_conf_closes_the_gap(paths):
    from_scratch(paths)
    fake = host("applied", "applied")
    fake.expect(DEL4).expect(sysrc_set(1, ENTRY6)).expect(sysrc_del(2))
    mod = load_backend("freebsd", fake)
    res = mod.remove(vips=[VIP], **paths)
    fake.assert_all_ran()
    assert fake.changes_run == [DEL4, sysrc_set(1, ENTRY6), sysrc_del(2)]
    assert res["changes"] == {
        "address": {f"{VIP}/32 dev lo0": {"old": f"{VIP}/32 dev lo0", "new": None}},
        "rc.conf": {
            "ifconfig_lo0_alias1": {"old": ENTRY4, "new": ENTRY6},
            "ifconfig_lo0_alias2": {"old": ENTRY6, "new": None},
        },
    }
    assert mod.managed(**paths)["vips"] == {VIP6: {"device": "lo0"}}
    # and the rest: the operator's alias0 (203.0.113.50) is never touched
    last = host("v6only", "v6only")
    last.expect(DEL6).expect(sysrc_del(1))
    res = load_backend("freebsd", last).remove(**paths)
    assert last.changes_run == [DEL6, sysrc_del(1)]
    assert set(res["changes"]) == {"address", "rc.conf"}


def test_a_wrong_netmask_on_lo0_is_replaced_and_a_vip_on_a_nic_refused(paths):
    fake = host("broken", "fresh")
    fake.expect(DEL4).expect(ADD4).expect(sysrc_set(1, ENTRY4))
    res = apply(fake, paths, vips=[VIP])
    fake.assert_all_ran()
    assert res["changes"]["address"] == {
        f"{VIP}/24 dev lo0": {"old": f"{VIP}/24 dev lo0", "new": None},
        f"{VIP}/32 dev lo0": {"old": None, "new": f"{VIP}/32 dev lo0"},
    }
    refused = host("broken", "fresh")
    with pytest.raises(SaltInvocationError) as err:
        apply(refused, paths, vips=["198.51.100.101"])
    assert "vips:0: 198.51.100.101 is configured on em0" in str(err.value)
    assert refused.changes_run == []


def test_rc_conf_entries_behind_a_gap_stop_the_run_before_anything_changes(paths):
    fake = host("fresh", "broken")
    with pytest.raises(SaltInvocationError) as err:
        apply(fake, paths, vips=[VIP])
    assert "/etc/rc.conf: ifconfig_lo0_alias3 follows a gap" in str(err.value)
    assert fake.changes_run == []


def test_proxy_arp_is_warned_about_on_apply(paths):
    fake = host("applied", "applied", proxyall="1")
    res = apply(fake, paths, test=True)
    assert any("net.link.ether.inet.proxyall is 1" in w for w in res["warnings"])


@pytest.mark.parametrize(
    ("vips", "message"),
    [
        (["198.51.100.300"], "vips:0: '198.51.100.300' is not an IP address"),
        ([f"{VIP}/32"], f"vips:0: '{VIP}/32' has a prefix; give the bare address"),
        ([VIP, VIP], f"vips: {VIP} is listed twice"),
        ([{"address": VIP, "device": "tunl0"}], f"vips:0: {VIP} is a TUN VIP (device tunl0)"),
        (42, "vips: expected a list of addresses"),
    ],
)
def test_bad_input_names_the_key_and_runs_no_command(paths, vips, message):
    fake = FakeCommands()  # no recorded output at all: any command fails the test
    with pytest.raises(SaltInvocationError) as err:
        load_backend("freebsd", fake).apply(vips=vips, scope="interfaces", persist=True,
                                            **paths)
    assert message in str(err.value)
    assert fake.calls == []


def test_bad_scope_and_unknown_path_argument_are_refused(paths):
    fake = FakeCommands()
    mod = load_backend("freebsd", fake)
    with pytest.raises(SaltInvocationError, match="scope: 'everything' is not one of"):
        mod.apply(vips=[VIP], scope="everything", persist=True, **paths)
    with pytest.raises(SaltInvocationError, match="unknown argument"):
        mod.apply(vips=[VIP], scope="interfaces", persist=True, sysctl_file="/x", **paths)
    assert fake.calls == []


def test_a_failed_command_stops_the_run_and_says_what_was_applied(paths):
    fake = host()
    fake.expect(ADD4).expect(ADD6, retcode=1,
                             stderr="ifconfig: ioctl (SIOCAIFADDR_IN6): Invalid argument")
    with pytest.raises(CommandExecutionError) as err:
        apply(fake, paths)
    info = err.value.info
    assert info["changes"] == {
        "address": {f"{VIP}/32 dev lo0": {"old": None, "new": f"{VIP}/32 dev lo0"}}}
    assert info["not_applied"] == [
        f"address {VIP6}/128 dev lo0", "rc.conf ifconfig_lo0_alias1", "rc.conf ifconfig_lo0_alias2"]
    assert "Invalid argument" in str(err.value)
    assert fake.changes_run == [ADD4, ADD6], "nothing runs after the failure"
    # the intent was recorded before the first command: both VIPs are known as managed
    record = json.loads(open(paths["state_file"], encoding="utf-8").read())
    assert set(record["vips"]) == {VIP, VIP6}


def test_audit_of_a_broken_host_finds_each_fault(paths):
    fake = host("broken", "broken", proxyall="1")
    res = load_backend("freebsd", fake).audit(
        vips=[VIP, "198.51.100.101", "198.51.100.102"], **paths)
    assert fake.changes_run == []
    found = {(f["severity"], f["vip"], f["interface"], f["message"].split(":")[0])
             for f in res["findings"]}
    assert found == {
        ("error", VIP, "lo0", f"{VIP}/24 on lo0 has the wrong netmask"),
        ("error", VIP, "lo0", f"ifconfig_lo0_alias1 gives {VIP} /24"),
        ("error", "198.51.100.101", "em0",
         "198.51.100.101 is configured on em0"),
        ("warning", "198.51.100.102", None, "198.51.100.102 is not configured on this host"),
        ("warning", "198.51.100.102", "lo0",
         "ifconfig_lo0_alias3 holds 198.51.100.102 but follows a gap in the alias numbers"),
        ("error", None, None, "net.link.ether.inet.proxyall=1"),
    }
    assert res["ok"] is False and res["source"] == "arguments"
    assert res["vips"][VIP]["held_on"] == [{"interface": "lo0", "prefixlen": 24}]


def test_audit_of_the_applied_host_is_clean_and_finds_vips_on_its_own(paths):
    fake = host("applied", "applied")
    res = load_backend("freebsd", fake).audit(**paths)
    assert res["ok"] is True and res["findings"] == []
    assert res["source"] == "lo0"
    assert set(res["vips"]) == {"203.0.113.50", VIP, VIP6}
    assert res["vips"][VIP]["rc_conf"] == ["ifconfig_lo0_alias1"]


def test_audit_warns_about_a_vip_that_does_not_survive_a_reboot(paths):
    fake = host("applied", "fresh")
    res = load_backend("freebsd", fake).audit(vips=[VIP], **paths)
    assert [(f["severity"], f["message"]) for f in res["findings"]] == [
        ("warning", f"{VIP} is not in rc.conf: it is gone after a reboot")]


PILLAR = {"lvs": {"services": {
    "web": {"vip": VIP, "ports": [80], "realservers": {"rs1": {"address": "198.51.100.11"}}},
    "web6": {"vip": VIP6, "ports": [80], "realservers": {"rs1": {"address": "2001:db8::11"}}},
}}}


def test_the_state_drives_the_backend_from_the_pillar(paths):
    fake = host()
    state, opts = load_state(load_backend("freebsd", fake, pillar=PILLAR), test=True)
    predicted = state.present("rs", **paths)
    assert predicted["result"] is None and fake.changes_run == []
    opts["test"] = False
    for cmd in (ADD4, ADD6, sysrc_set(1, ENTRY4), sysrc_set(2, ENTRY6)):
        fake.expect(cmd)
    done = state.present("rs", **paths)
    assert done["result"] is True, done["comment"]
    assert done["changes"] == predicted["changes"]
    assert done["comment"] == "Changed: 2 addresses, 2 rc.conf."
    again, _ = load_state(load_backend("freebsd", host("applied", "applied"), pillar=PILLAR))
    assert again.present("rs", **paths) == {
        "name": "rs", "result": True, "changes": {},
        "comment": "The real server is already as declared."}
    gone = host("applied", "applied")
    gone.expect(DEL4).expect(DEL6).expect(sysrc_del(2)).expect(sysrc_del(1))
    absent, _ = load_state(load_backend("freebsd", gone, pillar=PILLAR))
    res = absent.absent("rs", **paths)
    assert res["result"] is True, res["comment"]
    assert gone.changes_run[:2] == [DEL4, DEL6], "VIPs go first, then rc.conf"
    gone.assert_all_ran()


def test_a_tun_service_in_the_pillar_is_refused_by_key(paths):
    pillar = {"lvs": {"services": {"t": {"vip": VIP, "ports": [80], "method": "tun",
                                         "realservers": {"rs1": {"address": "203.0.113.11"}}}}}}
    fake = FakeCommands()
    state, _ = load_state(load_backend("freebsd", fake, pillar=pillar))
    res = state.present("rs", **paths)
    assert res["result"] is False
    assert f"vips:0: {VIP} is a TUN VIP (device tunl0)" in res["comment"]
    assert fake.calls == []


def test_a_linux_arp_method_in_the_pillar_is_ignored_with_a_warning_but_redirect_refused(paths):
    fake = host("applied", "applied")
    mod = load_backend("freebsd", fake)
    conf = {"vips": [{"address": VIP, "device": "lo"}, {"address": VIP6, "device": "lo"}],
            "scope": "interfaces", "interfaces": None, "persist": True}
    mod.__salt__["lvs_pillar.realserver"] = lambda: {**conf, "arp_method": "nftables"}
    res = mod.apply(test=True, **paths)
    assert res["warnings"] == [
        "lvs:realserver:arp_method 'nftables' is a Linux method: FreeBSD needs none (the VIP "
        "on the loopback interface never answers ARP); ignored"]
    mod.__salt__["lvs_pillar.realserver"] = lambda: {**conf, "arp_method": "redirect"}
    with pytest.raises(SaltInvocationError, match="lvs:realserver:arp_method: 'redirect'"):
        mod.apply(**paths)
    assert fake.changes_run == []
