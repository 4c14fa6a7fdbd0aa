"""The lvs pillar contract: valid trees pass, every bad value is refused naming its key."""

import copy

import pytest
import yaml
from salt.exceptions import SaltInvocationError

from tests.loadmod import REPO
from tests.loadmod import load

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def example():
    return yaml.safe_load((REPO / "pillar.example").read_text())["lvs"]


@pytest.fixture
def mod():
    return load("modules", "lvs_pillar", opts={"id": "rs1"}, pillar={})


def test_pillar_example_is_valid(mod, example):
    model = mod.validate(example)
    assert model["services"]["web"]["vip"] == "198.51.100.100"
    assert model["services"]["web"]["realservers"]["rs1"]["address"] == "198.51.100.11"
    assert model["realserver"]["scope"] == "interfaces"


def test_realserver_finds_its_vips_by_minion_id(mod, example):
    conf = mod.realserver("rs1", example)
    assert [v["address"] for v in conf["vips"]] == ["198.51.100.100", "2001:db8::100"]
    web = conf["vips"][0]
    assert web["device"] == "lo"
    assert web["services"] == ["web", "dns"]  # one VIP, two services: held once
    assert conf["arp_method"] == "sysctl" and conf["persist"] is True
    assert mod.realserver("lb1", example)["vips"] == []
    assert mod.realserver("stranger", example)["vips"] == []


def test_nat_services_put_no_vip_on_real_servers(mod, example):
    lvs = copy.deepcopy(example)
    for svc in lvs["services"].values():
        svc["method"] = "nat"
    assert mod.realserver("rs1", lvs)["vips"] == []


def test_tun_services_hold_the_vip_on_tunl0(mod, example):
    lvs = copy.deepcopy(example)
    for svc in lvs["services"].values():
        svc["method"] = "tun"
    assert {v["device"] for v in mod.realserver("rs1", lvs)["vips"]} == {"tunl0"}


def test_roles(mod, example):
    assert mod.roles("rs1", example) == ["realserver"]
    assert mod.roles("lb1", example) == ["director"]
    assert mod.roles("nobody", example) == []
    # tolerant of a broken tree: init.sls must still render and let the state report it
    assert mod.roles("rs1", {"services": "garbage"}) == []
    assert mod.roles("rs1", {"services": {"web": {"realservers": {"rs1": None}}}}) == ["realserver"]


def _set(tree, path, value):
    node = tree
    for part in path[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()

BAD = [
    # (path in the tree, bad value, key the error must name, words it must contain)
    (("services", "web", "vip"), "10.0.0.300", "lvs:services:web:vip", "not an IP address"),
    (("services", "web", "vip"), "198.51.100.100/32", "lvs:services:web:vip", "prefix"),
    (("services", "web", "vip"), _DELETE, "lvs:services:web:vip", "missing"),
    (
        ("services", "web", "realservers", "rs1", "address"),
        "198.51.100.100",
        "lvs:services:web:realservers:rs1:address",
        "equals the service VIP",
    ),
    (
        ("services", "web", "realservers", "rs2", "address"),
        "not-an-ip",
        "lvs:services:web:realservers:rs2:address",
        "not an IP address",
    ),
    (("services", "web", "method"), "masq", "lvs:services:web:method", "not one of"),
    (("services", "web", "protocol"), "icmp", "lvs:services:web:protocol", "not one of"),
    (("services", "web", "ports"), [80, 70000], "lvs:services:web:ports:1", "from 1 to 65535"),
    (("services", "web", "ports"), [0], "lvs:services:web:ports:0", "from 1 to 65535"),
    (("services", "web", "ports"), _DELETE, "lvs:services:web:ports", "missing"),
    (("services", "web", "realservers"), {}, "lvs:services:web:realservers", "at least one"),
    (("services", "web", "realservers"), _DELETE, "lvs:services:web:realservers", "at least one"),
    (
        ("services", "web", "realservers", "rs1", "weight"),
        70000,
        "lvs:services:web:realservers:rs1:weight",
        "0 to 65535",
    ),
    (("services", "web", "persistence"), -1, "lvs:services:web:persistence", ">= 0"),
    (("realserver", "arp_method"), "magic", "lvs:realserver:arp_method", "not one of"),
    (("realserver", "scope"), "everything", "lvs:realserver:scope", "not one of"),
    (("realserver", "persist"), "yes please", "lvs:realserver:persist", "true or false"),
    (("realserver", "colour"), "blue", "lvs:realserver:colour", "unknown key"),
    (("directors", "lb1", "interface"), _DELETE, "lvs:directors:lb1:interface", "missing"),
    (("services", "dns", "method"), "tun", "lvs:services:", "one forwarding method"),
]


@pytest.mark.parametrize("path,value,key,words", BAD, ids=[f"{b[2]}-{b[3]}" for b in BAD])
def test_bad_pillar_names_the_key(mod, example, path, value, key, words):
    lvs = copy.deepcopy(example)
    _set(lvs, path, value)
    with pytest.raises(SaltInvocationError) as err:
        mod.validate(lvs)
    lines = [line for line in str(err.value).splitlines() if line.startswith(key)]
    assert lines, f"no error names {key}: {err.value}"
    assert any(words in line for line in lines), str(err.value)
    # the per-minion view refuses the same tree: nothing downstream sees a bad pillar
    with pytest.raises(SaltInvocationError):
        mod.realserver("rs1", lvs)


def test_an_arp_method_not_available_is_refused_naming_the_key(mod, example, monkeypatch):
    monkeypatch.setattr(mod, "ARP_METHODS_AVAILABLE", ("sysctl",))
    lvs = copy.deepcopy(example)
    lvs["realserver"]["arp_method"] = "nftables"
    with pytest.raises(SaltInvocationError, match="lvs:realserver:arp_method: 'nftables' is not "
                                                  "available"):
        mod.validate(lvs)


def test_all_errors_are_reported_at_once(mod, example):
    lvs = copy.deepcopy(example)
    lvs["services"]["web"]["vip"] = "nope"
    lvs["services"]["dns"]["ports"] = [99999]
    with pytest.raises(SaltInvocationError) as err:
        mod.validate(lvs)
    text = str(err.value)
    assert "lvs:services:web:vip" in text and "lvs:services:dns:ports:0" in text


def test_empty_pillar_means_no_vips(mod):
    assert mod.realserver("rs1", {})["vips"] == []
