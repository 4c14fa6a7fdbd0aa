#!/usr/bin/env python3
"""Benchmark drift-to-repair latency: how long a real server answers ARP for the VIP (or misses
its VIP) after something breaks it, with the ``lvs_realserver`` beacon and the remediation
reactor, against a scheduled highstate.

Run from the repository root, as root (namespaces, /proc/sys writes inside them)::

    sudo .venv/bin/python benchmarks/remediation.py [--drifts 20] [--intervals 1,5]
        [--schedule 30] [--skip-baseline] [--json FILE]

Set-up: the lab (lab/netlab.py: client, director lb1 holding the VIP, real server rs1 on a bridge)
plus a namespace ``salt`` on the LAN (198.51.100.1) in which a real salt-master runs, configured
with the shipped snippet (salt/reactor/lvs/master.d/lvs-remediation.conf; ``window: 0`` here, so
that every drift is acted on: the rate limit is not what is measured) and the repository's
``salt/`` as file root. A real salt-minion runs inside rs1's namespace (``loop_interval: 1``, the
default). The formula is applied once (``state.apply lvs``: VIPs, ARP sysctls, the beacon from
the pillar ``lvs_beacon``). Nothing touches the host's namespace or /etc: the daemons' roots,
sockets, keys and the module's files live in a temporary folder; the Salt CLIs run inside the
``salt`` namespace.

Each of ``--drifts`` drifts, in turn: ``arp_ignore=0`` on eth0, ``arp_announce=0`` on eth0, the
IPv4 VIP deleted from lo. Each comes after a random pause of up to one period (the beacon
interval, the schedule), so that it falls at a random moment of the period, as drift does (right
after a repair it would always fall at the same phase). The clock starts when the change is made
and stops when rs1's kernel is right again (polled every 20 ms); after each repair the wire is
checked (only the director answers ARP for the VIP), outside the timing.

Modes:

beacon, interval N   the beacon checks every N seconds; drift event -> reactor -> lvs_remediate
                     (verifies the signature, compiles rs1's pillar) -> state.apply
                     lvs.realserver on rs1.
scheduled highstate  the beacon removed (``lvs_beacon: {enabled: false}``), a minion schedule
                     runs ``state.highstate`` every ``--schedule`` seconds. Each drift comes at a
                     random moment of the schedule period (a uniform pause first), as drift does;
                     expect about half the period plus one highstate. Production schedules are
                     15-60 minutes: scale the median with the period.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lab import netlab  # noqa: E402

signal.signal(signal.SIGINT, signal.default_int_handler)

VENV = Path(sys.prefix) if (Path(sys.prefix) / "bin" / "salt-master").exists() else REPO / ".venv"
SALT_ADDR = "198.51.100.1"
VIP = netlab.VIP
KINDS = ("arp_ignore", "arp_announce", "vip_deleted")
REPAIR_WAIT = 300


class Salt:
    """A salt-master in the lab's ``salt`` namespace and a salt-minion in rs1's."""

    def __init__(self, lab, root: Path, interval: int):
        self.lab = lab
        self.root = root
        self.procs = []
        self.master_conf = root / "master-conf"
        self.minion_conf = root / "minion-conf"
        self.pillar = root / "pillar"
        self.top = root / "top"
        for folder in (self.master_conf, self.minion_conf, self.pillar, self.top):
            folder.mkdir(parents=True)
        snippet = yaml.safe_load(
            (REPO / "salt/reactor/lvs/master.d/lvs-remediation.conf").read_text())
        snippet["lvs_remediate"]["window"] = 0
        master = {
            "id": "bench-master", "root_dir": str(root / "master"), "user": "root",
            "interface": SALT_ADDR, "auto_accept": True,
            "file_roots": {"base": [str(REPO / "salt"), str(self.top)]},
            "pillar_roots": {"base": [str(self.pillar)]},
            "file_ignore_regex": [r"(^|/)__pycache__(/|$)"],
            "log_level_logfile": "info", **snippet,
        }
        (self.master_conf / "master").write_text(json.dumps(master, indent=1))
        persist = root / "persist"
        minion = {
            "id": "rs1", "root_dir": str(root / "minion"), "user": "root", "master": SALT_ADDR,
            "loop_interval": 1, "log_level_logfile": "info",
            "lvs_realserver": {"state_file": str(persist / "state.json"),
                               "sysctl_file": str(persist / "sysctl.conf"),
                               "vip_file": str(persist / "vips"),
                               "unit_file": str(persist / "systemd" / "lvs.service")},
        }
        (self.minion_conf / "minion").write_text(json.dumps(minion, indent=1))
        example = yaml.safe_load((REPO / "pillar.example").read_text())
        (self.pillar / "top.sls").write_text("base:\n  '*':\n    - lvs\n    - beacon\n")
        (self.pillar / "lvs.sls").write_text(json.dumps({"lvs": example["lvs"]}))
        self.set_beacon(interval)
        (self.top / "top.sls").write_text("base:\n  'rs1':\n    - lvs\n")

    def set_beacon(self, interval):
        beacon = {"enabled": True, "interval": interval, "remind": 60} if interval else {
            "enabled": False}
        (self.pillar / "beacon.sls").write_text(json.dumps({"lvs_beacon": beacon}))

    def start(self):
        salt_ns, rs1_ns = self.lab.host("salt").ns, self.lab.host("rs1").ns
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.procs.append(salt_ns.popen(str(VENV / "bin" / "salt-master"), "-c",
                                        str(self.master_conf), "-l", "quiet", **quiet))
        self.procs.append(rs1_ns.popen(str(VENV / "bin" / "salt-minion"), "-c",
                                       str(self.minion_conf), "-l", "quiet", **quiet))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            out = self.salt("test.ping", check=False, timeout=15)
            if isinstance(out, dict) and out.get("rs1") is True:
                return
            time.sleep(2)
        raise RuntimeError("the minion did not answer within 180 s")

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _cli(self, tool, *args, check=True, timeout=300):
        argv = [str(VENV / "bin" / tool), "-c", str(self.master_conf), "--out=json", *args]
        proc = self.lab.host("salt").ns.run(*argv, check=False, timeout=timeout + 30)
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            data = {}
        if check and proc.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n"
                               f"{proc.stderr}")
        return data

    def salt(self, *args, check=True, timeout=120):
        return self._cli("salt", "-t", str(timeout), "rs1", *args, check=check, timeout=timeout)

    def run(self, *args, check=True):
        return self._cli("salt-run", *args, check=check)


def drift(lab, kind):
    rs1 = lab.host("rs1")
    if kind == "arp_ignore":
        rs1.ns.write_sysctl("net/ipv4/conf/eth0/arp_ignore", 0)
    elif kind == "arp_announce":
        rs1.ns.write_sysctl("net/ipv4/conf/eth0/arp_announce", 0)
    else:
        rs1.ip("addr", "del", f"{VIP}/32", "dev", "lo")


def repaired(lab, kind):
    rs1 = lab.host("rs1")
    if kind == "arp_ignore":
        return rs1.ns.sysctl("net/ipv4/conf/eth0/arp_ignore") == "1"
    if kind == "arp_announce":
        return rs1.ns.sysctl("net/ipv4/conf/eth0/arp_announce") == "2"
    return f"{VIP}/32" in rs1.addresses("lo")


def clean(lab):
    return all(repaired(lab, k) for k in KINDS)


def measure(lab, drifts, phase=0.0):
    """``drifts`` drift-to-repair latencies in seconds (``phase``: a random pause before each)."""
    out = []
    for i in range(drifts):
        kind = KINDS[i % len(KINDS)]
        time.sleep(1.5 + (random.uniform(0, phase) if phase else 0))
        if not clean(lab):
            raise RuntimeError("rs1 is not clean before a drift")
        start = time.monotonic()
        drift(lab, kind)
        while not repaired(lab, kind):
            if time.monotonic() - start > REPAIR_WAIT:
                raise RuntimeError(f"{kind} not repaired within {REPAIR_WAIT} s")
            time.sleep(0.02)
        took = time.monotonic() - start
        assert lab.arp_responders() == {"lb1"}, "repaired in the kernel but not on the wire"
        out.append((kind, took))
        print(f"  {i + 1:2d} {kind:13s} {took:7.2f} s", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drifts", type=int, default=20)
    parser.add_argument("--intervals", default="1,5", help="beacon intervals to measure")
    parser.add_argument("--schedule", type=int, default=30, help="highstate period, seconds")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/remediation.py must run as root (namespaces)")
    intervals = [int(i) for i in args.intervals.split(",") if i]

    results = {}
    root = Path(tempfile.mkdtemp(prefix="lvs-remediation-bench-"))
    try:
        with netlab.Lab(realservers={"rs1": netlab.REALSERVERS["rs1"]},
                        extra_hosts={"salt": SALT_ADDR}) as lab:
            salt = Salt(lab, root, intervals[0] if intervals else 0)
            try:
                t = time.monotonic()
                salt.start()
                print(f"master and minion up in {time.monotonic() - t:.1f} s", flush=True)
                assert "runners.lvs_remediate" in salt.run("saltutil.sync_runners")
                salt.salt("saltutil.sync_all")
                for interval in intervals:
                    salt.set_beacon(interval)
                    salt.salt("saltutil.refresh_pillar", "wait=True")
                    applied = salt.salt("state.apply", "lvs")
                    assert all(s["result"] for s in applied["rs1"].values()), applied
                    assert lab.arp_responders() == {"lb1"}
                    print(f"beacon, interval {interval} s:", flush=True)
                    results[f"beacon, interval {interval} s"] = measure(lab, args.drifts,
                                                                        phase=interval)
                if not args.skip_baseline:
                    salt.set_beacon(0)
                    salt.salt("saltutil.refresh_pillar", "wait=True")
                    salt.salt("state.apply", "lvs")
                    beacons = salt.salt("beacons.list", "return_yaml=False")["rs1"] or {}
                    assert "lvs_realserver" not in beacons, beacons
                    salt.salt("schedule.add", "bench-highstate", "function=state.highstate",
                              f"seconds={args.schedule}")
                    print(f"scheduled highstate every {args.schedule} s:", flush=True)
                    results[f"scheduled highstate, {args.schedule} s"] = measure(
                        lab, args.drifts, phase=args.schedule)
            finally:
                salt.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    first = next(iter(results.values()))
    ref = statistics.median(t for _, t in first)
    print(f"\ndrift-to-repair latency, rs1 ({args.drifts} drifts per mode: "
          f"{', '.join(KINDS)} in turn)")
    print(f"{'mode':32} {'median s':>9} {'worst s':>8} {'best s':>7} {'x beacon':>9}")
    print("-" * 70)
    summary = {}
    for mode, samples in results.items():
        times = [t for _, t in samples]
        med = statistics.median(times)
        summary[mode] = {"median": med, "worst": max(times), "best": min(times),
                         "ratio": med / ref, "samples": samples}
        print(f"{mode:32} {med:9.2f} {max(times):8.2f} {min(times):7.2f} {med / ref:9.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "summary": summary,
                                         "machine": platform.uname()._asdict()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
