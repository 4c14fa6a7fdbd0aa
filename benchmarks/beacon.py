#!/usr/bin/env python3
"""Benchmark the ``lvs_realserver`` beacon: CPU per interval on a real server with 100 VIPs and
20 ARP-facing interfaces, against the obvious way of writing it.

Run from the repository root, as root (namespaces, netlink, /proc/sys writes)::

    sudo .venv/bin/python benchmarks/beacon.py [--vips 100] [--nics 20] [--calls 2000] [--json F]

Set-up, in one throwaway namespace from :mod:`lab.netns` (the host is never touched): ``--nics``
veth interfaces ``eth0``... each with an address in 198.51.100.0/24 (so every one of them faces
every VIP: the most the beacon has to read), ``--vips`` IPv4 VIPs 198.51.100.1... applied by
``lvs_realserver.apply`` (``arp_method: sysctl``, ``scope: interfaces``; record and files in a temp
folder). The beacon and the module are loaded from the repository files with importlib and given
the dunders they read (``__salt__`` with the module's own functions), as Salt's loader would.

Rows (CPU time of the calling thread, ``time.thread_time_ns``, per call; median and p99 of
``--calls`` calls after 50 warm-up calls):

beacon, steady state      ``beacon(config)`` when nothing changed: stat the record, drain the
                          netlink notification socket, read the ARP sysctls of ``all`` and of the
                          facing NICs. What every real server pays every interval.
beacon, after a change    the same call when the kernel announced a link/address change: one
                          ``lvs_realserver.observe`` (links + addresses by netlink, /proc/sys),
                          the facing NICs recomputed, then the reads above.
beacon, nftables method   steady state with ``arp_method: nftables`` (no sysctl to read; rule
                          changes arrive as nfnetlink notifications). Skipped without ``nft``.
baseline: audit per tick  ``audit_observed(vips, observe())``: the module's own audit every
                          interval, the obvious beacon.
baseline: ip + sysctl     ``ip -j addr`` and one ``sysctl -n`` for the facing keys, as a
                          ``cmd.run``-style beacon would (CPU of the children included).
salt: proc scan           ``salt.utils.minion.running(opts)`` on an empty proc folder: what Salt
                          itself adds per interval for ``disable_during_state_run`` (reference).

Checks (outside the timing): the steady-state call returns no event; after ``arp_ignore=0`` on a
facing NIC the next call reports exactly that NIC, and after a repair one ``clear``.
Target: the steady state under 1 ms of CPU per interval.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lab.netns import Netns  # noqa: E402
from tests.loadmod import load  # noqa: E402

signal.signal(signal.SIGINT, signal.default_int_handler)

TARGET_NS = 1_000_000  # 1 ms of CPU per interval
WARMUP = 50


def percentile(values, pct):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def timed(fn, calls):
    for _ in range(WARMUP):
        fn()
    samples = []
    for _ in range(calls):
        start = time.thread_time_ns()
        fn()
        samples.append(time.thread_time_ns() - start)
    return samples


def timed_with_children(fn, calls):
    """CPU of this thread plus of the child processes ``fn`` ran, per call."""
    samples = []
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.thread_time_ns()
        fn()
        own = time.thread_time_ns() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        kids = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        samples.append(own + int(kids * 1e9))
    return samples


def build(nics, vips):
    for i in range(nics):
        name = f"eth{i}"
        subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"p{i}"],
                       check=True)
        subprocess.run(["ip", "addr", "add", f"198.51.100.{200 + i}/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        subprocess.run(["ip", "link", "set", f"p{i}", "up"], check=True)
    return [f"198.51.100.{i + 1}" for i in range(vips)]


def measure(args, tmp):
    """Runs inside the namespace (a forked child): set up, check, time every row."""
    paths = {k: os.path.join(tmp, k) for k in ("state_file", "sysctl_file", "vip_file",
                                                "unit_file")}
    funcs = {"config.get": lambda key, default=None: default}
    rs = load("modules", "lvs_realserver", salt=funcs, pillar={}, opts={"id": "rs1"})
    funcs.update({"lvs_realserver.observe": rs.observe,
                 "lvs_realserver.arp_facing_interfaces": rs.arp_facing_interfaces,
                 "lvs_realserver.remove": rs.remove, "lvs_pillar.realserver": lambda: {}})
    with open("/proc/sys/net/ipv6/conf/default/accept_dad", "w", encoding="ascii") as fh:
        fh.write("0")  # no DAD: link-local addresses settle at once, no late notifications
    vips = build(args.nics, args.vips)
    rs.apply(vips=vips, scope="interfaces", persist=False, exclusive=True, arp_method="sysctl",
             **paths)
    beacon = load("beacons", "lvs_realserver", salt=funcs, context={},
                  opts={"id": "rs1", "pki_dir": tmp})
    conf = [{"state_file": paths["state_file"]}, {"sign": False}]
    out = {"rows": {}, "checks": {}}

    time.sleep(1)  # let the set-up's last link and address notifications arrive
    beacon.beacon(conf)
    # checks first (outside the timing)
    assert beacon.beacon(conf) == [] and beacon.beacon(conf) == [], "steady state must be quiet"
    watcher = beacon.__context__[beacon.CONTEXT_KEY]
    out["checks"]["facing"] = len(watcher.checks["arp"])
    out["checks"]["sysctl_reads"] = len(watcher.paths)
    assert out["checks"]["facing"] == args.nics, watcher.checks
    last = f"eth{args.nics - 1}"
    with open(f"/proc/sys/net/ipv4/conf/{last}/arp_ignore", "w", encoding="ascii") as fh:
        fh.write("0")
    event = beacon.beacon(conf)
    assert [(f["kind"], f["interface"]) for f in event[0]["findings"]] == [("arp_ignore", last)]
    with open(f"/proc/sys/net/ipv4/conf/{last}/arp_ignore", "w", encoding="ascii") as fh:
        fh.write("1")
    assert beacon.beacon(conf)[0]["event"] == "clear"
    out["checks"]["drift_reported"] = True

    out["rows"]["beacon, steady state"] = timed(lambda: beacon.beacon(conf), args.calls)

    def after_change():
        watcher.dirty = True
        beacon.beacon(conf)

    out["rows"]["beacon, after a change"] = timed(after_change, max(200, args.calls // 10))

    vip_addrs = [rs.ipaddress.ip_address(v) for v in vips]
    out["rows"]["baseline: audit per tick"] = timed(
        lambda: rs.audit_observed(vip_addrs, rs.observe()), max(200, args.calls // 10))

    facing_keys = [f"net.ipv4.conf.{n}.{k}" for n in ["all", *(f"eth{i}" for i in range(args.nics))]
                   for k in ("arp_ignore", "arp_announce")]

    def shell():
        subprocess.run(["ip", "-j", "addr"], capture_output=True, check=True)
        subprocess.run(["sysctl", "-n", *facing_keys], capture_output=True, check=True)

    out["rows"]["baseline: ip + sysctl"] = timed_with_children(shell, 50)

    from salt.utils.minion import running  # pylint: disable=import-outside-toplevel

    proc = Path(tmp) / "cache"
    (proc / "proc").mkdir(parents=True, exist_ok=True)
    out["rows"]["salt: proc scan"] = timed(
        lambda: running({"cachedir": str(proc)}), args.calls)

    if shutil.which("nft"):
        rs.apply(vips=vips, scope="interfaces", persist=False, exclusive=True,
                 arp_method="nftables", **paths)
        nft_beacon = load("beacons", "lvs_realserver", salt=funcs, context={},
                          opts={"id": "rs1", "pki_dir": tmp})
        assert nft_beacon.beacon(conf) == [] and nft_beacon.beacon(conf) == []
        out["rows"]["beacon, nftables method"] = timed(lambda: nft_beacon.beacon(conf),
                                                       args.calls)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vips", type=int, default=100)
    parser.add_argument("--nics", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/beacon.py must run as root (namespaces, /proc/sys writes)")

    tmp = tempfile.mkdtemp(prefix="lvs-beacon-bench-")
    try:
        with Netns("beacon-bench") as ns:
            result = ns.call(measure, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = result["rows"]
    audit = statistics.median(rows["baseline: audit per tick"])
    print(f"lvs_realserver beacon, {args.vips} IPv4 VIPs, {args.nics} ARP-facing NICs "
          f"({result['checks']['sysctl_reads']} sysctl files read per interval); "
          f"CPU per call (thread time), median and p99")
    print(f"{'row':28} {'calls':>6} {'median us':>10} {'p99 us':>9} {'x 1 ms':>8} {'x audit':>8}")
    print("-" * 74)
    summary = {}
    for name, samples in rows.items():
        med = statistics.median(samples)
        summary[name] = {"calls": len(samples), "median_us": med / 1000,
                         "p99_us": percentile(samples, 99) / 1000,
                         "vs_target": med / TARGET_NS, "vs_audit": med / audit}
        print(f"{name:28} {len(samples):6d} {med / 1000:10.1f} "
              f"{percentile(samples, 99) / 1000:9.1f} {med / TARGET_NS:8.3f} {med / audit:8.3f}")
    steady = summary["beacon, steady state"]["median_us"]
    verdict = "PASS" if steady * 1000 < TARGET_NS else "FAIL"
    print(f"\ntarget: steady state under 1000 us of CPU per interval: {steady:.1f} us -> {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "args": vars(args) | {"json": str(args.json)}, "summary": summary,
            "checks": result["checks"], "machine": platform.uname()._asdict(),
            "python": platform.python_version()}, indent=1))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
