"""Real servers on a real IPVS kernel (the kernel lane's VM): TUN with a rule method (the VIP on
tunl0 kept quiet by nftables alone), the TUN MTU advice of the audit read from real devices,
and DR with the VIP on a dedicated dummy interface instead of lo. The director is real IPVS
configured by the lvs_director state; everything is called in-process through Salt's loaders."""

import re

import pytest

from lab.netlab import Lab

pytestmark = pytest.mark.kernel

VIP = "198.51.100.100"
PORT = 80
RIPS = {"rs1": "198.51.100.11", "rs2": "198.51.100.12"}


def pillar(method):
    return {
        "services": {"web": {
            "vip": VIP, "protocol": "tcp", "ports": [PORT], "method": method, "scheduler": "rr",
            "realservers": {n: {"address": a, "weight": 100} for n, a in RIPS.items()}}},
        "directors": {"lb1": {"interface": "eth0"}},
    }


class Cluster:
    def __init__(self, lab, loaders, tmp_path):
        self.lab, self.loaders, self.tmp = lab, loaders, tmp_path

    def paths(self, host):
        base = self.tmp / host
        if host == "lb1":
            return {"state_file": str(base / "director.json")}
        return {"state_file": str(base / "state.json"), "sysctl_file": str(base / "sysctl.conf"),
                "vip_file": str(base / "vips"),
                "unit_file": str(base / "systemd" / "lvs-realserver.service")}

    def state(self, host, mod, fun, **kwargs):
        loaders = self.loaders

        def run():
            res = getattr(getattr(loaders.states, mod), fun)(name=host, **kwargs)
            return {"result": res.result, "changes": res.changes, "comment": res.comment}

        return self.lab.host(host).ns.call(run)

    def module(self, host, fun, **kwargs):
        loaders = self.loaders
        return self.lab.host(host).ns.call(
            lambda: getattr(loaders.modules.lvs_realserver, fun)(**kwargs))

    def realserver(self, host, **kwargs):
        return self.state(host, "lvs_realserver", "present", persist=False, **self.paths(host),
                          **kwargs)

    def director(self, lvs):
        return self.state("lb1", "lvs_director", "present", minion_id="lb1", lvs=lvs,
                          **self.paths("lb1"))


@pytest.fixture
def cluster(loaders, tmp_path):
    with Lab(director_vip=False, ipv6=False) as lab:
        yield Cluster(lab, loaders, tmp_path)


def out_pkts(lab):
    stats = lab.host("lb1").ns.run("ipvsadm", "-Ln", "--stats").stdout
    for line in stats.splitlines():
        if re.match(rf"^TCP\s+{re.escape(VIP)}:{PORT}\s", line):
            return int(line.split()[4])
    raise AssertionError(stats)


def check_path(cluster):
    lab = cluster.lab
    answers = [lab.tcp_request(VIP, PORT) for _ in range(6)]
    assert {a["reply"].split()[0] for a in answers} == {"rs1", "rs2"}, answers
    for a in answers:
        assert a["reply"].split()[1] == f"{VIP}:{PORT}", "the real server answers from the VIP"
        assert a["reply_from"] == [a["reply"].split()[0]], "and straight back, not via lb1"
    assert out_pkts(lab) == 0
    assert lab.arp_responders(VIP) == {"lb1"}
    for name, rip in RIPS.items():
        assert lab.own_arp_senders(name) == {rip}


def test_tun_real_servers_kept_quiet_by_nftables_alone(cluster):
    lab = cluster.lab
    for rs in RIPS:
        lab.host(rs).ns.write_sysctl("net/ipv4/conf/all/rp_filter", 1)  # strict, as RHEL
        res = cluster.realserver(rs, vips=[{"address": VIP, "device": "tunl0"}],
                                 arp_method="nftables")
        assert res["result"] is True, res["comment"]
        assert set(res["changes"]["nftables"]) == {"table arp saltext_lvs"}
        assert set(res["changes"]["sysctl"]) == {"net.ipv4.conf.tunl0.rp_filter"}, (
            "only rp_filter on tunl0: the ARP sysctls stay at the kernel's defaults")
        assert lab.host(rs).arp_sysctls()["eth0"] == (0, 0)
    assert cluster.director(pillar("tun"))["result"] is True
    lab.start_tcp_servers(PORT)
    check_path(cluster)
    report = cluster.module("rs1", "audit", vips=[VIP])
    assert report["ok"] is True, report["findings"]
    mtu = [f for f in report["findings"] if f["interface"] == "tunl0"]
    assert len(mtu) == 1 and "tunl0 MTU 1480" in mtu[0]["message"], mtu
    assert "becomes 1520 bytes" in mtu[0]["message"] and "--set-mss 1440" in mtu[0]["fix"]
    for rs in RIPS:  # and switching this TUN real server to the sysctl method
        res = cluster.realserver(rs, vips=[{"address": VIP, "device": "tunl0"}])
        assert res["result"] is True and res["changes"]["nftables"][
            "table arp saltext_lvs"]["new"] is None
    check_path(cluster)


def test_dr_with_the_vip_on_a_dedicated_dummy_interface(cluster, kmod):
    kmod("dummy")
    lab = cluster.lab
    for rs in RIPS:
        res = cluster.realserver(rs, vips=[{"address": VIP, "device": "lvsvip0"}])
        assert res["result"] is True, res["comment"]
        assert res["changes"]["link"] == {"lvsvip0": {"old": None, "new": "dummy, NOARP, up"}}
        host = lab.host(rs)
        assert f"{VIP}/32" in host.addresses("lvsvip0") and f"{VIP}/32" not in host.addresses("lo")
        assert host.arp_sysctls()["eth0"] == (1, 2)
        assert cluster.realserver(rs, vips=[{"address": VIP, "device": "lvsvip0"}])[
            "changes"] == {}
    assert cluster.director(pillar("dr"))["result"] is True
    lab.start_tcp_servers(PORT)
    check_path(cluster)
    for rs in RIPS:
        gone = cluster.state(rs, "lvs_realserver", "absent", **cluster.paths(rs))
        assert gone["result"] is True, gone["comment"]
        assert gone["changes"]["link"] == {"lvsvip0": {"old": "dummy", "new": None}}
        assert "lvsvip0" not in lab.host(rs).ip("-o", "link").stdout
