"""The pieces of lvs_director's quick no-op check that need no kernel: the /proc/net/ip_vs lines a
pillar implies, reading that file, and the pillar digest. The real kernel's output is compared
with them in tests/kernel/test_director_noop.py; the sample below is what kernel 6.1 printed in
the kernel lane (ip_vs_info_seq_show), counters included."""

import collections
import copy
import socket

import pytest
from salt.exceptions import SaltInvocationError

from tests.loadmod import load

pytestmark = pytest.mark.unit

d = load("modules", "lvs_director", salt={}, opts={"id": "lb1"})

PROC = (
    b"IP Virtual Server version 1.2.1 (size=4096)\n"
    b"Prot LocalAddress:Port Scheduler Flags\n"
    b"  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
    b"TCP  C6336464:0050 wlc  persistent 150000 FFFFFF00\n"
    b"  -> C633640C:0050      Route   65535  3          12        \n"
    b"  -> C633640B:0050      Route   0      0          0         \n"
    b"UDP  C6336464:0035 sh ops  \n"
    b"  -> C633640B:0035      Route   1      0          1         \n"
    b"FWM  00000007 rr \n"
    b"  -> CB007105:0000      Tunnel  3      0          0         \n"
    b"SCTP  [2001:0db8:0000:0000:0000:0000:0000:0100]:0F1C mh \n"
    b"  -> [2001:0db8:0000:0000:0000:0000:0000:0011]:0F1C      Route   10     0          0         \n"
)


def key(proto, addr="", port=0, fwmark=0, af=socket.AF_INET):
    return d.ServiceKey(af, proto, addr, port, fwmark)


def test_service_and_real_server_lines_are_the_kernels():
    web = d.Service(key("tcp", "198.51.100.100", 80), "wlc", d.SVC_F_PERSISTENT, 600, 24)
    assert d._proc_service_line(web, 250) == b"TCP  C6336464:0050 wlc  persistent 150000 FFFFFF00"
    assert d._proc_service_line(web, None) is None  # jiffies unknown: no check file at all
    dns = d.Service(key("udp", "198.51.100.100", 53), "sh", d.SVC_F_ONEPACKET | 0x10)
    assert d._proc_service_line(dns, None) == b"UDP  C6336464:0035 sh ops  "
    marked = d.Service(key("fwmark", fwmark=7, af=socket.AF_INET), "rr")
    assert d._proc_service_line(marked, None) == b"FWM  00000007 rr "
    sctp = d.Service(key("sctp", "2001:db8::100", 3868, af=socket.AF_INET6), "mh")
    assert d._proc_service_line(sctp, None) == (
        b"SCTP  [2001:0db8:0000:0000:0000:0000:0000:0100]:0F1C mh ")
    assert d._proc_dest_line(d.Dest("198.51.100.12", 80, "dr", 65535)) == (
        b"  -> C633640C:0050      Route   65535  ")
    assert d._proc_dest_line(d.Dest("203.0.113.5", 0, "tun", 3)) == (
        b"  -> CB007105:0000      Tunnel  3      ")
    assert d._proc_dest_line(d.Dest("2001:db8::11", 3868, "dr", 10)) == (
        b"  -> [2001:0db8:0000:0000:0000:0000:0000:0011]:0F1C      Route   10     ")


def test_proc_blocks_group_real_servers_under_their_service_without_counters():
    blocks = d.proc_blocks(PROC)
    assert blocks[b"TCP  C6336464:0050 wlc  persistent 150000 FFFFFF00"] == [
        b"  -> C633640B:0050      Route   0      ", b"  -> C633640C:0050      Route   65535  "]
    assert len(blocks) == 4 and all(len(v) == 1 for k, v in blocks.items() if b"TCP" not in k)
    busier = PROC.replace(b"3          12        ", b"4096       70000     ")
    assert d.proc_blocks(busier) == blocks and d.proc_token(busier) == d.proc_token(PROC)
    edited = PROC.replace(b"Route   65535  3", b"Route   7      3")
    assert d.proc_blocks(edited) != blocks and d.proc_token(edited) != d.proc_token(PROC)
    # another order of the same table (a real server deleted and added back): the blocks
    # still match, the token does not (the check then compares the blocks)
    a = b"  -> C633640C:0050      Route   65535  3          12        \n"
    b = b"  -> C633640B:0050      Route   0      0          0         \n"
    swapped = PROC.replace(a + b, b + a)
    assert swapped != PROC
    assert d.proc_blocks(swapped) == blocks and d.proc_token(swapped) != d.proc_token(PROC)
    twice = PROC + b"FWM  00000007 rr \n"
    assert d.proc_blocks(twice) is None  # an IPv4 and an IPv6 fwmark service of one mark


def test_the_pillar_digest_follows_the_tree_and_the_minion():
    tree = {"services": {"web": {"vip": "198.51.100.100", "ports": [80]}},
            "directors": {"lb1": {"interface": "eth0"}}}
    same = copy.deepcopy(tree)
    assert d._pillar_digest("lb1", tree) == d._pillar_digest("lb1", same)
    assert d._pillar_digest("lb2", tree) != d._pillar_digest("lb1", tree)
    same["services"]["web"]["ports"] = [81]
    assert d._pillar_digest("lb1", same) != d._pillar_digest("lb1", tree)
    ordered = collections.OrderedDict(tree)  # marshal refuses it: the JSON digest instead
    assert d._pillar_digest("lb1", ordered) == d._pillar_digest("lb1", collections.OrderedDict(
        copy.deepcopy(tree)))


def test_the_check_file_is_ignored_when_unreadable_or_of_another_format(tmp_path):
    paths = {"state_file": str(tmp_path / "director.json"), "verify": "quick"}
    assert d.read_check(paths) is None
    (tmp_path / "director.json.check").write_bytes(b"not marshal")
    assert d.read_check(paths) is None
    assert d.unchanged(paths, "digest") is False
    d.drop_check(paths)
    d.drop_check(paths)  # twice: nothing to drop is fine
    assert not (tmp_path / "director.json.check").exists()


def test_verify_comes_from_the_argument_or_the_minion_config_and_is_checked():
    assert d._paths({})["verify"] == "quick"
    assert d._paths({"verify": "full"})["verify"] == "full"
    with pytest.raises(SaltInvocationError, match="verify: 'thorough' must be one of quick, full"):
        d._paths({"verify": "thorough"})
    configured = load("modules", "lvs_director", opts={"id": "lb1"},
                      salt={"config.get": lambda key, default=None: {"verify": "full"}})
    assert configured._paths({})["verify"] == "full"
    assert configured._paths({"verify": "quick"})["verify"] == "quick"
