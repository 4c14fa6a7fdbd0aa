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
# "redirect-iptables": arp_method redirect with the minion config's redirect_backend set to
# iptables (legacy iptables here, the other flavour is covered in tests/functional);
# "arptables" runs arptables-legacy, "arptables-nft" the nft-backed binary
METHODS = ["nftables", "arptables", "arptables-nft", "redirect", "redirect-iptables"]
ARPTABLES_BIN = {"arptables": "arptables-legacy", "arptables-nft": "arptables-nft"}


def pillar(method: str) -> dict:
    out = copy.deepcopy(EXAMPLE)
    out["lvs"]["realserver"]["arp_method"] = method.split("-")[0]
    return out


def configure(cluster, name: str, method: str) -> None:
    backend = "iptables" if method.endswith("-iptables") else "auto"
    extra = {"lvs_realserver": {"redirect_backend": backend, "iptables_bin": "iptables-legacy",
                                "arptables_bin": ARPTABLES_BIN.get(method, "arptables-legacy")}}
    cluster.confs[name] = saltenv.make_local_config(cluster.workdir / name, name, pillar(method),
                                                    saltenv.REPO, extra=extra)


def failed(ret: dict) -> list[str]:
    return [sid for sid, s in ret.items() if isinstance(s, dict) and s.get("result") is False]


def changed(ret: dict) -> list[str]:
    return [sid for sid, s in ret.items() if isinstance(s, dict) and s.get("changes")]


def apply_method(cluster, method: str, names=REALSERVERS) -> dict:
    for name in names:
        configure(cluster, name, method)
    rets = cluster.apply(names)
    for name, ret in rets.items():
        assert not failed(ret), (name, ret)
    return rets


def reply_arp_senders(lab, name: str) -> set[str]:
    """Sender IPs of the ARP requests ``name`` sends to reach the client while it answers a TCP
    connection the director forwarded to it (its neighbour cache flushed first). This works for
    every method, redirect included, where the real server holds no VIP to bind to."""
    host = lab.host(name)
    # the capture ends right after the first request; the long window only matters on a loaded
    # machine, where the connections below can take longer than a few seconds to reach `name`
    cap = lab.spawn_probe("client", "arp-senders", "eth0", "--mac", host.mac, "--window", "30",
                          "--count", "1", "--target", lab.client.address)
    # the stand-in hashes the client's port: each connection reaches `name` with probability
    # 1/2, so 40 tries miss it with probability 2**-40 (8 would miss once in 256 calls)
    for _ in range(40):
        host.ip("neigh", "flush", "all")
        lab.flush_neighbours("client")
        res = lab.tcp_request(port=80)
        assert res["ok"], res
        if res["server"] == name:
            break
    else:
        raise AssertionError(f"no connection reached {name} in 40 tries")
    return set(lab.finish_probe(cap, timeout=40, stop=False)["sender_ips"])


def check_wire(lab, method: str) -> None:
    assert lab.arp_responders() == {"lb1"}
    for name in REALSERVERS:
        # the real servers still answer for their own address
        assert lab.arp_responders(lab.host(name).address) == {name}
        if not method.startswith("redirect"):
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
        local = lab.host(r["server"]).address if method.startswith("redirect") else lab.vip
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
        assert (lab.vip in held) is (not method.startswith("redirect"))
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
        # arptables-nft keeps its own (now empty) `table arp filter`: not ours to delete
        tables = set(lab.host(name).ns.run("nft", "list", "tables").stdout.split("\n"))
        assert tables - {"", "table arp filter"} == set(), tables
        assert "SALTEXT_LVS" not in lab.host(name).ns.run("iptables-legacy-save").stdout
        for binary in ARPTABLES_BIN.values():
            assert "LVS_RS" not in lab.host(name).ns.run(binary, "-L", "-n").stdout


# sysctl -> each method -> sysctl, then a cycle through the others: every method is switched
# to and from at least twice
SWITCHES = [pair for m in METHODS for pair in (("sysctl", m), (m, "sysctl"))] + [
    (a, b) for a, b in zip(METHODS, METHODS[1:] + METHODS[:1])]


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


# --------------------------------------------------------------------------------------------
# audit tells what the wire shows, for every method and for a broken rule set


TAMPER = {
    # method: (break the output rewrite, break the input drop), run in the real server. For
    # the rule methods the output rule also rewrites the sender of the host's ARP *replies*,
    # so without the input drop a reply still never says "VIP is at <real server>": only with
    # both rules gone does the wire show the real server answering for the VIP.
    "sysctl": ([["sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/eth0/arp_announce"]],
               [["sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/eth0/arp_ignore"]]),
    "nftables": ([["nft", "flush", "chain", "arp", "saltext_lvs", "output"]],
                 [["nft", "flush", "chain", "arp", "saltext_lvs", "input"]]),
    # (a repair swaps the generation: flush whichever of A/B is in force)
    "arptables": ([["sh", "-c", "for c in $(arptables-legacy -L -n | sed -n "
                    "'s/^Chain \\(LVS_RS_OUT_[AB]\\) .*/\\1/p'); do arptables-legacy -F $c; done"]],
                  [["sh", "-c", "for c in $(arptables-legacy -L -n | sed -n "
                    "'s/^Chain \\(LVS_RS_IN_[AB]\\) .*/\\1/p'); do arptables-legacy -F $c; done"]]),
}


def audit(cluster, name: str) -> dict:
    return cluster.salt(name, "lvs_realserver.audit", f"vips=[{cluster.lab.vip}]")


def errors(report: dict) -> set[tuple[str, str]]:
    return {(f["interface"], "answers" if "answers ARP" in f["message"] else "leaks")
            for f in report["findings"] if f["severity"] == "error"}


@pytest.mark.parametrize("method", ["sysctl", "nftables", "arptables", "redirect"])
def test_audit_agrees_with_the_wire(cluster, method):
    lab = cluster.lab
    apply_method(cluster, method, names=["rs1"])
    report = audit(cluster, "rs1")
    assert report["ok"] is True and errors(report) == set(), report["findings"]
    assert lab.arp_responders() == {"lb1"}
    if method == "redirect":
        assert report["vips"][lab.vip]["redirected_by"] == "table ip saltext_lvs"
        return
    if method != "sysctl":
        assert report["vips"][lab.vip]["arp_rules"], report["vips"]
    leak, answer = TAMPER[method]
    for argv in leak:
        lab.host("rs1").ns.run(*argv)
    assert errors(audit(cluster, "rs1")) == {("eth0", "leaks")}
    assert lab.vip in lab.own_arp_senders("rs1"), "the wire shows the leak the audit reports"
    apply_method(cluster, method, names=["rs1"])
    assert lab.own_arp_senders("rs1") == {lab.host("rs1").address}
    for argv in answer:
        lab.host("rs1").ns.run(*argv)
    if method != "sysctl":
        # input drop gone, output rewrite still there: the audit warns, the wire stays clean
        report = audit(cluster, "rs1")
        assert report["ok"] is True and errors(report) == set(), report["findings"]
        assert any("only the output rule keeps the VIP out of the reply" in f["message"]
                   for f in report["findings"] if f["severity"] == "warning")
        assert lab.arp_responders() == {"lb1"}
        for argv in leak:  # now both rules are gone
            lab.host("rs1").ns.run(*argv)
        assert errors(audit(cluster, "rs1")) == {("eth0", "answers"), ("eth0", "leaks")}
    else:
        assert errors(audit(cluster, "rs1")) == {("eth0", "answers")}
    assert "rs1" in lab.arp_responders(), "the wire shows the answer the audit reports"
    apply_method(cluster, method, names=["rs1"])
    assert audit(cluster, "rs1")["ok"] is True
    assert lab.arp_responders() == {"lb1"}
