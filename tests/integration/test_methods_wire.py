"""Every arp_method on the wire, and switching between them, through ``salt-call --local``.

The lab (lab/netlab.py): client, director lb1 holding the VIP, real servers rs1 and rs2 on one
bridge. The formula is deployed the file-root way with ``pillar.example``, its
``lvs:realserver:arp_method`` set per test. For each method the wire must show the same thing:
only the director answers ARP for the VIP, a real server's own ARP requests never carry the VIP
as sender (the real servers' ARP sysctls stay at the kernel's defaults for the rule methods, so
only the rules can be keeping them quiet), and TCP to the VIP through the director stand-in
reaches a real server whose reply comes straight back from the VIP. A continuous ARP probe runs
during every switch of method and must never see a real server answer.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from lab import saltenv
from lab.netlab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REALSERVERS = ["rs1", "rs2"]
EXAMPLE = yaml.safe_load((saltenv.REPO / "pillar.example").read_text())
METHODS = ["nftables"]


def pillar(method: str) -> dict:
    out = copy.deepcopy(EXAMPLE)
    out["lvs"]["realserver"]["arp_method"] = method
    return out


def failed(ret: dict) -> list[str]:
    return [sid for sid, s in ret.items() if isinstance(s, dict) and s.get("result") is False]


def changed(ret: dict) -> list[str]:
    return [sid for sid, s in ret.items() if isinstance(s, dict) and s.get("changes")]


def apply_method(cluster, method: str, names=REALSERVERS) -> dict:
    for name in names:
        cluster.conf(name, pillar(method))
    rets = cluster.apply(names)
    for name, ret in rets.items():
        assert not failed(ret), (name, ret)
    return rets


def reply_arp_senders(lab, name: str) -> set[str]:
    """Sender IPs of the ARP requests ``name`` sends to reach the client while it answers a TCP
    connection the director forwarded to it (its neighbour cache flushed first). This works for
    every method, redirect included, where the real server holds no VIP to bind to."""
    host = lab.host(name)
    cap = lab.spawn_probe("client", "arp-senders", "eth0", "--mac", host.mac, "--window", "3",
                          "--count", "1", "--target", lab.client.address)
    for _ in range(8):  # the stand-in hashes client port: a few connections reach every server
        host.ip("neigh", "flush", "all")
        lab.flush_neighbours("client")
        res = lab.tcp_request(port=80)
        assert res["ok"], res
        if res["server"] == name:
            break
    return set(lab.finish_probe(cap, timeout=10, stop=False)["sender_ips"])


def check_wire(lab, method: str) -> None:
    assert lab.arp_responders() == {"lb1"}
    for name in REALSERVERS:
        # the real servers still answer for their own address
        assert lab.arp_responders(lab.host(name).address) == {name}
        if method != "redirect":
            assert lab.own_arp_senders(name) == {lab.host(name).address}
        senders = reply_arp_senders(lab, name)
        assert senders == {lab.host(name).address}, (name, senders)
    results = [lab.tcp_request(port=80) for _ in range(8)]
    assert all(r["ok"] for r in results), [r.get("error") for r in results]
    for r in results:
        assert r["server"] in REALSERVERS
        assert r["peer"] == f"{lab.vip}:80"
        assert r["sent_to"] == ["lb1"]
        assert r["reply_from"] == [r["server"]], r
        # redirect: the service sees the connection on the real address; the client the VIP
        local = lab.host(r["server"]).address if method == "redirect" else lab.vip
        assert r["server_local"] == f"{local}:80", r
    assert lab.name_of(lab.neighbour("client", lab.vip)) == "lb1"


@pytest.fixture(scope="module")
def cluster(new_cluster):
    with Lab() as lab:
        lab.director_standin(ports=(80, 443))
        lab.start_tcp_servers(80)
        cl = new_cluster(lab, pillar("sysctl"))
        for name in REALSERVERS:
            saltenv.salt_call(cl.conf(name), "saltutil.sync_all", netns=lab.host(name).ns)
        yield cl


@pytest.mark.parametrize("method", METHODS)
def test_each_method_from_a_clean_host_on_the_wire(cluster, method):
    lab = cluster.lab
    with lab.arp_watch() as watch:
        first = apply_method(cluster, method)
    assert set(watch.responders) == {"lb1"}, watch.result
    assert all(changed(ret) for ret in first.values())
    for name in REALSERVERS:
        held = {a.split("/")[0] for a in lab.host(name).addresses("lo")}
        assert (lab.vip in held) is (method != "redirect")
        if method != "sysctl":
            assert lab.host(name).arp_sysctls()["eth0"] == (0, 0), "rules alone keep it quiet"
    check_wire(lab, method)
    predicted = cluster.apply(REALSERVERS, "test=True")
    again = cluster.apply(REALSERVERS)
    for name in REALSERVERS:
        assert changed(predicted[name]) == [] and changed(again[name]) == [], again[name]
    # and back to nothing, with the probe watching
    with lab.arp_watch() as watch:
        for name in REALSERVERS:
            ret = cluster.salt(name, "state.single", "lvs_realserver.absent", "name=out")
            assert not failed(ret), ret
    assert set(watch.responders) == {"lb1"}, watch.result
    for name in REALSERVERS:
        assert lab.host(name).arp_sysctls()["eth0"] == (0, 0)
        assert lab.vip not in {a.split("/")[0] for a in lab.host(name).addresses("lo")}
        assert lab.host(name).ns.run("nft", "list", "tables").stdout.strip() == ""


SWITCHES = [("sysctl", m) for m in METHODS] + [(m, "sysctl") for m in METHODS] + [
    (a, b) for a in METHODS for b in METHODS if a != b]


def test_switching_methods_never_opens_a_window(cluster):
    """sysctl -> each method -> sysctl, and between the rule methods, with a continuous ARP
    probe during every switch; the wire is checked after each one."""
    lab = cluster.lab
    apply_method(cluster, "sysctl")
    current = "sysctl"
    order = ["sysctl"]
    for a, b in SWITCHES:
        if a != current:
            apply_method(cluster, a)
            current = a
        with lab.arp_watch() as watch:
            rets = apply_method(cluster, b)
        current = b
        order.append(b)
        assert set(watch.responders) == {"lb1"}, (a, b, watch.result)
        assert all(changed(ret) for ret in rets.values()), (a, b)
        check_wire(lab, b)
    assert len(order) > len(METHODS)
