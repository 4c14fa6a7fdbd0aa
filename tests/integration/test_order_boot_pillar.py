"""Through salt-call in the lab: the order of kernel writes (recorded by strace, independent of the
module), a simulated boot from the persisted files checked on the wire, and bad pillars."""

import copy
import ipaddress
import json
import re
import shlex
import struct
import subprocess

import pytest
import yaml

from lab import saltenv
from lab.netlab import Lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = saltenv.REPO
EXAMPLE = yaml.safe_load((REPO / "pillar.example").read_text())
VIP = EXAMPLE["lvs"]["services"]["web"]["vip"]


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


def config(tmp_path, name, pillar=None):
    conf = saltenv.make_local_config(tmp_path / name, name, pillar or REPO / "pillar.example")
    return conf


# With -xx strace prints every string, fd paths included, as \xNN escapes: decode both.
WRITE = re.compile(r'write\(\d+<((?:\\x[0-9a-f]{2})+)>, "((?:\\x[0-9a-f]{2})*)"')
SYSCTL_PATH = re.compile(r"/proc/sys/net/ipv4/conf/([^/]+)/(arp_\w+)$")
# strace cannot always name the netlink protocol of a socket made inside a namespace, so the
# address messages are decoded from their bytes: type 0x14 RTM_NEWADDR, 0x15 RTM_DELADDR.
ADDR_MSG = re.compile(r'nlmsg_type=(0x14|0x15|RTM_NEWADDR|RTM_DELADDR)\b[^}]*\}, "((?:\\x[0-9a-f]{2})*)"')
NAMES = {"0x14": "RTM_NEWADDR", "0x15": "RTM_DELADDR"}
EXECVE = re.compile(r'execve\("[^"]*", \[([^\]]*)\]')
NFT_TABLE = re.compile(r"^table (arp|ip|ip6) saltext_lvs( \{)?$", re.M)


def _nft_events(script):
    """A script the module pipes into nft: which of our tables it loads or deletes."""
    out = []
    for family in sorted({m.group(1) for m in NFT_TABLE.finditer(script)}):
        loads = re.search(rf"^table {family} saltext_lvs \{{$", script, re.M)
        out.append(("nft", family, "load" if loads else "delete"))
    return out


def _unhex(text):
    return bytes.fromhex(text.replace("\\x", ""))


def _ifaddr_address(payload):
    """The IFA_LOCAL (else IFA_ADDRESS) of an ifaddrmsg payload, as text."""
    family = payload[0]
    offset, found = 8, {}
    while offset + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, offset)
        if length < 4:
            break
        found[kind] = payload[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    raw = found.get(2) or found.get(1)
    return str(ipaddress.ip_address(raw)) if raw and family in (2, 10) else None


def traced_kernel_writes(argv, trace_file):
    """Run argv under strace and return the kernel writes it made, in order:
    ("sysctl", "eth0/arp_ignore", "1"), ("RTM_NEWADDR", "198.51.100.100"), and for the rule
    methods ("nft", "arp", "load" | "delete"): the script piped into ``nft -f -`` (the module
    waits for nft to exit before its next step, so the script's position is its commit's) and
    ("arptables", "-A LVS_RS_IN_A ...") from the execve of every arptables command."""
    cmd = ["strace", "-f", "-qq", "-y", "-xx", "-s", "65536", "-e", "trace=write,sendto,execve",
           "-e", "signal=none", "-o", str(trace_file), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = []
    for line in trace_file.read_text().splitlines():
        m = WRITE.search(line)
        if m:
            path = SYSCTL_PATH.search(_unhex(m.group(1)).decode())
            if path:
                events.append(("sysctl", f"{path.group(1)}/{path.group(2)}",
                               _unhex(m.group(2)).decode().strip()))
            elif _unhex(m.group(1)).decode().startswith("pipe:"):
                events.extend(_nft_events(_unhex(m.group(2)).decode(errors="replace")))
            continue
        x = EXECVE.search(line)
        if x:
            args = [_unhex(a).decode() for a in re.findall(r'"((?:\\x[0-9a-f]{2})*)"', x.group(1))]
            if args and args[0].split("/")[-1].startswith("arptables") and "-V" not in args:
                events.append(("arptables", " ".join(args[1:])))
            continue
        if "sendto(" not in line:
            continue
        for msg in ADDR_MSG.finditer(line):
            payload = _unhex(msg.group(2))
            address = _ifaddr_address(payload)
            if address:
                events.append((NAMES.get(msg.group(1), msg.group(1)), address))
    return events


def test_kernel_write_order_recorded_by_strace(lab, tmp_path):
    """Deterministic proof of the safety order, from outside the module: suppression strictly
    before the VIP appears; on removal the VIP goes strictly before suppression is relaxed."""
    rs = lab.host("rs1")
    conf = config(tmp_path, "rs1")
    saltenv.salt_call(conf, "saltutil.sync_all", netns=rs.ns)
    apply_argv = saltenv.salt_call_argv(conf, "state.apply", "lvs", netns=rs.ns)
    events = traced_kernel_writes(apply_argv, tmp_path / "apply.trace")
    sysctls = [i for i, e in enumerate(events) if e[0] == "sysctl"]
    adds = [i for i, e in enumerate(events) if e[0] == "RTM_NEWADDR" and e[1] == VIP]
    assert sysctls and adds, events
    assert {events[i][1] for i in sysctls} == {"eth0/arp_ignore", "eth0/arp_announce"}
    assert max(sysctls) < min(adds), f"VIP added before the suppression: {events}"

    # take rs1 out of every service: the next run removes its VIPs, then relaxes
    pillar = copy.deepcopy(EXAMPLE)
    for svc in pillar["lvs"]["services"].values():
        svc["realservers"].pop("rs1")
    (tmp_path / "rs1" / "pillar" / "lvs.sls").write_text(json.dumps(pillar))
    events = traced_kernel_writes(apply_argv, tmp_path / "remove.trace")
    dels = [i for i, e in enumerate(events) if e[0] == "RTM_DELADDR" and e[1] == VIP]
    relax = [i for i, e in enumerate(events) if e[0] == "sysctl"]
    assert dels and relax, events
    assert [events[i][2] for i in relax] == ["0", "0"]
    assert max(dels) < min(relax), f"suppression relaxed while the VIP was held: {events}"
    assert rs.arp_sysctls()["eth0"] == (0, 0)


def test_boot_replay_of_the_persisted_files(lab, tmp_path):
    """Persist on rs1, then 'boot' rs2, a fresh namespace that was never configured: run the
    unit's commands in order and check the kernel after each step and the wire at the end."""
    rs1, rs2 = lab.host("rs1"), lab.host("rs2")
    conf = config(tmp_path, "rs1")
    saltenv.deploy_formula(conf, netns=rs1.ns)
    persist = tmp_path / "rs1" / "persist"
    unit = (persist / "systemd" / "lvs-realserver.service").read_text()
    wants = persist / "systemd" / "sysinit.target.wants" / "lvs-realserver.service"
    assert wants.is_symlink(), "the unit must be enabled for boot"
    execs = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(execs) == 2 and "sysctl" in execs[0] and "-batch" in execs[1]
    assert "After=systemd-sysctl.service" in unit and "Before=network-pre.target" in unit

    assert rs2.arp_sysctls()["eth0"] == (0, 0) and f"{VIP}/32" not in rs2.addresses("lo")
    rs2.ns.run(*shlex.split(execs[0]))
    assert rs2.arp_sysctls()["eth0"] == (1, 2)
    assert f"{VIP}/32" not in rs2.addresses("lo"), "first step must not add the VIP"
    rs2.ns.run(*shlex.split(execs[1]))
    assert f"{VIP}/32" in rs2.addresses("lo")
    assert "2001:db8::100/128" in rs2.addresses("lo")
    # on the wire: only the director answers, and rs2's own ARP requests never carry the VIP
    assert lab.arp_responders() == {"lb1"}
    senders = lab.own_arp_senders("rs2")
    assert senders and VIP not in senders, senders
    # a second boot (the unit runs again) is harmless
    rs2.ns.run(*shlex.split(execs[1]))
    assert rs2.addresses("lo").count(f"{VIP}/32") == 1


BAD_PILLARS = [
    (("services", "web", "vip"), "10.0.0.300", "lvs:services:web:vip: '10.0.0.300' is not an IP"),
    (("services", "web", "realservers", "rs1", "address"), VIP,
     "lvs:services:web:realservers:rs1:address: '198.51.100.100' equals the service VIP"),
    (("services", "web", "vip"), VIP + "/24", "lvs:services:web:vip: '198.51.100.100/24' has a prefix"),
    (("services", "web", "method"), "masq", "lvs:services:web:method: 'masq' is not one of"),
    (("services", "web", "ports"), [80, 65536], "lvs:services:web:ports:1: '65536' is not a port"),
    (("services", "web", "realservers"), {}, "lvs:services:web:realservers: a service needs at least"),
    (("realserver", "arp_method"), "magic", "lvs:realserver:arp_method: 'magic' is not one of"),
]


@pytest.mark.parametrize("path,value,message", BAD_PILLARS, ids=[b[2].split(":")[-2] + ":" +
                                                                 b[2].split(" ")[1] for b in BAD_PILLARS])
def test_bad_pillar_fails_naming_the_key_and_changes_nothing(lab, tmp_path, path, value, message):
    rs = lab.host("rs2")
    pillar = copy.deepcopy(EXAMPLE)
    node = pillar["lvs"]
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    conf = config(tmp_path, "rs2", pillar)
    before = (rs.arp_sysctls(), rs.addresses("lo"), sorted(p.name for p in
                                                            (tmp_path / "rs2" / "persist").rglob("*")))
    saltenv.salt_call(conf, "saltutil.sync_all", netns=rs.ns)
    proc = saltenv.salt_call_raw(conf, "state.apply", "lvs", netns=rs.ns)
    assert proc.returncode != 0, "a bad pillar must fail the run"
    result = saltenv.parse_local(proc)
    failed = saltenv.failed_states(result)
    assert [s["id"].split("_|-")[0] for s in failed] == ["lvs_realserver"]
    assert message in failed[0]["comment"], failed[0]["comment"]
    assert "Nothing was changed" in failed[0]["comment"]
    after = (rs.arp_sysctls(), rs.addresses("lo"), sorted(p.name for p in
                                                           (tmp_path / "rs2" / "persist").rglob("*")))
    assert after == before


def test_execution_module_from_the_command_line(lab, tmp_path):
    """salt-call passes __pub_* keyword arguments to every function taking **kwargs: the
    module's path arguments must not take them for typos."""
    rs = lab.host("rs2")
    conf = config(tmp_path, "rs2")
    saltenv.salt_call(conf, "saltutil.sync_all", netns=rs.ns)
    predicted = saltenv.salt_call(conf, "lvs_realserver.apply", "vips=[203.0.113.7]",
                                  "persist=False", "test=True", netns=rs.ns)
    assert predicted["changes"]["address"] == {
        "203.0.113.7/32 dev lo": {"old": None, "new": "203.0.113.7/32 dev lo"}}
    assert "203.0.113.7/32" not in rs.addresses("lo")
    assert saltenv.salt_call(conf, "lvs_realserver.managed", netns=rs.ns)["vips"] == {}
    bad = saltenv.salt_call_raw(conf, "lvs_realserver.apply", "vips=[203.0.113.7]",
                                "state_fil=/tmp/typo", "test=True", netns=rs.ns)
    assert bad.returncode != 0 and "unknown argument(s): state_fil" in bad.stdout + bad.stderr


# --------------------------------------------------------------------------------------------
# The rule methods: the same proofs with nft / arptables writes in the trace


def method_pillar(method, without=None):
    pillar = copy.deepcopy(EXAMPLE)
    pillar["lvs"]["realserver"]["arp_method"] = method
    for svc in pillar["lvs"]["services"].values():
        svc["realservers"].pop(without, None)
    return pillar


def write_pillar(tmp_path, name, pillar):
    (tmp_path / name / "pillar" / "lvs.sls").write_text(json.dumps(pillar))


@pytest.fixture
def fresh_lab():
    """A lab of its own: the module-scoped one keeps what earlier tests left on rs1 and rs2."""
    with Lab() as lab:
        yield lab


def _index(events, pred):
    return [i for i, e in enumerate(events) if pred(e)]


@pytest.mark.parametrize("method", ["nftables", "arptables"])
def test_rule_method_write_order_recorded_by_strace(fresh_lab, tmp_path, method):
    """Rules in force strictly before the VIP appears; switching to sysctl raises the sysctls
    before the rules go; switching back loads the rules before the sysctls are relaxed; taking
    the real server out removes the VIP strictly before the rules."""
    rs = fresh_lab.host("rs1")
    conf = config(tmp_path, "rs1", method_pillar(method))
    saltenv.salt_call(conf, "saltutil.sync_all", netns=rs.ns)
    argv = saltenv.salt_call_argv(conf, "state.apply", "lvs", netns=rs.ns)
    rule_in = (lambda e: e[:3] == ("nft", "arp", "load")) if method == "nftables" else (
        lambda e: e[0] == "arptables" and e[1].startswith("-I"))
    rule_out = (lambda e: e[:3] == ("nft", "arp", "delete")) if method == "nftables" else (
        lambda e: e[0] == "arptables" and e[1].startswith("-X"))

    events = traced_kernel_writes(argv, tmp_path / "apply.trace")
    rules, adds = _index(events, rule_in), _index(events, lambda e: e == ("RTM_NEWADDR", VIP))
    assert rules and adds and max(rules) < min(adds), events
    assert not _index(events, lambda e: e[0] == "sysctl"), "rule methods leave the sysctls"

    write_pillar(tmp_path, "rs1", method_pillar("sysctl"))
    events = traced_kernel_writes(argv, tmp_path / "to-sysctl.trace")
    raised = _index(events, lambda e: e[0] == "sysctl" and e[2] != "0")
    gone = _index(events, rule_out)
    assert raised and gone and max(raised) < min(gone), events
    assert not _index(events, lambda e: e[0].startswith("RTM_")), "the VIP stays put"

    write_pillar(tmp_path, "rs1", method_pillar(method))
    events = traced_kernel_writes(argv, tmp_path / "to-rules.trace")
    loaded = _index(events, rule_in)
    relaxed = _index(events, lambda e: e[0] == "sysctl" and e[2] == "0")
    assert loaded and relaxed and max(loaded) < min(relaxed), events

    write_pillar(tmp_path, "rs1", method_pillar(method, without="rs1"))
    events = traced_kernel_writes(argv, tmp_path / "remove.trace")
    dels = _index(events, lambda e: e == ("RTM_DELADDR", VIP))
    gone = _index(events, rule_out)
    assert dels and gone and max(dels) < min(gone), events
    assert rs.ns.run("nft", "list", "tables").stdout.strip() in ("", "table arp filter")
    assert "LVS_RS" not in rs.ns.run("arptables", "-L", "-n").stdout
    assert rs.arp_sysctls()["eth0"] == (0, 0)


@pytest.mark.parametrize("method", ["nftables", "arptables", "redirect"])
def test_boot_replay_with_rule_methods(fresh_lab, tmp_path, method):
    """The unit persisted by a rule method, replayed step by step in a never-configured rs2:
    the rules come before the VIPs, and the wire is right at the end."""
    lab = fresh_lab
    rs1, rs2 = lab.host("rs1"), lab.host("rs2")
    conf = config(tmp_path, "rs1", method_pillar(method))
    saltenv.deploy_formula(conf, netns=rs1.ns)
    persist = tmp_path / "rs1" / "persist"
    unit = (persist / "systemd" / "lvs-realserver.service").read_text()
    execs = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert not (persist / "sysctl.d" / "90-lvs-realserver.conf").exists()
    if method == "redirect":
        assert len(execs) == 1 and "nft -f" in execs[0], execs  # no VIP to restore
        rs2.ns.run(*shlex.split(execs[0]))
        assert f"{VIP}/32" not in rs2.addresses("lo")
        assert "redirect" in rs2.ns.run("nft", "list", "table", "ip", "saltext_lvs").stdout
        assert lab.arp_responders() == {"lb1"}
        return
    assert len(execs) == 2 and "-batch" in execs[-1], execs
    # the rules file mentions rs1's own address: rs2 boots from the same file with its own
    # address, as a copy of rs1's disk would not; substitute it to replay on rs2
    rules_path = shlex.split(execs[0])[-1]
    text = open(rules_path, encoding="utf-8").read().replace(rs1.address, rs2.address)
    replay = tmp_path / "rs2-rules"
    replay.write_text(text)
    first = [*shlex.split(execs[0])[:-1], str(replay)]
    rs2.ns.run(*first)
    assert f"{VIP}/32" not in rs2.addresses("lo"), "the rules step must not add the VIP"
    rs2.ns.run(*shlex.split(execs[1]))
    assert f"{VIP}/32" in rs2.addresses("lo")
    assert rs2.arp_sysctls()["eth0"] == (0, 0)
    assert lab.arp_responders() == {"lb1"}
    senders = lab.own_arp_senders("rs2")
    assert senders == {rs2.address}, senders
    rs2.ns.run(*first)  # a second start is harmless
    rs2.ns.run(*shlex.split(execs[1]))
    assert lab.arp_responders() == {"lb1"}
    assert rs2.addresses("lo").count(f"{VIP}/32") == 1


def test_redirect_with_a_fwmark_service_fails_naming_the_key(fresh_lab, tmp_path):
    rs = fresh_lab.host("rs1")
    pillar = method_pillar("redirect")
    pillar["lvs"]["services"]["mail"] = {
        "vip": "198.51.100.102", "protocol": "fwmark", "fwmark": 7, "method": "dr",
        "realservers": {"rs1": {"address": "198.51.100.11"}}}
    conf = config(tmp_path, "rs1", pillar)
    before = (rs.arp_sysctls(), rs.addresses("lo"), rs.ns.run("nft", "list", "ruleset").stdout)
    saltenv.salt_call(conf, "saltutil.sync_all", netns=rs.ns)
    proc = saltenv.salt_call_raw(conf, "state.apply", "lvs", netns=rs.ns)
    assert proc.returncode != 0
    failed = saltenv.failed_states(saltenv.parse_local(proc))
    assert [s["id"].split("_|-")[0] for s in failed] == ["lvs_realserver"]
    assert "lvs:services:mail:protocol: 'fwmark' cannot be served with lvs:realserver:" \
           "arp_method 'redirect'" in failed[0]["comment"], failed[0]["comment"]
    assert "Nothing was changed" in failed[0]["comment"]
    after = (rs.arp_sysctls(), rs.addresses("lo"), rs.ns.run("nft", "list", "ruleset").stdout)
    assert after == before
