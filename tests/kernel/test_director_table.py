"""Every IPVS feature of the pillar, applied by lvs_director on a real kernel and read back with
ipvsadm: an independent reader, so the module's netlink encoding cannot agree with itself only."""

import pytest

from lab.netns import Netns

pytestmark = pytest.mark.kernel

VIP, VIP6 = "198.51.100.100", "2001:db8::100"

LVS = {
    "services": {
        "web": {  # DR, persistence with a netmask, thresholds
            "vip": VIP, "protocol": "tcp", "ports": [80, 443], "method": "dr", "scheduler": "wlc",
            "persistence": 600, "persistence_netmask": "255.255.255.0",
            "realservers": {
                "rs1": {"address": "198.51.100.11", "weight": 0, "upper_threshold": 1000,
                        "lower_threshold": 800},
                "rs2": {"address": "198.51.100.12", "weight": 65535},
            },
        },
        "dns": {  # UDP, one-packet scheduling, scheduler flags
            "vip": VIP, "protocol": "udp", "ports": [53], "method": "dr", "scheduler": "sh",
            "scheduler_flags": ["sh-port", "sh-fallback"], "one_packet": True,
            "realservers": {"rs1": {"address": "198.51.100.11", "weight": 1}},
        },
        "marked": {  # firewall mark, TUN with GUE
            "vip": "198.51.100.101", "protocol": "fwmark", "fwmark": 7, "method": "tun",
            "scheduler": "rr",
            "realservers": {"far": {"address": "203.0.113.5", "weight": 3, "tun_type": "gue",
                                    "tun_port": 6080, "tun_csum": "csum"}},
        },
        "nat": {  # NAT with a port map
            "vip": "198.51.100.102", "protocol": "tcp", "ports": [8080], "method": "nat",
            "scheduler": "wrr",
            "realservers": {"rs1": {"address": "203.0.113.11", "weight": 5, "port": 80}},
        },
        "diameter": {  # SCTP over IPv6
            "vip": VIP6, "protocol": "sctp", "ports": [3868], "method": "dr", "scheduler": "mh",
            "realservers": {"rs1": {"address": "2001:db8::11", "weight": 10}},
        },
    },
    "directors": {"lb1": {"interface": "eth0", "garp_count": 0}},
}

EXPECTED_SAVE = [
    "-A -t 198.51.100.100:80 -s wlc -p 600 -M 255.255.255.0",
    "-a -t 198.51.100.100:80 -r 198.51.100.11:80 -g -w 0",  # thresholds: see --thresholds
    "-a -t 198.51.100.100:80 -r 198.51.100.12:80 -g -w 65535",
    "-A -t 198.51.100.100:443 -s wlc -p 600 -M 255.255.255.0",
    "-A -u 198.51.100.100:53 -s sh -o -b sh-fallback,sh-port",
    "-a -u 198.51.100.100:53 -r 198.51.100.11:53 -g -w 1",
    "-A -f 7 -s rr",
    "-a -f 7 -r 203.0.113.5:0 -i -w 3 --tun-type gue --tun-port 6080 --tun-csum",
    "-A -t 198.51.100.102:8080 -s wrr",
    "-a -t 198.51.100.102:8080 -r 203.0.113.11:80 -m -w 5",
    "-A --sctp-service [2001:db8::100]:3868 -s mh",
    "-a --sctp-service [2001:db8::100]:3868 -r [2001:db8::11]:3868 -g -w 10",
]


def director_ns(netns, kmod) -> Netns:
    """A director namespace "lb" whose eth0 (v4 and v6) faces a "lan" namespace, with the
    schedulers of :data:`LVS` loaded."""
    kmod("ip_vs_sh", "ip_vs_mh", "ip_vs_wrr", "ip_vs_wlc", "ip_vs_rr")
    ns = netns("lb")
    peer = netns("lan")
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "p0", "netns", peer.name)
    ns.ip("addr", "add", "198.51.100.2/24", "dev", "eth0")
    ns.ip("addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad")
    ns.ip("link", "set", "eth0", "up")
    return ns


@pytest.fixture
def director(netns, loaders, tmp_path, kmod):
    ns = director_ns(netns, kmod)
    state_file = str(tmp_path / "director.json")

    def state(fun="present", **kwargs):
        def run():
            res = getattr(loaders.states.lvs_director, fun)(
                name="lb1", minion_id="lb1", lvs=LVS, state_file=state_file, **kwargs)
            return {"result": res.result, "changes": res.changes, "comment": res.comment}

        return ns.call(run)

    return ns, state


def save(ns: Netns):
    return [line.strip() for line in ns.run("ipvsadm", "-S", "-n").stdout.splitlines() if line]


def normalise(line):
    """ipvsadm versions order some options differently: compare as sets of option groups."""
    return set(line.replace(" -", "\n-").split("\n"))


def test_every_feature_reads_back_the_same_with_ipvsadm(director):
    ns, state = director
    res = state()
    assert res["result"] is True, res["comment"]
    have = save(ns)
    missing = [line for line in EXPECTED_SAVE
               if not any(normalise(line) <= normalise(got) for got in have)]
    assert not missing, "ipvsadm -S -n:\n" + "\n".join(have)
    assert len(have) == len(EXPECTED_SAVE) + 2, "one real server per service more than listed?"
    # ipvsadm -S leaves thresholds out: read them from the listing
    listing = ns.run("ipvsadm", "-Ln", "--thresholds", "-t", f"{VIP}:80").stdout
    rs1 = [line.split() for line in listing.splitlines() if "198.51.100.11:80" in line]
    assert rs1 and rs1[0][2:4] == ["1000", "800"], listing
    addrs = ns.run("ip", "-br", "addr", "show", "dev", "eth0").stdout
    for vip in (f"{VIP}/32", "198.51.100.101/32", "198.51.100.102/32", f"{VIP6}/128"):
        assert vip in addrs
    again = state()
    assert again["result"] is True and again["changes"] == {}, again["changes"]
    gone = state("absent")
    assert gone["result"] is True and save(ns) == []
