"""Solaris and illumos real servers: lvs_realserver_solaris against recorded output.

Recorded output, NOT a real system: ``tests/fixtures/solaris/`` holds ``ipadm show-addr``,
``ipadm show-prop``, ``ifconfig -a`` and ``ndd`` output written from the ipadm(8)/ipadm(1M),
ifconfig(1M) and ndd(1M) pages and libofmt's escaping rules (its SOURCES.md says which),
replayed by FakeCommands, which fails on any command nobody expected. Two tool sets: ipadm
(Solaris 11, illumos) and ifconfig with /etc/hostname.lo0:N (Solaris 10). Nothing here ran on a
Solaris or illumos kernel.
"""

import json
import pathlib

import pytest
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from tests.fixtures.fake_commands import FakeCommands
from tests.fixtures.fake_commands import load_backend
from tests.fixtures.fake_commands import load_state
from tests.fixtures.fake_commands import recorded

pytestmark = pytest.mark.unit

VIP, VIP6 = "198.51.100.100", "2001:db8::100"
SHOW_ADDR = ["ipadm", "show-addr", "-p", "-o", "addrobj,type,state,current,persistent,addr"]
HOSTMODEL = {f: ["ipadm", "show-prop", "-c", "-o", "current", "-p", "hostmodel", f"ipv{f}"]
             for f in (4, 6)}
IFCONFIG = ["ifconfig", "-a"]
NDD = ["ndd", "-get", "/dev/ip", "ip_strict_dst_multihoming"]
CREATE4 = ["ipadm", "create-addr", "-T", "static", "-a", f"{VIP}/32", "lo0/lvs0"]
CREATE6 = ["ipadm", "create-addr", "-T", "static", "-a", f"{VIP6}/128", "lo0/lvs1"]
PLUMB = ["ifconfig", "lo0:1", "plumb"]
UP = ["ifconfig", "lo0:1", VIP, "netmask", "255.255.255.255", "up"]
UNPLUMB = ["ifconfig", "lo0:1", "unplumb"]


def ipadm_host(addrs="fresh", hostmodel="weak"):
    """An ipadm host (Solaris 11, illumos) as recorded output: not a real system."""
    return FakeCommands(
        reads={
            tuple(SHOW_ADDR): recorded("solaris", f"ipadm-show-addr.{addrs}.txt"),
            tuple(HOSTMODEL[4]): recorded("solaris", f"ipadm-hostmodel.{hostmodel}.txt"),
            tuple(HOSTMODEL[6]): recorded("solaris", "ipadm-hostmodel.weak.txt"),
        },
        which={"ipadm": "/usr/sbin/ipadm"},
    )


def ifconfig_host(ifconfig="fresh", strict="0"):
    """A Solaris 10 host without ipadm, as recorded output: not a real system."""
    return FakeCommands(reads={
        tuple(IFCONFIG): recorded("solaris", f"ifconfig-a.{ifconfig}.txt"),
        tuple(NDD): recorded("solaris", f"ndd-strict-dst.{strict}.txt"),
    })


@pytest.fixture
def paths(tmp_path):
    (tmp_path / "etc").mkdir()
    return {"state_file": str(tmp_path / "realserver.json"), "hostname_dir": str(tmp_path / "etc")}


def apply(fake, paths, vips=(VIP, VIP6), **kw):
    kw.setdefault("persist", True)
    kw.setdefault("exclusive", True)
    return load_backend("solaris", fake).apply(vips=list(vips), scope="interfaces", **paths,
                                               **kw)


def test_backend_is_chosen_by_the_kernel_grain():
    mod = load_backend("solaris", FakeCommands())
    assert mod.__virtual__() == "lvs_realserver"
    mod.__grains__["kernel"] = "FreeBSD"
    assert mod.__virtual__()[0] is False


def test_ipadm_parsable_output_unescapes_colons():
    mod = load_backend("solaris", FakeCommands())
    addrs = mod.parse_show_addr(recorded("solaris", "ipadm-show-addr.applied.txt"))
    by_name = {a["name"]: a for a in addrs}
    assert str(by_name["lo0/v6"]["address"]) == "::1"
    assert str(by_name["lo0/lvs1"]["address"]) == VIP6 and by_name["lo0/lvs1"]["plen"] == 128
    assert by_name["lo0/lvs0"]["boot"] is True and by_name["lo0/lvs0"]["loopback"] is True
    assert by_name["net0/v4"]["loopback"] is False
    assert mod.split_parsable(r"a\:b:c\\d:e") == ["a:b", "c\\d", "e"]


# ---- ipadm (Solaris 11, illumos) -----------------------------------------------------------


def test_ipadm_from_scratch_creates_persistent_address_objects_in_order(paths):
    fake = ipadm_host()
    fake.expect(CREATE4).expect(CREATE6)
    res = apply(fake, paths)
    fake.assert_all_ran()
    assert fake.changes_run == [CREATE4, CREATE6]
    assert res["changes"] == {"address": {
        f"{VIP}/32 dev lo0": {"old": None, "new": f"{VIP}/32 dev lo0 (lo0/lvs0)"},
        f"{VIP6}/128 dev lo0": {"old": None, "new": f"{VIP6}/128 dev lo0 (lo0/lvs1)"},
    }}
    assert json.loads(pathlib.Path(paths["state_file"]).read_text())["vips"] == {
        VIP: {"device": "lo0"}, VIP6: {"device": "lo0"}}


def test_ipadm_second_run_and_test_mode(paths):
    fake = ipadm_host()
    predicted = apply(fake, paths, test=True)
    assert fake.changes_run == [] and not pathlib.Path(paths["state_file"]).exists()
    assert fake.reads_run == [SHOW_ADDR, HOSTMODEL[4], HOSTMODEL[6]]
    real = ipadm_host().expect(CREATE4).expect(CREATE6)
    assert apply(real, paths)["changes"] == predicted["changes"]
    again = ipadm_host("applied")
    res = apply(again, paths)
    assert res["changes"] == {} and again.changes_run == []


def test_ipadm_removal_deletes_the_address_object(paths):
    apply(ipadm_host().expect(CREATE4).expect(CREATE6), paths)
    fake = ipadm_host("applied").expect(["ipadm", "delete-addr", "lo0/lvs0"])
    res = load_backend("solaris", fake).remove(vips=[VIP], **paths)
    fake.assert_all_ran()
    assert res["changes"] == {"address": {
        f"{VIP}/32 dev lo0": {"old": f"{VIP}/32 dev lo0 (lo0/lvs0)", "new": None}}}


def test_ipadm_persist_false_recreates_as_temporary(paths):
    fake = ipadm_host("applied")
    fake.expect(["ipadm", "delete-addr", "lo0/lvs0"])
    fake.expect(["ipadm", "create-addr", "-t", "-T", "static", "-a", f"{VIP}/32", "lo0/lvs0"])
    res = apply(fake, paths, vips=[VIP], persist=False)
    fake.assert_all_ran()
    assert res["changes"]["address"] == {f"{VIP}/32 dev lo0": {
        "old": f"{VIP}/32 dev lo0 (lo0/lvs0)",
        "new": f"{VIP}/32 dev lo0 (lo0/lvs0, not persistent)"}}


def test_ipadm_repairs_a_wrong_prefix_and_refuses_what_it_cannot_own(paths):
    fake = ipadm_host("broken")
    fake.expect(["ipadm", "delete-addr", "lo0/lvs0"]).expect(CREATE4)
    res = apply(fake, paths, vips=[VIP])
    fake.assert_all_ran()
    assert res["changes"]["address"] == {
        f"{VIP}/24 dev lo0": {"old": f"{VIP}/24 dev lo0 (lo0/lvs0)", "new": None},
        f"{VIP}/32 dev lo0": {"old": None, "new": f"{VIP}/32 dev lo0 (lo0/lvs0)"},
    }
    for vip, text in (("198.51.100.101", "is configured on net0/vip"),
                      ("198.51.100.102", "is on lo0 but was configured outside ipadm (lo0/?)")):
        refused = ipadm_host("broken")
        with pytest.raises(SaltInvocationError) as err:
            apply(refused, paths, vips=[vip])
        assert f"vips:0: {vip} {text}" in str(err.value)
        assert refused.changes_run == []


def test_ipadm_strong_hostmodel_is_warned_about(paths):
    res = apply(ipadm_host("applied", hostmodel="strong"), paths, test=True)
    assert res["warnings"] == [
        "hostmodel is strong for IPv4: packets for the VIP that arrive on a NIC are dropped "
        "because the VIP is on lo0; ipadm set-prop -p hostmodel=weak ipv4"]


def test_ipadm_audit_of_a_broken_host(paths):
    fake = ipadm_host("broken", hostmodel="strong")
    vips = [VIP, VIP6, "198.51.100.101", "198.51.100.102", "198.51.100.103", "198.51.100.104"]
    res = load_backend("solaris", fake).audit(vips=vips, **paths)
    assert fake.changes_run == []
    found = {(f["severity"], f["vip"], f["interface"]) for f in res["findings"]}
    assert found == {
        ("error", VIP, "lo0/lvs0"),  # /24
        ("warning", VIP6, "lo0/lvs1"),  # temporary
        ("error", "198.51.100.101", "net0/vip"),  # on a NIC
        ("warning", "198.51.100.102", "lo0/?"),  # outside ipadm
        ("error", "198.51.100.103", "lo0/lvs2"),  # down
        ("warning", "198.51.100.103", "lo0/lvs2"),  # and not persistent
        ("warning", "198.51.100.104", None),  # missing
        ("error", None, None),  # hostmodel strong
    }
    assert res["ok"] is False


def test_ipadm_audit_of_the_applied_host_is_clean(paths):
    res = load_backend("solaris", ipadm_host("applied")).audit(**paths)
    assert res["ok"] is True and res["findings"] == []
    assert res["source"] == "lo0" and set(res["vips"]) == {VIP, VIP6}


# ---- ifconfig and /etc/hostname.lo0:N (Solaris 10) -------------------------------------------


def test_ifconfig_from_scratch_plumbs_then_persists(paths):
    fake = ifconfig_host().expect(PLUMB).expect(UP)
    res = apply(fake, paths, vips=[VIP])
    fake.assert_all_ran()
    assert fake.changes_run == [PLUMB, UP]
    hostname = str(pathlib.Path(paths["hostname_dir"]) / "hostname.lo0:1")
    assert res["changes"] == {
        "address": {f"{VIP}/32 dev lo0": {"old": None, "new": f"{VIP}/32 dev lo0 (lo0:1)"}},
        "file": {hostname: {"old": None, "new": f"{VIP} netmask 255.255.255.255 up\n"}},
    }
    assert res["journal"][-1] == f"file {hostname}", "the boot file is written after the VIP"
    assert pathlib.Path(hostname).read_text() == f"{VIP} netmask 255.255.255.255 up\n"
    again = ifconfig_host("applied")
    assert apply(again, paths, vips=[VIP])["changes"] == {} and again.changes_run == []


def test_ifconfig_test_mode_writes_no_file(paths):
    fake = ifconfig_host()
    res = apply(fake, paths, vips=[VIP], test=True)
    assert fake.changes_run == [] and fake.reads_run == [IFCONFIG, NDD]
    assert list(pathlib.Path(paths["hostname_dir"]).iterdir()) == []
    assert set(res["changes"]) == {"address", "file"}


def test_ifconfig_removal_unplumbs_then_removes_the_file(paths):
    apply(ifconfig_host().expect(PLUMB).expect(UP), paths, vips=[VIP])
    fake = ifconfig_host("applied").expect(UNPLUMB)
    res = load_backend("solaris", fake).remove(**paths)
    fake.assert_all_ran()
    hostname = pathlib.Path(paths["hostname_dir"]) / "hostname.lo0:1"
    assert res["journal"] == ["ifconfig lo0:1 unplumb", f"file {hostname}"]
    assert not hostname.exists()


def test_ifconfig_host_refuses_ipv6_by_key(paths):
    fake = ifconfig_host()
    with pytest.raises(SaltInvocationError) as err:
        apply(fake, paths, vips=[VIP, VIP6])
    assert f"vips:1: {VIP6}: IPv6 VIPs need ipadm" in str(err.value)
    assert fake.changes_run == []


def test_ifconfig_fixes_the_mask_in_place_and_rewrites_the_boot_file(paths):
    hostname = pathlib.Path(paths["hostname_dir"]) / "hostname.lo0:1"
    hostname.write_text(f"{VIP} netmask 255.255.255.0 up\n")
    fake = ifconfig_host("broken").expect(UP)
    res = apply(fake, paths, vips=[VIP])
    fake.assert_all_ran()
    assert res["changes"] == {
        "address": {f"{VIP}/32 dev lo0": {"old": f"{VIP}/24 dev lo0 (lo0:1)",
                                          "new": f"{VIP}/32 dev lo0 (lo0:1)"}},
        "file": {str(hostname): {"old": f"{VIP} netmask 255.255.255.0 up\n",
                                 "new": f"{VIP} netmask 255.255.255.255 up\n"}},
    }


def test_ifconfig_failure_half_way_through_a_step_is_reported(paths):
    fake = ifconfig_host().expect(PLUMB).expect(UP, retcode=1,
                                                stderr="ifconfig: SIOCSLIFADDR: lo0:1: bad")
    with pytest.raises(CommandExecutionError) as err:
        apply(fake, paths, vips=[VIP])
    assert err.value.info["changes"] == {}
    assert err.value.info["journal"] == ["ifconfig lo0:1 plumb"]
    assert err.value.info["not_applied"][0] == f"address {VIP}/32 dev lo0"
    assert list(pathlib.Path(paths["hostname_dir"]).iterdir()) == []


def test_ifconfig_audit_of_a_broken_host(paths):
    etc = pathlib.Path(paths["hostname_dir"])
    (etc / "hostname.lo0:1").write_text(f"{VIP} netmask 255.255.255.0 up\n")
    (etc / "hostname.lo0:2").write_text("198.51.100.103 netmask 255.255.255.255\n")
    fake = ifconfig_host("broken", strict="1")
    res = load_backend("solaris", fake).audit(
        vips=[VIP, "198.51.100.101", "198.51.100.103"], **paths)
    found = {(f["severity"], f["vip"], f["interface"]): f["message"] for f in res["findings"]}
    assert set(found) == {
        ("error", VIP, "lo0:1"),
        ("error", VIP, "lo0"),
        ("error", "198.51.100.101", "e1000g0:1"),
        ("error", "198.51.100.103", "lo0:2"),
        ("warning", "198.51.100.103", "lo0"),
        ("error", None, None),
    }
    assert found[("error", VIP, "lo0:1")].startswith(f"{VIP}/24 on lo0:1 has the wrong netmask")
    assert found[("error", VIP, "lo0")] == (
        f"{etc}/hostname.lo0:1 gives {VIP} /24: after a reboot it comes back with the wrong "
        "netmask")
    assert found[("error", "198.51.100.103", "lo0:2")].startswith("198.51.100.103 on lo0:2 is down")
    assert "does not bring 198.51.100.103 up" in found[("warning", "198.51.100.103", "lo0")]
    assert found[("error", None, None)].startswith("hostmodel is strong for IPv4")
    assert res["ok"] is False


def test_the_state_over_the_solaris_backend(paths):
    fake = ipadm_host()
    state, opts = load_state(load_backend("solaris", fake), test=True)
    predicted = state.present("rs", vips=[VIP], persist=True, **paths)
    assert predicted["result"] is None and fake.changes_run == []
    opts["test"] = False
    fake.expect(CREATE4)
    done = state.present("rs", vips=[VIP], persist=True, **paths)
    assert done["result"] is True and done["changes"] == predicted["changes"]
    absent_host = ipadm_host("applied").expect(["ipadm", "delete-addr", "lo0/lvs0"])
    absent, _ = load_state(load_backend("solaris", absent_host))
    assert absent.absent("rs", **paths)["result"] is True
    absent_host.assert_all_ran()
