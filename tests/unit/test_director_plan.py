"""lvs_director without a kernel: the IPVS message codec, the desired table and the plan."""

import copy
import socket

import pytest
import yaml
from salt.exceptions import SaltInvocationError

from tests.loadmod import REPO
from tests.loadmod import load

pytestmark = pytest.mark.unit

d = load("modules", "lvs_director", salt={}, opts={"id": "lb1"})
pillar_mod = load("modules", "lvs_pillar", opts={"id": "lb1"}, pillar={})
EXAMPLE = yaml.safe_load((REPO / "pillar.example").read_text())["lvs"]
V4, V6 = socket.AF_INET, socket.AF_INET6
VIP = "198.51.100.100"


def director_conf(lvs=None):
    conf = pillar_mod.director("lb1", lvs or EXAMPLE)
    options = dict(conf["options"], _id="lb1")
    return options, conf["services"]


def host(addrs=(), sysctl=None):
    return d.Host(
        links={"lo": {"index": 1, "mac": None}, "eth0": {"index": 2, "mac": "02:00:00:00:00:02"}},
        addrs={"lo": set(), "eth0": {"198.51.100.2/24", *addrs}},
        sysctl=sysctl or {"expire_nodest_conn": 1, "expire_quiescent_template": 1},
    )


def unwrap(encoded):
    """An encoded nested attribute as the dict the decoder gets from a dump."""
    return {encoded[2] | (encoded[3] << 8) & 0x3FFF: encoded[4:]}


@pytest.mark.parametrize(
    "svc",
    [
        d.Service(d.ServiceKey(V4, "tcp", VIP, 80), "wlc", 0, 0, 32),
        d.Service(d.ServiceKey(V4, "udp", VIP, 53), "sh",
                  d.SVC_F_PERSISTENT | d.SVC_F_SCHED[1] | d.SVC_F_SCHED[2], 600, 24),
        d.Service(d.ServiceKey(V6, "sctp", "2001:db8::100", 3868), "mh", d.SVC_F_ONEPACKET, 0, 128),
        d.Service(d.ServiceKey(V4, "fwmark", fwmark=7), "rr", d.SVC_F_PERSISTENT, 60, 32),
    ],
    ids=str,
)
def test_service_codec_round_trip(svc):
    raw = d.encode_service(svc)
    assert d.decode_service({d.ATTR_SERVICE: raw[4:]}) == svc


@pytest.mark.parametrize(
    "dest,af",
    [
        (d.Dest("198.51.100.11", 80, "dr", 100), V4),
        (d.Dest("198.51.100.12", 8080, "nat", 0, 1000, 10), V4),
        (d.Dest("203.0.113.5", 80, "tun", 65535, 0, 0, "gue", 6080, "remcsum"), V4),
        (d.Dest("2001:db8::11", 80, "tun", 5), V6),
        (d.Dest("2001:db8::12", 80, "tun", 5), V4),  # mixed families: TUN only
    ],
)
def test_dest_codec_round_trip(dest, af):
    raw = d.encode_dest(dest, af)
    assert d.decode_dest({d.ATTR_DEST: raw[4:]}, af) == dest


def test_desired_table_from_the_example():
    options, services = director_conf()
    table, names = d.desired_table(services)
    assert sorted(map(str, table)) == [
        "tcp 198.51.100.100:443", "tcp 198.51.100.100:80", "tcp [2001:db8::100]:80",
        "udp 198.51.100.100:53",
    ]
    svc, dests = table[d.ServiceKey(V4, "tcp", VIP, 80)]
    assert svc.scheduler == "wlc" and svc.flags == 0 and svc.timeout == 0
    assert sorted(dests) == [("198.51.100.11", 80), ("198.51.100.12", 80)]
    assert {x.fwd for x in dests.values()} == {"dr"} and {x.weight for x in dests.values()} == {100}
    assert names[d.ServiceKey(V4, "udp", VIP, 53)] == "dns"


def test_plan_from_empty_orders_services_dests_vip_then_garp():
    options, services = director_conf()
    desired, names = d.desired_table(services)
    plan = d.plan_director(desired, {}, host(), None, options, names)
    kinds = [a.kind for a in plan.actions]
    last_svc = max(i for i, k in enumerate(kinds) if k == "svc_add")
    first_dest = kinds.index("dest_add")
    assert last_svc < first_dest
    assert max(i for i, k in enumerate(kinds) if k == "dest_add") < kinds.index("vip_add")
    assert kinds[kinds.index("vip_add") + 1] == "garp"
    assert kinds.count("vip_add") == 2  # 198.51.100.100/32 and 2001:db8::100/128
    assert kinds.count("garp") == 1, "no ARP for IPv6"
    changes = plan.changes()
    assert changes["address"] == {
        f"{VIP}/32 dev eth0": {"old": None, "new": f"{VIP}/32 dev eth0"},
        "2001:db8::100/128 dev eth0": {"old": None, "new": "2001:db8::100/128 dev eth0"},
    }
    assert changes["realserver"]["tcp 198.51.100.100:80 -> 198.51.100.11:80"] == {
        "old": None, "new": {"forward": "dr", "weight": 100}}


def converged(desired):
    return {k: (svc, dict(dests)) for k, (svc, dests) in desired.items()}


def test_a_converged_director_has_nothing_to_do():
    options, services = director_conf()
    desired, names = d.desired_table(services)
    first = d.plan_director(desired, {}, host(), None, options, names)
    plan = d.plan_director(desired, converged(desired), host({f"{VIP}/32", "2001:db8::100/128"}),
                           first.record, options, names)
    assert plan.actions == [] and plan.changes() == {}


def test_edits_happen_in_place():
    options, services = director_conf()
    desired, names = d.desired_table(services)
    live = converged(desired)
    lvs = copy.deepcopy(EXAMPLE)
    lvs["services"]["web"]["scheduler"] = "rr"
    lvs["services"]["web"]["realservers"]["rs1"]["weight"] = 50
    options, services = director_conf(lvs)
    desired2, names = d.desired_table(services)
    plan = d.plan_director(desired2, live, host({f"{VIP}/32", "2001:db8::100/128"}), None,
                           options, names)
    kinds = {a.kind for a in plan.actions}
    assert kinds == {"svc_set", "dest_set"}, "never delete-and-add a live service"
    changes = plan.changes()
    assert changes["service"]["tcp 198.51.100.100:80"] == {"old": {"scheduler": "wlc"},
                                                           "new": {"scheduler": "rr"}}
    assert changes["realserver"]["tcp 198.51.100.100:443 -> 198.51.100.11:443"] == {
        "old": {"weight": 100}, "new": {"weight": 50}}


def test_removal_takes_the_vip_first_and_spares_unmanaged_entries():
    options, services = director_conf()
    desired, names = d.desired_table(services)
    first = d.plan_director(desired, {}, host(), None, options, names)
    live = converged(desired)
    stranger = d.ServiceKey(V4, "tcp", "203.0.113.9", 25)
    live[stranger] = (d.Service(stranger), {})
    lvs = copy.deepcopy(EXAMPLE)
    del lvs["services"]["web6"]
    del lvs["services"]["web"]["realservers"]["rs2"]
    options, services = director_conf(lvs)
    desired2, names = d.desired_table(services)
    plan = d.plan_director(desired2, live, host({f"{VIP}/32", "2001:db8::100/128"}),
                           first.record, options, names)
    kinds = [(a.kind, a.target) for a in plan.actions]
    assert kinds == [
        ("vip_del", "2001:db8::100/128 dev eth0"),
        ("dest_del", "tcp 198.51.100.100:80 -> 198.51.100.12:80"),
        ("dest_del", "tcp 198.51.100.100:443 -> 198.51.100.12:443"),
        ("svc_del", "tcp [2001:db8::100]:80"),
    ]
    assert any("203.0.113.9" in w and "prune" in w for w in plan.warnings)
    pruned = d.plan_director(desired2, live, host({f"{VIP}/32"}), first.record,
                             dict(options, prune=True), names)
    assert ("svc_del", "tcp 203.0.113.9:25") in [(a.kind, a.target) for a in pruned.actions]


def test_drain_sysctls_are_managed():
    options, services = director_conf()
    desired, names = d.desired_table(services)
    plan = d.plan_director(desired, {}, host(sysctl={"expire_nodest_conn": 0,
                                                     "expire_quiescent_template": 0}),
                           None, options, names)
    assert plan.changes()["sysctl"] == {
        "net.ipv4.vs.expire_nodest_conn": {"old": 0, "new": 1},
        "net.ipv4.vs.expire_quiescent_template": {"old": 0, "new": 1},
    }
    assert plan.actions[0].kind == "sysctl"


def test_kernel_dependent_checks_name_the_key():
    options, services = director_conf()
    with pytest.raises(SaltInvocationError) as err:
        d.validate_for_kernel(services, dict(options, interface="eth9"), host().links,
                              schedulers=["rr", "wlc"], kernel=(6, 1))
    text = str(err.value)
    assert "lvs:directors:lb1:interface: 'eth9' does not exist" in text
    assert "lvs:services:dns:scheduler: 'rr'" not in text
    lvs = copy.deepcopy(EXAMPLE)
    lvs["services"]["web"]["scheduler"] = "nosuch"
    lvs["services"]["dns"]["method"] = "tun"
    lvs["services"]["dns"]["realservers"]["rs1"]["tun_type"] = "gue"
    lvs["services"]["dns"]["realservers"]["rs1"]["tun_port"] = 6080
    lvs["services"]["web"]["method"] = "tun"  # the same VIP needs one method on real servers
    options, services = director_conf(lvs)
    with pytest.raises(SaltInvocationError) as err:
        d.validate_for_kernel(services, options, host().links, schedulers=["rr", "wlc"],
                              kernel=(4, 19))
    text = str(err.value)
    assert "lvs:services:web:scheduler: 'nosuch' is not available in this kernel" in text
    assert "lvs:services:dns:realservers:rs1:tun_type: 'gue' needs Linux 5.2" in text
    d.validate_for_kernel(services, options, host().links, schedulers=["rr", "wlc", "nosuch"],
                          kernel=(6, 1))


def test_weight_out_of_range_is_a_pillar_error():
    lvs = copy.deepcopy(EXAMPLE)
    lvs["services"]["web"]["realservers"]["rs1"]["weight"] = 65536
    with pytest.raises(SaltInvocationError, match="lvs:services:web:realservers:rs1:weight"):
        pillar_mod.director("lb1", lvs)


def test_a_fwmark_service_still_puts_its_vip_on_the_director():
    lvs = copy.deepcopy(EXAMPLE)
    lvs["services"] = {"marked": {"vip": "198.51.100.101", "protocol": "fwmark", "fwmark": 7,
                                  "method": "dr", "scheduler": "rr",
                                  "realservers": {"rs1": {"address": "198.51.100.11"}}}}
    options, services = director_conf(lvs)
    desired, names = d.desired_table(services)
    plan = d.plan_director(desired, {}, host(), None, options, names)
    assert "198.51.100.101/32 dev eth0" in plan.changes()["address"]
    live = {d.ServiceKey(V4, "fwmark", fwmark=7): desired[next(iter(desired))]}
    assert set(live) == set(desired), "the VIP is not part of a fwmark service's identity"
