"""The kernel lane is real: IPVS, ipip and dummy work, and a DR director forwards for real.

Runs only inside the lane's VM (``sudo tools/kernel-lane/run-tests``). Every network change
happens in namespaces made by the ``netns`` fixture. pyroute2 0.9.7 pitfalls, verified here:
``IPVSDest.from_message()["fwd_method"]`` is always 3 (read the attribute from the message), and
the "update" verb is mapped to IPVS_CMD_DEL_* (use "set").
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time

import pytest
from pyroute2 import IPVS, IPVSDest, IPVSService

from lab import netns as labns

pytestmark = pytest.mark.kernel

VIP = "198.51.100.100"
CLIENT = "198.51.100.10"
DIRECTOR = "198.51.100.2"
RS1 = "198.51.100.11"
RS2 = "198.51.100.12"
PORT = 8080
# IP_VS_CONN_F_* forwarding methods (IPVS_DEST_ATTR_FWD_METHOD)
FWD_TUNNEL, FWD_DROUTE = 2, 3


def links(ns, dev=None) -> list[dict]:
    return json.loads(ns.ip("-j", "-d", "addr", "show", *(["dev", dev] if dev else [])).stdout)


def addresses(ns, dev) -> list[str]:
    """IPv4 addresses of ``dev`` (an up link also gets an IPv6 link-local one)."""
    return sorted(
        f"{a['local']}/{a['prefixlen']}"
        for link in links(ns, dev)
        for a in link["addr_info"]
        if a["family"] == "inet"
    )


def test_ip_vs_and_schedulers_load(kernel_lane, kmod):
    kmod("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_wlc", "ip_vs_sh", "ip_vs_mh")
    for module in ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_wlc", "ip_vs_sh", "ip_vs_mh"):
        assert pathlib.Path("/sys/module", module).is_dir(), module
    banner = pathlib.Path("/proc/net/ip_vs").read_text().splitlines()[0]
    assert banner.startswith("IP Virtual Server version"), banner


def test_scheduler_autoload(kernel_lane, netns):
    """ipvsadm gets a scheduler module the kernel loads on demand, as on a director with kmod."""
    assert kernel_lane["modprobe"].endswith("/modprobe")  # the lane's busybox modprobe
    ns = netns("lc")
    ns.run("ipvsadm", "-A", "-t", f"{VIP}:80", "-s", "lc")  # ip_vs_lc is not preloaded
    assert pathlib.Path("/sys/module/ip_vs_lc").is_dir()
    assert f"TCP  {VIP}:80 lc" in ns.run("ipvsadm", "-Ln").stdout


def _pyroute2_dr_round_trip() -> dict:
    service = IPVSService(addr=VIP, port=80, protocol=socket.IPPROTO_TCP, sched_name="wrr")
    ipvs = IPVS()
    try:
        ipvs.service("add", service=service)
        for addr, weight in ((RS1, 1), (RS2, 2)):
            dest = IPVSDest(addr=addr, port=80, weight=weight, fwd_method=FWD_DROUTE)
            ipvs.dest("add", service=service, dest=dest)
        # "set" changes a dest in place ("update" would delete it in pyroute2 0.9.7)
        ipvs.dest("set", service=service, dest=IPVSDest(addr=RS1, port=80, weight=5))
        services = []
        for msg in ipvs.service("dump"):
            svc = IPVSService.from_message(msg)
            services.append((svc["addr"], svc["port"], svc["protocol"], svc["sched_name"]))
        dests = []
        for msg in ipvs.dest("dump", service=service):
            dest = IPVSDest.from_message(msg)
            fwd = msg.get_nested("IPVS_CMD_ATTR_DEST", "IPVS_DEST_ATTR_FWD_METHOD")
            dests.append((dest["addr"], dest["port"], dest["weight"], fwd))
    finally:
        ipvs.close()
    return {"services": services, "dests": sorted(dests)}


def test_pyroute2_dr_service_round_trip(netns):
    ns = netns("ipvs")
    got = ns.call(_pyroute2_dr_round_trip)
    assert got["services"] == [(VIP, 80, socket.IPPROTO_TCP, "wrr")]
    assert got["dests"] == [(RS1, 80, 5, FWD_DROUTE), (RS2, 80, 2, FWD_DROUTE)]
    # ipvsadm reads the same table: the namespace's own, not pytest's
    listing = ns.run("ipvsadm", "-Ln", "-t", f"{VIP}:80").stdout
    assert f"TCP  {VIP}:80 wrr" in listing, listing
    rows = [line.split()[1:4] for line in listing.splitlines() if line.strip().startswith("->")]
    assert sorted(rows[1:]) == [[f"{RS1}:80", "Route", "5"], [f"{RS2}:80", "Route", "2"]], listing
    assert "TCP" not in pathlib.Path("/proc/net/ip_vs").read_text()  # pytest's namespace is clean


def test_tunl0_exists_after_ipip_link(netns):
    ns = netns("tun")
    # with ipip loaded (run-tests preloads it; `ip link add ... type ipip` would autoload it) every
    # namespace has tunl0, the device a TUN real server holds its VIP on
    ns.ip("link", "add", "lvt-ipip", "type", "ipip", "local", RS1, "remote", DIRECTOR)
    assert pathlib.Path("/sys/module/ipip").is_dir()
    ns.ip("link", "set", "tunl0", "up")
    ns.ip("addr", "add", f"{VIP}/32", "dev", "tunl0")
    (tunl0,) = links(ns, "tunl0")
    assert tunl0["linkinfo"]["info_kind"] == "ipip"
    assert addresses(ns, "tunl0") == [f"{VIP}/32"]


def test_dummy_link(netns):
    ns = netns("dummy")
    ns.ip("link", "add", "lvs0", "type", "dummy")
    ns.ip("addr", "add", f"{VIP}/32", "dev", "lvs0")
    ns.ip("link", "set", "lvs0", "up")
    (lvs0,) = links(ns, "lvs0")
    assert lvs0["linkinfo"]["info_kind"] == "dummy"
    assert addresses(ns, "lvs0") == [f"{VIP}/32"]


def test_salt_loader_sees_a_tun_vip(netns, loaders):
    """The in-process loader works in the guest: audit finds a TUN real server's VIP on tunl0."""
    ns = netns("rs")
    ns.ip("link", "add", "lvt-ipip", "type", "ipip", "local", RS1, "remote", DIRECTOR)
    ns.ip("link", "set", "tunl0", "up")
    ns.ip("addr", "add", f"{VIP}/32", "dev", "tunl0")
    modules = loaders.modules
    assert modules.test.ping() is True
    report = ns.call(lambda: modules.lvs_realserver.audit(vips=[VIP]))
    held = report["vips"][VIP]["held_on"]
    assert [(h["interface"], h["prefixlen"]) for h in held] == [("tunl0", 32)], report


# --------------------------------------------------------------------------------------------
# end to end: client -> director (IPVS, DR) -> real server, reply straight from the real server


def _veth_to_lan(ns, lan, ifname: str, peer: str, cidr: str) -> None:
    ns.ip("link", "add", ifname, "type", "veth", "peer", "name", peer, "netns", lan.name)
    lan.ip("link", "set", peer, "master", "br0", "up")
    ns.ip("addr", "add", cidr, "dev", ifname)
    ns.ip("link", "set", ifname, "up")


class OneShotServer:
    """A TCP server forked into a namespace: answers one connection with what it saw.

    A fork costs nothing; a fresh Python process would cost seconds under TCG.
    """

    def __init__(self, ns, port: int):
        read_fd, write_fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child
            status = 1
            try:
                os.close(read_fd)
                labns.setns(ns.path)
                srv = socket.socket()
                srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                srv.bind(("0.0.0.0", port))
                srv.listen(1)
                os.write(write_fd, b"ready")
                srv.settimeout(60)
                conn, peer = srv.accept()
                local = conn.getsockname()
                conn.sendall(f"local={local[0]}:{local[1]} peer={peer[0]}".encode())
                conn.close()
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        try:
            started = os.read(read_fd, 5) == b"ready"  # b"" when the child died first
        finally:
            os.close(read_fd)
        if not started:
            self.close()
            raise RuntimeError(f"server in {ns.name} did not start")

    def close(self) -> int:
        for _ in range(100):
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        return -9


def _request(vip: str, port: int) -> dict:
    with socket.create_connection((vip, port), timeout=20) as conn:
        peer = conn.getpeername()
        reply = conn.recv(200).decode()
    return {"peer": f"{peer[0]}:{peer[1]}", "reply": reply}


def _director_stats(director, vip: str, port: int) -> dict:
    out = director.run("ipvsadm", "-Ln", "--stats", "--exact", "-t", f"{vip}:{port}").stdout
    for line in out.splitlines():
        fields = line.split()
        if fields[:2] == ["TCP", f"{vip}:{port}"]:
            return dict(zip(("conns", "inpkts", "outpkts", "inbytes", "outbytes"), map(int, fields[2:7])))
    raise AssertionError(f"no service line in:\n{out}")


def test_dr_reply_bypasses_the_director(netns):
    lan, client, director, rs = netns("lan"), netns("cl"), netns("dir"), netns("rs")
    lan.ip("link", "add", "br0", "type", "bridge")
    lan.ip("link", "set", "br0", "up")
    _veth_to_lan(client, lan, "eth0", "p-cl", f"{CLIENT}/24")
    _veth_to_lan(director, lan, "eth0", "p-dir", f"{DIRECTOR}/24")
    _veth_to_lan(rs, lan, "eth0", "p-rs", f"{RS1}/24")
    # director owns and announces the VIP; IPVS forwards by rewriting only the MAC (-g)
    director.ip("addr", "add", f"{VIP}/32", "dev", "eth0")
    director.run("ipvsadm", "-A", "-t", f"{VIP}:{PORT}", "-s", "rr")
    director.run("ipvsadm", "-a", "-t", f"{VIP}:{PORT}", "-r", f"{RS1}:{PORT}", "-g", "-w", "1")
    # real server: ARP suppression first, then the VIP on lo as /32
    for conf in ("all", "eth0"):
        rs.write_sysctl(f"net/ipv4/conf/{conf}/arp_ignore", 1)
        rs.write_sysctl(f"net/ipv4/conf/{conf}/arp_announce", 2)
    rs.ip("addr", "add", f"{VIP}/32", "dev", "lo")

    server = OneShotServer(rs, PORT)
    try:
        got = client.call(_request, VIP, PORT)
    finally:
        server_status = server.close()
    assert server_status == 0
    # the real server accepted on the VIP and saw the client itself (no NAT on the way) ...
    assert got["reply"] == f"local={VIP}:{PORT} peer={CLIENT}", got
    # ... and the client got its answer from the VIP
    assert got["peer"] == f"{VIP}:{PORT}", got
    # the client resolved the VIP to the director, never to the real server
    neigh = json.loads(client.ip("-j", "neigh", "show", VIP).stdout)
    (director_eth0,) = links(director, "eth0")
    assert [n.get("lladdr") for n in neigh] == [director_eth0["address"]], neigh

    # IPVS folds its per-CPU counters in every 2 s (the estimator): wait for the request side
    deadline = time.monotonic() + 15
    while (stats := _director_stats(director, VIP, PORT))["inpkts"] < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stats["conns"] == 1 and stats["inpkts"] >= 3, stats
    # replies went from the real server straight to the client: none through the director
    assert stats["outpkts"] == 0, stats
