"""Windows real servers: lvs_realserver_windows against recorded output.

Recorded output, NOT a real system: ``tests/fixtures/windows/`` holds the JSON the module's
PowerShell call prints (Get-NetAdapter, Get-NetIPInterface, Get-NetIPAddress), written from
Microsoft's documentation of those cmdlets (its SOURCES.md says which), replayed by
FakeCommands, which fails on any command nobody expected. The netsh commands are checked
against netsh's own syntax. Nothing here ran on Windows.
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

VIP = "198.51.100.100"
NETSH = ["netsh", "interface", "ipv4"]
NIC_RECEIVE = [*NETSH, "set", "interface", "Ethernet", "weakhostreceive=enabled",
               "store=persistent"]
LO_RECEIVE = [*NETSH, "set", "interface", "loopback", "weakhostreceive=enabled",
              "store=persistent"]
LO_SEND = [*NETSH, "set", "interface", "loopback", "weakhostsend=enabled", "store=persistent"]
ADD = [*NETSH, "add", "address", "loopback", VIP, "255.255.255.255", "store=persistent",
       "skipassource=true"]
DELETE = [*NETSH, "delete", "address", "loopback", VIP]


def observe_command():
    return load_backend("windows", FakeCommands()).OBSERVE


def host(state="fresh"):
    """A Windows host as recorded output (observe.<state>.json): not a real system."""
    return FakeCommands(reads={
        tuple(observe_command()): recorded("windows", f"observe.{state}.json")})


@pytest.fixture
def paths(tmp_path):
    return {"state_file": str(tmp_path / "realserver.json")}


def apply(fake, paths, vips=(VIP,), **kw):
    kw.setdefault("persist", True)
    kw.setdefault("exclusive", True)
    kw.setdefault("scope", "interfaces")
    return load_backend("windows", fake).apply(vips=list(vips), **paths, **kw)


def from_scratch(paths):
    fake = host()
    for cmd in (NIC_RECEIVE, LO_RECEIVE, LO_SEND, ADD):
        fake.expect(cmd)
    return apply(fake, paths), fake


def test_backend_is_chosen_by_the_kernel_grain():
    mod = load_backend("windows", FakeCommands())
    assert mod.__virtual__() == "lvs_realserver"
    mod.__grains__["kernel"] = "Linux"
    assert mod.__virtual__()[0] is False


def test_observe_is_one_powershell_call_with_single_quotes_only():
    cmd = observe_command()
    assert cmd[:4] == ["powershell.exe", "-NoProfile", "-NonInteractive", "-Command"]
    assert '"' not in cmd[4], "a double quote would be mangled when the argv is joined"
    for cmdlet in ("Get-NetAdapter", "Get-NetIPInterface", "Get-NetIPAddress", "ConvertTo-Json"):
        assert cmdlet in cmd[4]


def test_from_scratch_sets_weak_host_before_the_vip(paths):
    res, fake = from_scratch(paths)
    fake.assert_all_ran()
    assert fake.changes_run == [NIC_RECEIVE, LO_RECEIVE, LO_SEND, ADD]
    assert res["changes"] == {
        "setting": {
            "Ethernet weakhostreceive": {"old": "disabled", "new": "enabled"},
            "loopback weakhostreceive": {"old": "disabled", "new": "enabled"},
            "loopback weakhostsend": {"old": "disabled", "new": "enabled"},
        },
        "address": {f"{VIP}/32 dev loopback": {
            "old": None, "new": f"{VIP}/32 dev loopback skipassource=true"}},
    }
    record = json.loads(pathlib.Path(paths["state_file"]).read_text())
    assert record["vips"] == {VIP: {"device": "loopback"}}
    assert record["settings"]["Ethernet weakhostreceive"] == {
        "interface": "Ethernet", "key": "weakhostreceive", "original": "disabled",
        "set": "enabled"}


def test_second_run_and_test_mode(paths):
    fake = host()
    predicted = apply(fake, paths, test=True)
    assert fake.changes_run == [] and fake.reads_run == [observe_command()]
    assert not pathlib.Path(paths["state_file"]).exists()
    done, _ = from_scratch(paths)
    assert done["changes"] == predicted["changes"]
    again = host("applied")
    res = apply(again, paths)
    assert res["changes"] == {} and again.changes_run == []


def test_removal_goes_vip_first_then_sets_back_what_it_changed(paths):
    from_scratch(paths)
    fake = host("applied")
    fake.expect(DELETE)
    fake.expect([*NETSH, "set", "interface", "loopback", "weakhostsend=disabled",
                 "store=persistent"])
    fake.expect([*NETSH, "set", "interface", "loopback", "weakhostreceive=disabled",
                 "store=persistent"])
    fake.expect([*NETSH, "set", "interface", "Ethernet", "weakhostreceive=disabled",
                 "store=persistent"])
    mod = load_backend("windows", fake)
    res = mod.remove(**paths)
    fake.assert_all_ran()
    assert fake.changes_run[0] == DELETE
    assert res["changes"]["address"] == {f"{VIP}/32 dev loopback": {
        "old": f"{VIP}/32 dev loopback skipassource=true", "new": None}}
    assert mod.managed(**paths)["settings"] == {}


def test_settings_someone_else_changed_are_left_alone(paths):
    from_scratch(paths)
    fake = host("fresh")  # the VIP is gone and every setting is disabled again
    res = load_backend("windows", fake).remove(**paths)
    assert fake.changes_run == [] and res["changes"] == {}
    assert len(res["warnings"]) == 3
    assert res["warnings"][0].endswith("someone changed it since; left as it is")


def test_interfaces_and_scope_choose_the_nics(paths):
    fake = host()
    nic2 = [*NETSH, "set", "interface", "Ethernet 2", "weakhostreceive=enabled",
            "store=persistent"]
    for cmd in (nic2, LO_RECEIVE, LO_SEND, ADD):
        fake.expect(cmd)
    apply(fake, paths, interfaces=["Ethernet 2"])
    fake.assert_all_ran()
    everything = host()
    res = apply(everything, paths, scope="all", test=True)
    assert set(res["changes"]["setting"]) == {
        "Ethernet weakhostreceive", "Ethernet 2 weakhostreceive", "loopback weakhostreceive",
        "loopback weakhostsend"}


def test_persist_false_uses_the_active_store(paths):
    fake = host()
    for cmd in (NIC_RECEIVE, LO_RECEIVE, LO_SEND, ADD):
        fake.expect([c.replace("store=persistent", "store=active") for c in cmd])
    apply(fake, paths, persist=False)
    fake.assert_all_ran()


def test_a_broken_vip_is_repaired_and_a_missing_flag_set_in_place(paths):
    fake = host("broken")
    for cmd in (NIC_RECEIVE, LO_SEND, DELETE, ADD):
        fake.expect(cmd)
    res = apply(fake, paths)
    fake.assert_all_ran()
    assert res["changes"]["address"] == {
        f"{VIP}/8 dev loopback": {"old": f"{VIP}/8 dev loopback skipassource=false",
                                  "new": None},
        f"{VIP}/32 dev loopback": {"old": None,
                                   "new": f"{VIP}/32 dev loopback skipassource=true"},
    }
    flag = host("skipassource-false")
    flag.expect(["powershell.exe", "-NoProfile", "-NonInteractive", "-Command",
                 f"Set-NetIPAddress -InterfaceAlias 'loopback' -IPAddress '{VIP}' "
                 "-SkipAsSource $true"])
    res = apply(flag, paths)
    flag.assert_all_ran()
    assert res["changes"]["address"][f"{VIP}/32 dev loopback"] == {
        "old": f"{VIP}/32 dev loopback skipassource=false",
        "new": f"{VIP}/32 dev loopback skipassource=true"}


@pytest.mark.parametrize(
    ("state", "kwargs", "message"),
    [
        ("broken", {"vips": ["198.51.100.101"]},
         "vips:0: 198.51.100.101 is configured on Ethernet, which answers ARP for it"),
        ("no-loopback", {}, "vips:0: no Microsoft KM-TEST Loopback Adapter on this host"),
        ("fresh", {"interfaces": ["Ethernet 9"]},
         "interfaces: 'Ethernet 9' is not a network adapter on this host"),
        ("fresh", {"device": "Ethernet"},
         "vips:0: device 'Ethernet' is not a loopback adapter on this host"),
    ],
)
def test_refusals_after_observing_change_nothing(paths, state, kwargs, message):
    fake = host(state)
    with pytest.raises(SaltInvocationError) as err:
        apply(fake, paths, **kwargs)
    assert message in str(err.value)
    assert fake.changes_run == []


@pytest.mark.parametrize(
    ("vips", "message"),
    [
        (["2001:db8::100"], "vips:0: 2001:db8::100: IPv6 VIPs are not handled on Windows"),
        (["198.51.100.300"], "vips:0: '198.51.100.300' is not an IP address"),
        ([{"address": VIP, "device": "tunl0"}], f"vips:0: {VIP} is a TUN VIP"),
    ],
)
def test_bad_input_names_the_key_and_runs_no_command(paths, vips, message):
    fake = FakeCommands()
    with pytest.raises(SaltInvocationError) as err:
        apply(fake, paths, vips=vips)
    assert message in str(err.value)
    assert fake.calls == []


def test_a_failed_netsh_stops_the_run(paths):
    fake = host()
    fake.expect(NIC_RECEIVE).expect(LO_RECEIVE).expect(
        LO_SEND, retcode=1, stdout="The requested operation requires elevation (Run as "
        "administrator).")
    with pytest.raises(CommandExecutionError) as err:
        apply(fake, paths)
    info = err.value.info
    assert set(info["changes"]["setting"]) == {"Ethernet weakhostreceive",
                                               "loopback weakhostreceive"}
    assert info["not_applied"] == ["setting loopback weakhostsend",
                                   f"address {VIP}/32 dev loopback"]
    assert "requires elevation" in str(err.value)
    assert ADD not in fake.changes_run, "the VIP is never added without weak-host send"
    record = json.loads(pathlib.Path(paths["state_file"]).read_text())
    assert set(record["settings"]) == {"Ethernet weakhostreceive", "loopback weakhostreceive",
                                       "loopback weakhostsend"}


def test_audit_of_a_broken_host(paths):
    fake = host("broken")
    res = load_backend("windows", fake).audit(vips=[VIP, "198.51.100.101"], **paths)
    assert fake.changes_run == []
    found = {(f["severity"], f["vip"], f["interface"], f["message"].split(":")[0])
             for f in res["findings"]}
    assert found == {
        ("error", VIP, "loopback", f"{VIP}/8 on loopback has a mask wider than 255.255.255.255"),
        ("warning", VIP, "loopback",
         f"{VIP} on loopback may be chosen as the source address of connections this host "
         "opens (skipassource is false)"),
        ("error", VIP, "loopback", "weakhostsend is not enabled on the loopback adapter loopback"),
        ("error", VIP, "Ethernet", "weakhostreceive is not enabled on Ethernet"),
        ("error", "198.51.100.101", "Ethernet", "198.51.100.101 is configured on Ethernet"),
    }
    assert res["ok"] is False


def test_audit_of_the_applied_host_and_of_one_without_loopback_adapter(paths):
    clean = load_backend("windows", host("applied")).audit(**paths)
    assert clean["ok"] is True and clean["findings"] == []
    assert clean["source"] == "loopback adapter" and list(clean["vips"]) == [VIP]
    assert clean["interfaces"]["loopback"]["weakhostsend"] == "enabled"
    bare = load_backend("windows", host("no-loopback")).audit(vips=[VIP], **paths)
    assert [(f["severity"], f["message"].split(":")[0]) for f in bare["findings"]] == [
        ("error", "no Microsoft KM-TEST Loopback Adapter"),
        ("warning", f"{VIP} is not configured on this host"),
    ]


def test_the_state_over_the_windows_backend(paths):
    fake = host()
    state, opts = load_state(load_backend("windows", fake), test=True)
    predicted = state.present("rs", vips=[VIP], persist=True, scope="interfaces", **paths)
    assert predicted["result"] is None and fake.changes_run == []
    opts["test"] = False
    for cmd in (NIC_RECEIVE, LO_RECEIVE, LO_SEND, ADD):
        fake.expect(cmd)
    done = state.present("rs", vips=[VIP], persist=True, scope="interfaces", **paths)
    assert done["result"] is True and done["changes"] == predicted["changes"]
    fake.assert_all_ran()
