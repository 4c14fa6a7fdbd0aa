"""The director on a real IPVS kernel (runs in the kernel lane's VM): DR and TUN end to end,
configured only through this project's states, gratuitous ARP on the wire, draining, in-place
reconciling without dropping connections, idempotency, exact test mode, bad pillar."""

import copy
import re
import subprocess

import pytest

from lab.netlab import Lab

pytestmark = pytest.mark.kernel

VIP = "198.51.100.100"
PORT = 80


def pillar(method="dr", scheduler="rr", weights=(100, 100)):
    rs = {"rs1": "198.51.100.11", "rs2": "198.51.100.12"}
    return {
        "services": {
            "web": {
                "vip": VIP, "protocol": "tcp", "ports": [PORT], "method": method,
                "scheduler": scheduler,
                "realservers": {
                    name: {"address": addr, "weight": w}
                    for (name, addr), w in zip(rs.items(), weights)
                },
            }
        },
        "directors": {"lb1": {"interface": "eth0"}},
    }


class Cluster:
    """The lab topology with nothing configured; Salt is called in-process in each namespace."""

    def __init__(self, lab, loaders, tmp_path):
        self.lab = lab
        self.loaders = loaders
        self.tmp = tmp_path

    def paths(self, host):
        base = self.tmp / host
        if host == "lb1":
            return {"state_file": str(base / "director.json")}
        return {
            "state_file": str(base / "state.json"),
            "sysctl_file": str(base / "sysctl.conf"),
            "vip_file": str(base / "vips"),
            "unit_file": str(base / "systemd" / "lvs-realserver.service"),
        }

    def _state(self, host, mod, fun, **kwargs):
        loaders = self.loaders

        def run():
            res = getattr(getattr(loaders.states, mod), fun)(name=host, **kwargs)
            return {"result": res.result, "changes": res.changes, "comment": res.comment}

        return self.lab.host(host).ns.call(run)

    def realserver(self, host, device="lo", **kwargs):
        return self._state(host, "lvs_realserver", "present",
                           vips=[{"address": VIP, "device": device}], persist=False,
                           **self.paths(host), **kwargs)

    def director(self, lvs, fun="present", **kwargs):
        return self._state("lb1", "lvs_director", fun, minion_id="lb1", lvs=lvs,
                           **self.paths("lb1"), **kwargs)

    def module(self, host, fun, **kwargs):
        loaders = self.loaders
        return self.lab.host(host).ns.call(
            lambda: getattr(loaders.modules.lvs_director, fun)(**kwargs))

    def live(self, lvs):
        return self.module("lb1", "status", minion_id="lb1", lvs=lvs, **self.paths("lb1"))

    def ipvsadm_stats(self):
        return self.lab.host("lb1").ns.run("ipvsadm", "-Ln", "--stats").stdout


class Held:
    """A long-lived TCP connection from the client, driven line by line (bash /dev/tcp)."""

    SCRIPT = (
        'exec 3<>/dev/tcp/{ip}/{port} || exit 9; IFS= read -r -t 10 hello <&3; echo "$hello"; '
        'while IFS= read -r line; do echo "$line" >&3; '
        'IFS= read -r -t 10 back <&3 || {{ echo LOST; exit 3; }}; echo "$back"; done'
    )

    def __init__(self, lab, ip=VIP, port=PORT):
        self.proc = lab.client.ns.popen(
            "bash", "-c", self.SCRIPT.format(ip=ip, port=port), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1)
        self.hello = self.proc.stdout.readline().strip()  # "rs1 198.51.100.100:80"
        self.server = self.hello.split(" ")[0] if self.hello else None

    def ping(self, text="ping"):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)  # TCG: slow to wind down


@pytest.fixture
def cluster(loaders, tmp_path):
    with Lab(director_vip=False, ipv6=False) as lab:
        yield Cluster(lab, loaders, tmp_path)


def requests(lab, n=6):
    return [lab.tcp_request(VIP, PORT) for _ in range(n)]


def out_pkts(stats):
    """OutPkts of the VIP service in ``ipvsadm -Ln --stats`` (replies the director forwarded)."""
    for line in stats.splitlines():
        if re.match(rf"^TCP\s+{re.escape(VIP)}:{PORT}\s", line):
            return int(line.split()[4])
    raise AssertionError(stats)


def test_dr_end_to_end_through_the_states(cluster):
    lab, lvs = cluster.lab, pillar("dr")
    for rs in ("rs1", "rs2"):
        assert cluster.realserver(rs)["result"] is True
    lab.start_tcp_servers(PORT)

    predicted = cluster.director(lvs, test=True)
    assert predicted["result"] is None
    assert cluster.live(lvs)["live"] == {}, "test=True touched IPVS"
    assert VIP + "/32" not in lab.director.addresses("eth0")

    garp = lab.spawn_probe("client", "arp-senders", "eth0", "--mac", lab.director.mac,
                           "--window", "60", "--count", "3", "--target", VIP)
    done = cluster.director(lvs)
    assert done["result"] is True, done["comment"]
    assert done["changes"] == predicted["changes"]
    assert set(done["changes"]) == {"service", "realserver", "address", "sysctl"}
    assert done["changes"]["sysctl"]["net.ipv4.vs.expire_nodest_conn"] == {"old": 0, "new": 1}
    announced = lab.finish_probe(garp, timeout=60, stop=False)
    assert announced["sender_ips"] == [VIP] and len(announced["requests"]) == 3, announced

    answers = requests(lab)
    assert {a["reply"].split()[0] for a in answers} == {"rs1", "rs2"}, answers
    for a in answers:
        assert a["reply"].split()[1] == f"{VIP}:{PORT}", "the real server answers from the VIP"
        assert a["sent_to"] == ["lb1"] and a["reply_from"] == [a["reply"].split()[0]]
    assert out_pkts(cluster.ipvsadm_stats()) == 0, "the director must send nothing back"
    assert lab.arp_responders(VIP) == {"lb1"}

    again = cluster.director(lvs)
    assert again["result"] is True and again["changes"] == {}
    assert cluster.director(lvs, test=True)["changes"] == {}
    assert cluster.live(lvs)["ok"] is True


def test_tun_end_to_end_through_the_states(cluster):
    lab, lvs = cluster.lab, pillar("tun")
    for rs in ("rs1", "rs2"):
        host = lab.host(rs)
        host.ns.write_sysctl("net/ipv4/conf/all/rp_filter", 1)  # strict, as RHEL ships it
        res = cluster.realserver(rs, device="tunl0")
        assert res["result"] is True, res["comment"]
        assert res["changes"]["sysctl"]["net.ipv4.conf.tunl0.rp_filter"]["new"] == 2
        assert host.sysctl("net/ipv4/conf/all/rp_filter") == "1", "conf/all is not touched"
        assert VIP + "/32" in host.addresses("tunl0")
    lab.start_tcp_servers(PORT)
    assert cluster.director(lvs)["result"] is True
    table = cluster.live(lvs)["live"][f"tcp {VIP}:{PORT}"]["realservers"]
    assert {r["forward"] for r in table.values()} == {"tun"}

    answers = requests(lab)
    assert {a["reply"].split()[0] for a in answers} == {"rs1", "rs2"}, answers
    assert all(a["reply"].split()[1] == f"{VIP}:{PORT}" for a in answers)
    assert all(a["reply_from"] == [a["reply"].split()[0]] for a in answers)
    assert out_pkts(cluster.ipvsadm_stats()) == 0
    assert cluster.director(lvs)["changes"] == {}


def test_drain_stops_new_connections_and_lets_established_ones_finish(cluster):
    lab, lvs = cluster.lab, pillar("dr")
    for rs in ("rs1", "rs2"):
        cluster.realserver(rs)
    lab.start_tcp_servers(PORT, echo=True)
    assert cluster.director(lvs)["result"] is True

    held = Held(lab)
    assert held.server in ("rs1", "rs2"), held.hello
    other = "rs2" if held.server == "rs1" else "rs1"
    res = cluster.module("lb1", "drain", realserver=held.server, timeout=3, interval=0.5,
                         minion_id="lb1", lvs=lvs)
    assert res["drained"] is False and sum(res["active"].values()) == 1, res
    assert list(res["changes"]["realserver"].values()) == [{"old": {"weight": 100},
                                                            "new": {"weight": 0}}]
    assert {a["reply"].split()[0] for a in requests(lab, 4)} == {other}, "weight 0: no new ones"
    assert held.ping("still there") == "still there", "the established connection must live on"
    held.close()
    res = cluster.module("lb1", "drain", realserver=held.server, timeout=60, interval=0.5,
                         minion_id="lb1", lvs=lvs)
    assert res["drained"] is True and res["changes"] == {}


def test_reconcile_edits_in_place_without_dropping_connections(cluster):
    lab = cluster.lab
    for rs in ("rs1", "rs2"):
        cluster.realserver(rs)
    lab.start_tcp_servers(PORT, echo=True)
    assert cluster.director(pillar("dr", "rr", (100, 100)))["result"] is True
    held = Held(lab)
    assert held.ping() == "ping"

    changed = pillar("dr", "wlc", (50, 200))
    predicted = cluster.director(changed, test=True)
    res = cluster.director(changed)
    assert res["result"] is True and res["changes"] == predicted["changes"]
    assert res["changes"]["service"] == {
        f"tcp {VIP}:{PORT}": {"old": {"scheduler": "rr"}, "new": {"scheduler": "wlc"}}}
    assert {v["new"]["weight"] for v in res["changes"]["realserver"].values()} == {50, 200}
    assert all(v["old"] is not None and v["new"] is not None
               for v in res["changes"]["realserver"].values()), "edited, not re-added"
    assert held.ping("after the edit") == "after the edit"
    conns = lab.director.ns.run("ipvsadm", "-Lnc").stdout
    assert "ESTABLISHED" in conns, conns
    held.close()
    assert cluster.director(changed)["changes"] == {}


def test_bad_pillar_for_this_kernel_changes_nothing(cluster):
    lab = cluster.lab
    lvs = pillar("dr", scheduler="nosuch")
    res = cluster.director(lvs)
    assert res["result"] is False
    assert "lvs:services:web:scheduler: 'nosuch' is not available in this kernel" in res["comment"]
    lvs = pillar("dr")
    lvs["directors"]["lb1"]["interface"] = "eth9"
    res = cluster.director(lvs)
    assert res["result"] is False and "lvs:directors:lb1:interface: 'eth9'" in res["comment"]
    lvs = pillar("dr")
    lvs["services"]["web"]["realservers"]["rs1"]["weight"] = 70000
    res = cluster.director(lvs)
    assert res["result"] is False and "lvs:services:web:realservers:rs1:weight" in res["comment"]
    assert cluster.live(pillar("dr"))["live"] == {}
    assert VIP + "/32" not in lab.director.addresses("eth0")


def test_absent_takes_the_vip_away_before_the_services(cluster):
    lab, lvs = cluster.lab, pillar("dr")
    assert cluster.director(lvs)["result"] is True
    journal = cluster.module("lb1", "remove", minion_id="lb1", lvs=lvs,
                             **cluster.paths("lb1"))["journal"]
    kinds = [entry.split()[0] for entry in journal]
    assert kinds[0] == "vip_del" and kinds[-1] == "svc_del", journal
    assert cluster.live(lvs)["live"] == {}
    assert VIP + "/32" not in lab.director.addresses("eth0")
    less = copy.deepcopy(lvs)
    assert cluster.director(less, fun="absent")["changes"] == {}
