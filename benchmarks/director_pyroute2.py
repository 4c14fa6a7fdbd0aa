#!/usr/bin/env python3
"""Why ``lvs_director`` does not use pyroute2's IPVS API: the same table built with it, against
``ipvsadm -R`` in the same run.

Builds N services x 10 real servers (the table of ``benchmarks/director.py``: one VIP,
198.51.100.100, tcp ports 1..N, wlc, direct routing, 198.51.100.11..20 with weight 100) with
``pyroute2.IPVS`` (``service("add")`` and ``dest("add")``, one request each), reads it back with
its ``dump``, then builds it again with ``ipvsadm -R``; each in a fresh namespace (lab.netns),
checked with ``ipvsadm -Sn`` afterwards. Needs IPVS, so it runs in the kernel lane's VM::

    sudo tools/kernel-lane/run-vm -c 'modprobe -a ip_vs ip_vs_wlc && cd /work/main && \\
        .venv/bin/python benchmarks/director_pyroute2.py --sizes 100,1000'

(use the repository's own path). Prints one line per size with the ratio to ``ipvsadm -R``.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lab.netns import Netns  # noqa: E402

VIP = "198.51.100.100"
RIPS = [f"198.51.100.{11 + r}" for r in range(10)]


def _pyroute2(n: int) -> dict:
    from pyroute2 import IPVS, IPVSDest, IPVSService  # pylint: disable=import-outside-toplevel

    t0 = time.perf_counter()
    with IPVS() as ipvs:
        for port in range(1, n + 1):
            svc = IPVSService(addr=VIP, port=port, protocol=socket.IPPROTO_TCP, sched_name="wlc")
            ipvs.service("add", service=svc)
            for rip in RIPS:
                ipvs.dest("add", service=svc, dest=IPVSDest(addr=rip, port=port, weight=100))
    t1 = time.perf_counter()
    dests = 0
    with IPVS() as ipvs:
        for msg in ipvs.service("dump"):
            dests += sum(1 for _ in ipvs.dest("dump", service=IPVSService.from_message(msg)))
    return {"add": t1 - t0, "read": time.perf_counter() - t1, "dests": dests}


def _restore(n: int) -> dict:
    lines = [f"-A -t {VIP}:{p} -s wlc" for p in range(1, n + 1)]
    lines += [f"-a -t {VIP}:{p} -r {rip}:{p} -g -w 100" for p in range(1, n + 1) for rip in RIPS]
    t0 = time.perf_counter()
    subprocess.run(["ipvsadm", "-R"], input="\n".join(lines) + "\n", text=True, check=True)
    return {"add": time.perf_counter() - t0}


def _count(ns: Netns) -> int:
    out = ns.run("ipvsadm", "-Sn").stdout
    return sum(1 for line in out.splitlines() if line.startswith("-a ") and " -w 100" in line)


def measure(fn, n: int, tag: str) -> dict:
    ns = Netns(tag)
    try:
        res = ns.call(fn, n)
        if _count(ns) != 10 * n:
            raise SystemExit(f"{tag}: the kernel does not hold {10 * n} real servers")
        ns.run("ipvsadm", "-C")
    finally:
        ns.delete()
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--sizes", default="100,1000")
    args = p.parse_args()
    for n in (int(x) for x in args.sizes.split(",")):
        pyr = measure(_pyroute2, n, "pyr")
        ref = measure(_restore, n, "restore")
        print(f"N={n} x 10: pyroute2 IPVS add {pyr['add']:.2f} s, its read-back "
              f"{pyr['read']:.2f} s ({pyr['dests']} dests); ipvsadm -R {ref['add']:.2f} s; "
              f"pyroute2 = {pyr['add'] / ref['add']:.1f}x ipvsadm -R", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
