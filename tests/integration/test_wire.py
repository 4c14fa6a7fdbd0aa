"""On the wire: what a user of the formula sees after ``state.apply lvs`` on real servers.

The lab (lab/netlab.py) is a LAN of network namespaces: client, director lb1 (VIP on eth0),
real servers rs1 and rs2. The formula is deployed the file-root way, ``salt-call --local
saltutil.sync_all`` then ``state.apply lvs`` inside each real server's namespace, with
``pillar.example`` as the pillar. Every assertion is about packets (who answers ARP, which sender
address a real server's ARP requests carry, where TCP replies come from) or about what a second
run reports; none is about timing.
"""

from __future__ import annotations

import pytest

from lab.netlab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REALSERVERS = ["rs1", "rs2"]


def lo_addresses(lab, name):
    return {a.split("/")[0] for a in lab.host(name).addresses("lo")}


def changed(state_ret: dict) -> list[str]:
    return [sid for sid, s in state_ret.items() if isinstance(s, dict) and s.get("changes")]


def failed(state_ret: dict) -> list[str]:
    return [sid for sid, s in state_ret.items() if isinstance(s, dict) and s.get("result") is False]


# --------------------------------------------------------------------------------------------
# The usual broken setup (VIP on lo, default sysctls), then the formula


@pytest.fixture(scope="module")
def fixed(new_cluster):
    """rs1 and rs2 start with the copy-paste setup; what the wire showed then is kept; then the
    formula runs in both."""
    with Lab() as lab:
        for name in REALSERVERS:
            lab.naive_realserver(name)
        cluster = new_cluster(lab)
        cluster.before_arp = lab.arp_responders()
        cluster.before_senders = {name: lab.own_arp_senders(name) for name in REALSERVERS}
        cluster.first_run = cluster.deploy(REALSERVERS)
        yield cluster


def test_only_the_director_answers_arp_for_the_vip(fixed):
    lab = fixed.lab
    assert fixed.before_arp == {"lb1", "rs1", "rs2"}, "the copy-paste setup should race"
    assert all(changed(ret) and not failed(ret) for ret in fixed.first_run.values())
    assert lab.arp_responders() == {"lb1"}
    # the VIP is still where DR needs it, and the real servers still answer for their own RIP
    for name in REALSERVERS:
        assert lab.vip in lo_addresses(lab, name)
        assert lab.arp_responders(lab.host(name).address) == {name}


def test_only_the_director_advertises_the_ipv6_vip(fixed):
    lab = fixed.lab
    for name in REALSERVERS:
        assert lab.vip6 in lo_addresses(lab, name)
    assert lab.ndp_responders() == {"lb1"}


@pytest.mark.parametrize("name", REALSERVERS)
def test_a_real_servers_own_arp_requests_carry_its_rip_never_the_vip(fixed, name):
    lab = fixed.lab
    assert lab.vip in fixed.before_senders[name], "arp_announce=0 should have leaked the VIP"
    assert lab.own_arp_senders(name) == {lab.host(name).address}


def test_tcp_to_the_vip_is_answered_from_the_vip_straight_by_a_real_server(fixed):
    lab = fixed.lab
    lab.flush_neighbours("client")  # forget whatever the race taught the client
    lab.director_standin(ports=(80, 443))
    lab.start_tcp_servers(80)
    results = [lab.tcp_request(port=80) for _ in range(8)]
    assert all(r["ok"] for r in results), [r.get("error") for r in results]
    for r in results:
        assert r["server"] in REALSERVERS
        assert r["server_local"] == f"{lab.vip}:80"  # the real server accepted it on the VIP
        assert r["peer"] == f"{lab.vip}:80"
        assert r["sent_to"] == ["lb1"]  # the client talks to the director...
        assert r["reply_from"] == [r["server"]]  # ...and the answer bypasses it
    assert lab.name_of(lab.neighbour("client", lab.vip)) == "lb1"


def test_a_second_run_reports_no_changes(fixed):
    predicted = fixed.apply(REALSERVERS, "test=True")
    again = fixed.apply(REALSERVERS)
    for name in REALSERVERS:
        assert changed(predicted[name]) == [], predicted[name]
        assert changed(again[name]) == [], again[name]
        assert failed(again[name]) == []
    assert fixed.lab.arp_responders() == {"lb1"}


# --------------------------------------------------------------------------------------------
# Clean real servers: no window while the formula adds the VIP, none while it takes it away


def test_no_real_server_answers_arp_while_the_vip_is_added_or_removed(new_cluster, pillar_without):
    with Lab() as lab:
        cluster = new_cluster(lab)
        assert lab.arp_responders() == {"lb1"}

        with lab.arp_watch() as during_apply:
            cluster.deploy(REALSERVERS)
        for name in REALSERVERS:
            assert lab.vip in lo_addresses(lab, name)  # the watch did cover an addition
        assert set(during_apply.responders) == {"lb1"}, during_apply.result

        # Take the real servers out both ways a user would: rs1 by dropping it from the pillar
        # (the formula then removes what it manages), rs2 by the absent state.
        cluster.conf("rs1", pillar_without("rs1"))
        with lab.arp_watch() as during_removal:
            removed = cluster.apply(["rs1"])["rs1"]
            absent = cluster.salt("rs2", "state.single", "lvs_realserver.absent", "name=rs-out")
        assert changed(removed) and not failed(removed), removed
        assert changed(absent) and not failed(absent), absent
        assert set(during_removal.responders) == {"lb1"}, during_removal.result

        for name in REALSERVERS:
            host = lab.host(name)
            assert not {lab.vip, lab.vip6} & lo_addresses(lab, name)
            assert host.arp_sysctls()["eth0"] == (0, 0)  # put back as found
            persist = cluster.persist_dir(name)
            assert not (persist / "realserver-vips.batch").exists()  # nothing re-adds it at boot
            assert not (persist / "systemd" / "lvs-realserver.service").exists()
        assert lab.arp_responders() == {"lb1"}


# --------------------------------------------------------------------------------------------
# A real server with a second NIC that does not face the VIP network


def test_two_nics_only_the_vip_facing_one_is_changed(new_cluster):
    with Lab(second_nic={"rs1": "203.0.113.11"}) as lab:
        rs1 = lab.host("rs1")
        before = rs1.arp_sysctls()
        cluster = new_cluster(lab)
        ret = cluster.deploy(["rs1"])["rs1"]
        assert not failed(ret), ret
        after = rs1.arp_sysctls()
        assert after["eth0"] == (1, 2)
        assert after["eth1"] == before["eth1"]  # the back-end NIC is left alone
        assert after["all"] == before["all"]  # and so is every other interface
        assert lab.vip in lo_addresses(lab, "rs1")
        assert lab.arp_responders() == {"lb1"}
        assert lab.own_arp_senders("rs1") == {rs1.address}
