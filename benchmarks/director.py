#!/usr/bin/env python3
"""Benchmark ``lvs_director.apply``: reconcile N services x 10 real servers from empty, as a no-op,
and after a 10% weight change, against ``ipvsadm -R`` and one ``ipvsadm`` process per entry.

It needs a kernel with IPVS, so it runs in the kernel lane's VM (see ``benchmarks/run-director``,
which boots the VM, runs this and copies the results back)::

    sudo benchmarks/run-director [--sizes 100,1000] [--repeat 3] [--profile CASE:N]

Inside a guest (or on any root shell whose kernel has ``ip_vs``), from the repository root::

    .venv/bin/python benchmarks/director.py [--sizes 100,1000] [--repeat 3] [--json FILE]

Everything happens in throwaway network namespaces from :mod:`lab.netns`: a fresh one per
measurement, with lo up and an ``eth0`` veth (peer in the same namespace) on 198.51.100.2/24.
The table: one VIP, 198.51.100.100, tcp ports 1..N, scheduler wlc, direct routing, real servers
198.51.100.11..20 with weight 100. The pillar names N services (``s00001``... one port each) with
the same 10 real servers, and director ``lb1`` on eth0 with ``garp_count: 0`` (no sleeping).

Cases (each row of the table):

module from-empty        ``apply()`` on a fresh namespace: pillar validation, observe (links,
                         addresses, sysctls, IPVS dumps), plan, execute (2 sysctls, the netlink
                         batches of N + 10N adds, the VIP on eth0), the record written (fsync'd)
module no-op             the same call again, right after, in the same namespace: the quick
                         check (pillar digest, record, VIPs, sysctls, /proc/net/ip_vs); the
                         run must report ``checked: quick``
module no-op, full       the same call with ``verify="full"``: the pillar validated again and the
                         whole table read over netlink (one dump per service); ratio against
                         ``ipvsadm -Sn``, which reads the same way
module weights 10%       the pillar gives rs01 weight 150 in every service (N of the 10N dests)
                         and ``apply()`` runs again, in the same namespace
ipvsadm -R from-empty    ``ipvsadm -R`` fed the same table as ``-A``/``-a`` lines on stdin: the
                         reference, about the kernel's cost plus one process start
ipvsadm -R weights 10%   ``ipvsadm -R`` fed the N ``-e`` lines of the weight change
ipvsadm -Sn read         ``ipvsadm -Sn`` reading the whole table back: what a no-op cannot do
                         without (it has to observe the table), by a C tool
per-entry from-empty     one ``ipvsadm -A``/``-a`` process per service and per real server, what
                         Salt's removed ``lvs`` execution module did (one ``cmd.run`` each; Salt's
                         own overhead per call is not counted, so this is a lower bound)
per-entry weights 10%    one ``ipvsadm -e`` process per changed real server

Only the call itself is timed (``time.perf_counter`` in a child forked into the namespace): not
Python's start-up or imports, not the module loading, not the fork, not the namespace set-up. The
modules are loaded with ``tests/loadmod`` in this process before any fork: ``lvs_director`` gets
``__salt__`` with ``lvs_pillar.director`` (the loaded ``lvs_pillar``'s) and ``config.get`` (``{}``),
``__opts__ = {"id": "lb1"}``, ``__pillar__ = {}``; the pillar tree is passed as ``lvs=``.

Each result is checked outside the timing, so a broken module cannot post a fast number: the
kernel table (``ipvsadm -Sn``) must be exactly the N services x 10 dests with the right
forwarding method and weights after every row; the module must report N service and 10N real
server changes from empty (and the VIP on eth0), none and an empty journal as a no-op, and exactly
N real-server weight changes 100 -> 150 for the weight change. A failed check aborts the run.

``--profile CASE:N`` (CASE: from-empty, no-op, weights) runs one module case under cProfile
instead of the benchmark and prints where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import os
import platform
import pstats
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

from lab.netns import Netns  # noqa: E402  (needs the sys.path line above)
from lab.netns import veth_namespace  # noqa: E402
from tests.loadmod import load  # noqa: E402

# lab.netns turns SIGINT into "delete the namespaces and die"; a KeyboardInterrupt instead lets
# the `with` blocks delete them and the temp folder go too (its atexit hook still backs this up).
signal.signal(signal.SIGINT, signal.default_int_handler)

MODULE_PATHS = (REPO / "_modules" / "lvs_director.py", REPO / "_modules" / "lvs_pillar.py")
ETH0 = "eth0"
ETH0_ADDR = "198.51.100.2"
ETH0_PREFIX = 24
VIP = "198.51.100.100"  # documentation ranges only (never 192.0.2.0/24)
RIPS = tuple(f"198.51.100.{host}" for host in range(11, 21))
WEIGHT = 100
NEW_WEIGHT = 150  # the weight change: rs01 (198.51.100.11) in every service, 10% of the dests
SCHEDULER = "wlc"
TARGET_RATIO = 2.0  # module from empty: within 2x of ipvsadm -R
TARGET_NOOP_SHARE = 0.05  # module no-op: under 5% of the module's from-empty time

ROWS = (
    # (key, label)
    ("module-empty", "module from-empty"),
    ("module-noop", "module no-op"),
    ("module-noop-full", "module no-op, full"),
    ("module-weights", "module weights 10%"),
    ("restore-empty", "ipvsadm -R from-empty"),
    ("restore-weights", "ipvsadm -R weights 10%"),
    ("save", "ipvsadm -Sn read"),
    ("perentry-empty", "per-entry from-empty"),
    ("perentry-weights", "per-entry weights 10%"),
)
# the baseline each row's ratio is taken against
BASE = {
    "module-empty": "restore-empty", "restore-empty": "restore-empty",
    "perentry-empty": "restore-empty", "module-weights": "restore-weights",
    "restore-weights": "restore-weights", "perentry-weights": "restore-weights",
    "save": "restore-empty", "module-noop-full": "save",
}
# module phases, timed by wrapping the module globals that _run calls once each; "batch" (the
# netlink send + acks of Genl.batch) is part of "execute"; "rest" is what none of them covers
# (_paths, Genl() opening the socket, Plan.changes)
PHASES = ("unchanged", "_config", "observe_host", "validate_for_kernel", "desired_table",
          "read_table", "read_record", "plan_director", "execute", "write_record", "write_check")
PHASE_LABELS = {"unchanged": "check", "_config": "pillar", "observe_host": "host",
                "validate_for_kernel": "validate", "desired_table": "desired",
                "read_table": "dump", "read_record": "record", "plan_director": "plan",
                "execute": "execute", "write_record": "write", "write_check": "w.check"}

MOD = None  # lvs_director under test, loaded once in this process; forked children inherit it


class CheckFailed(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------


def load_modules():
    """``lvs_pillar`` and ``lvs_director`` through tests/loadmod, wired as the loader would."""
    pillar = load("modules", "lvs_pillar", opts={"id": "lb1"}, pillar={})
    salt = {"lvs_pillar.director": pillar.director, "config.get": lambda *a, **k: {}}
    return load("modules", "lvs_director", salt=salt, opts={"id": "lb1"}, pillar={})


def make_pillar(n: int, changed: bool = False) -> dict:
    """The ``lvs`` tree: services s00001..sNNNNN, one port each, the same 10 real servers."""
    services = {}
    for port in range(1, n + 1):
        rss = {f"rs{i + 1:02d}": {"address": rip, "weight": WEIGHT} for i, rip in enumerate(RIPS)}
        if changed:
            rss["rs01"]["weight"] = NEW_WEIGHT
        services[f"s{port:05d}"] = {
            "vip": VIP, "protocol": "tcp", "ports": [port], "method": "dr",
            "scheduler": SCHEDULER, "realservers": rss,
        }
    return {"services": services, "directors": {"lb1": {"interface": ETH0, "garp_count": 0}}}


def expected_table(n: int, changed: bool = False) -> dict:
    """{port: (scheduler, {rip: (fwd, weight)})} as ``ipvsadm -Sn`` must show it."""
    table = {}
    for port in range(1, n + 1):
        dests = {rip: ("-g", WEIGHT) for rip in RIPS}
        if changed:
            dests[RIPS[0]] = ("-g", NEW_WEIGHT)
        table[port] = (SCHEDULER, dests)
    return table


def restore_lines(n: int) -> str:
    lines = []
    for port in range(1, n + 1):
        lines.append(f"-A -t {VIP}:{port} -s {SCHEDULER}")
        lines.extend(f"-a -t {VIP}:{port} -r {rip}:{port} -g -w {WEIGHT}" for rip in RIPS)
    return "".join(line + "\n" for line in lines)


def weight_lines(n: int) -> str:
    return "".join(
        f"-e -t {VIP}:{port} -r {RIPS[0]}:{port} -g -w {NEW_WEIGHT}\n" for port in range(1, n + 1)
    )


def fresh_ns(tag: str) -> Netns:
    """A new namespace with lo up and an eth0 veth (peer in the same namespace) on 198.51.100.2/24."""
    return veth_namespace(tag, ETH0, f"{ETH0_ADDR}/{ETH0_PREFIX}")


def drop_ns(ns: Netns) -> None:
    """Flush the IPVS table synchronously, then delete the namespace.

    Deleting a namespace that still holds 10 000 dests leaves the flush to the kernel's
    asynchronous netns clean-up, which would then run during the next measurement (one vCPU).
    """
    ns.run("ipvsadm", "-C", check=False)
    ns.delete()
    time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# Inside the namespace (forked children)
# --------------------------------------------------------------------------------------------


def _child_apply(lvs, state_file, profile=False, verify="quick"):
    """Runs in a child inside the namespace: time one ``apply`` call, with a phase breakdown."""
    mod = MOD
    phases = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    for name in PHASES:  # _run and apply look these up as module globals at call time
        setattr(mod, name, timed(name, getattr(mod, name)))
    mod.Genl.batch = timed("batch", mod.Genl.batch)  # this child only: the parent keeps its own
    prof = cProfile.Profile() if profile else None
    gc.collect()  # also takes the copy-on-write faults of the fork before the clock starts
    at = time.time()
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    ret = mod.apply(test=False, lvs=lvs, state_file=state_file, verify=verify)
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - t0
    phases["rest"] = elapsed - sum(phases.get(p, 0.0) for p in PHASES)
    journal_kinds = {}
    for line in ret["journal"]:
        kind = line.split(" ", 1)[0]
        journal_kinds[kind] = journal_kinds.get(kind, 0) + 1
    out = {
        "elapsed": elapsed,
        "at": at,
        "phases": phases,
        "changes": {group: len(items) for group, items in ret["changes"].items()},
        "realserver_changes": ret["changes"].get("realserver", {}),
        "address_changes": sorted(ret["changes"].get("address", {})),
        "journal_kinds": journal_kinds,
        "journal_len": len(ret["journal"]),
        "warnings": list(ret["warnings"]),
        "checked": ret.get("checked"),
    }
    if prof:
        out["profile"] = profile_report(prof)
    return out


def _child_restore(text):
    """``ipvsadm -R`` with ``text`` on stdin, timed from inside the namespace."""
    at = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(["ipvsadm", "-R"], input=text, text=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        raise CheckFailed(f"ipvsadm -R exited {proc.returncode}: {proc.stderr[:500]}")
    return {"elapsed": elapsed, "at": at}


def _child_save():
    """``ipvsadm -Sn``: the whole table read back, timed from inside the namespace."""
    at = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(["ipvsadm", "-Sn"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        raise CheckFailed(f"ipvsadm -Sn exited {proc.returncode}: {proc.stderr[:500]}")
    return {"elapsed": elapsed, "at": at, "output": proc.stdout}


def _child_per_entry(argvs):
    """One ``ipvsadm`` process per entry, in turn, timed from inside the namespace."""
    at = time.time()
    t0 = time.perf_counter()
    for argv in argvs:
        proc = subprocess.run(argv, capture_output=True)
        if proc.returncode:
            raise CheckFailed(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr!r}")
    return {"elapsed": time.perf_counter() - t0, "at": at, "processes": len(argvs)}


# --------------------------------------------------------------------------------------------
# Checks (outside the timing)
# --------------------------------------------------------------------------------------------


def kernel_table(ns: Netns, out: str | None = None) -> dict:
    """The namespace's IPVS table from ``ipvsadm -Sn`` (or its output ``out``), in the shape of
    :func:`expected_table`."""
    if out is None:
        out = ns.run("ipvsadm", "-Sn", timeout=300).stdout
    table = {}
    for line in out.splitlines():
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "-A":
            if tok[1] != "-t" or not tok[2].startswith(f"{VIP}:"):
                raise CheckFailed(f"unexpected service line: {line}")
            opts = dict(zip(tok[3::2], tok[4::2]))
            table[int(tok[2].rsplit(":", 1)[1])] = (opts.get("-s"), {})
        elif tok[0] == "-a":
            port = int(tok[2].rsplit(":", 1)[1])
            rip, rport = tok[4].rsplit(":", 1)
            if int(rport) != port:
                raise CheckFailed(f"real server port differs from the service's: {line}")
            fwd = next((t for t in tok[5:] if t in ("-g", "-i", "-m")), None)
            weight = int(tok[tok.index("-w") + 1])
            table[port][1][rip] = (fwd, weight)
        else:
            raise CheckFailed(f"unexpected ipvsadm -Sn line: {line}")
    return table


def check_table(ns: Netns, n: int, case: str, changed: bool = False, out=None) -> None:
    got = kernel_table(ns, out)
    want = expected_table(n, changed)
    if got == want:
        return
    dests = sum(len(d) for _, d in got.values())
    diff = [p for p in sorted(set(got) | set(want)) if got.get(p) != want.get(p)][:3]
    raise CheckFailed(
        f"{case}: the kernel holds {len(got)} services / {dests} dests, want {n} / {10 * n} "
        f"{'(rs01 weight 150)' if changed else ''}; first differences: "
        + "; ".join(f"port {p}: {got.get(p)} != {want.get(p)}" for p in diff)
    )


def check_vip(ns: Netns, case: str) -> None:
    out = ns.run("ip", "-o", "addr", "show", "dev", ETH0).stdout
    if f"inet {VIP}/32 " not in out:
        raise CheckFailed(f"{case}: {VIP}/32 is not on {ETH0}:\n{out}")


def check_empty_result(res: dict, n: int, case: str) -> None:
    want = {"service": n, "realserver": 10 * n, "address": 1}
    got = {k: res["changes"].get(k) for k in want}
    if got != want:
        raise CheckFailed(f"{case}: module reported {res['changes']}, want {want} (+ sysctl)")
    kinds = res["journal_kinds"]
    if kinds.get("svc_add") != n or kinds.get("dest_add") != 10 * n or kinds.get("vip_add") != 1:
        raise CheckFailed(f"{case}: journal {kinds}, want {n} svc_add, {10 * n} dest_add, 1 vip_add")
    if res["warnings"]:
        raise CheckFailed(f"{case}: warnings {res['warnings'][:3]}")


def check_noop_result(res: dict, case: str, checked: str = "quick") -> None:
    if res["checked"] != checked:
        raise CheckFailed(f"{case}: checked {res['checked']!r}, want {checked!r}")
    if res["changes"] or res["journal_len"] or res["warnings"]:
        raise CheckFailed(
            f"{case}: a no-op reported changes {res['changes']}, journal {res['journal_kinds']}, "
            f"warnings {res['warnings'][:3]}"
        )


def check_weights_result(res: dict, n: int, case: str) -> None:
    if res["changes"] != {"realserver": n} or res["journal_kinds"] != {"dest_set": n}:
        raise CheckFailed(
            f"{case}: module reported {res['changes']} / journal {res['journal_kinds']}, want "
            f"{n} real server changes ({n} dest_set) = 10% of {10 * n}"
        )
    for target, change in res["realserver_changes"].items():
        if (f"-> {RIPS[0]}:" not in target or change.get("old") != {"weight": WEIGHT}
                or change.get("new") != {"weight": NEW_WEIGHT}):
            raise CheckFailed(f"{case}: unexpected change {target}: {change}")


# --------------------------------------------------------------------------------------------
# Measurements: each returns {row key: sample}
# --------------------------------------------------------------------------------------------


def measure_module(n: int, pillars: tuple, tmp_root: Path, tag: str) -> dict:
    lvs, lvs_changed = pillars
    folder = Path(tempfile.mkdtemp(prefix="dir-", dir=tmp_root))
    state_file = str(folder / "director.json")
    ns = fresh_ns(tag)
    try:
        empty = ns.call(_child_apply, lvs, state_file)
        check_empty_result(empty, n, "module from-empty")
        check_table(ns, n, "module from-empty")
        check_vip(ns, "module from-empty")
        noop = ns.call(_child_apply, lvs, state_file)
        check_noop_result(noop, "module no-op")
        check_table(ns, n, "module no-op")
        full = ns.call(_child_apply, lvs, state_file, False, "full")
        check_noop_result(full, "module no-op, full", "full")
        weights = ns.call(_child_apply, lvs_changed, state_file)
        check_weights_result(weights, n, "module weights 10%")
        check_table(ns, n, "module weights 10%", changed=True)
    finally:
        drop_ns(ns)
        shutil.rmtree(folder, ignore_errors=True)
    for res in (empty, noop, full, weights):
        res.pop("realserver_changes")
    return {"module-empty": empty, "module-noop": noop, "module-noop-full": full,
            "module-weights": weights}


def measure_restore(n: int, tag: str) -> dict:
    ns = fresh_ns(tag)
    try:
        empty = ns.call(_child_restore, restore_lines(n))
        save = ns.call(_child_save)
        check_table(ns, n, "ipvsadm -R from-empty", out=save.pop("output"))
        weights = ns.call(_child_restore, weight_lines(n))
        check_table(ns, n, "ipvsadm -R weights 10%", changed=True)
    finally:
        drop_ns(ns)
    return {"restore-empty": empty, "restore-weights": weights, "save": save}


def measure_per_entry(n: int, tag: str) -> dict:
    argvs = [["ipvsadm", *line.split()] for line in restore_lines(n).splitlines()]
    edits = [["ipvsadm", *line.split()] for line in weight_lines(n).splitlines()]
    ns = fresh_ns(tag)
    try:
        empty = ns.call(_child_per_entry, argvs)
        check_table(ns, n, "per-entry from-empty")
        weights = ns.call(_child_per_entry, edits)
        check_table(ns, n, "per-entry weights 10%", changed=True)
    finally:
        drop_ns(ns)
    return {"perentry-empty": empty, "perentry-weights": weights}


# --------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------

# functions whose cumulative time answers "where does it go" (matched on the function name and
# the file's basename; the module's own are in lvs_director.py / lvs_pillar.py)
KEY_FUNCTIONS = (
    ("lvs_director.py", "apply"),
    ("lvs_director.py", "_config"),
    ("lvs_pillar.py", "director"),
    ("lvs_pillar.py", "_model"),
    ("lvs_pillar.py", "_plain"),
    ("lvs_director.py", "observe_host"),
    ("lvs_director.py", "validate_for_kernel"),
    ("lvs_director.py", "available_schedulers"),
    ("lvs_director.py", "desired_table"),
    ("lvs_director.py", "read_table"),
    ("lvs_director.py", "dump"),
    ("lvs_director.py", "_messages"),
    ("lvs_director.py", "parse_attrs"),
    ("lvs_director.py", "decode_service"),
    ("lvs_director.py", "decode_dest"),
    ("lvs_director.py", "_ip_text"),
    ("lvs_director.py", "encode_service_key"),
    ("lvs_director.py", "plan_director"),
    ("lvs_director.py", "_diff"),
    ("lvs_director.py", "attrs"),
    ("lvs_director.py", "__str__"),
    ("lvs_director.py", "changes"),
    ("lvs_director.py", "execute"),
    ("lvs_director.py", "ipvs_request"),
    ("lvs_director.py", "encode_service"),
    ("lvs_director.py", "encode_dest"),
    ("lvs_director.py", "nla"),
    ("lvs_director.py", "batch"),
    ("lvs_director.py", "read_record"),
    ("lvs_director.py", "write_record"),
    ("~", "<method 'send' of '_socket.socket' objects>"),
    ("~", "<method 'recv' of '_socket.socket' objects>"),
    ("~", "<built-in method posix.fsync>"),
    ("__init__.py", "dumps"),
    ("ipaddress.py", "ip_address"),
    ("ipaddress.py", "__str__"),
)
# (dataclass-generated methods all share the label "<string>:2(__init__)", which pstats keeps
# only once, so they are left out: their time is in their callers' cumulative time)


def profile_report(prof: cProfile.Profile) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    total = stats.total_tt
    buf.write(f"key functions (cumulative; total {total * 1000:.1f} ms under the profiler; "
              "send() includes the kernel's IPVS work, done synchronously in the sender):\n")
    buf.write(f"  {'function':<58}{'calls':>9}{'own ms':>10}{'cum ms':>10}{'cum %':>7}\n")
    for (fname, _line, func), (_cc, nc, tt, ct, _callers) in sorted(
        stats.stats.items(), key=lambda kv: -kv[1][3]
    ):
        base = os.path.basename(fname) if fname != "~" else "~"
        if (base, func) not in KEY_FUNCTIONS:
            continue
        label = f"{base}:{func}" if base != "~" else func
        buf.write(f"  {label[:58]:<58}{nc:>9}{tt * 1000:>10.1f}{ct * 1000:>10.1f}"
                  f"{100 * ct / total:>6.1f}%\n")
    buf.write("\nwhat the heaviest module functions call (callees):\n")
    stats.sort_stats("cumulative").print_callees(
        r"\((decode_dest|read_table|ipvs_request|_validate_service|desired_table|_plain|"
        r"plan_director|batch)\)")
    buf.write("\ntop 25 by own time:\n")
    stats.sort_stats("tottime").print_stats(25)
    buf.write("top 25 by cumulative time:\n")
    stats.sort_stats("cumulative").print_stats(25)
    return buf.getvalue()


def run_profile(spec: str, tmp_root: Path) -> int:
    case, _, n = spec.partition(":")
    n = int(n or 1000)
    if case not in ("from-empty", "no-op", "weights"):
        raise SystemExit(f"--profile: unknown case {case!r} (from-empty, no-op, weights)")
    lvs, lvs_changed = make_pillar(n), make_pillar(n, changed=True)
    folder = Path(tempfile.mkdtemp(prefix="dir-prof-", dir=tmp_root))
    state_file = str(folder / "director.json")
    ns = fresh_ns("prof")
    try:
        plain = {}
        first = ns.call(_child_apply, lvs, state_file, case == "from-empty")
        check_empty_result(first, n, "from-empty")
        plain["from-empty"] = first
        res = first
        if case in ("no-op", "weights"):
            res = ns.call(_child_apply, lvs, state_file, case == "no-op")
            check_noop_result(res, "no-op")
        if case == "weights":
            res = ns.call(_child_apply, lvs_changed, state_file, True)
            check_weights_result(res, n, "weights")
        check_table(ns, n, case, changed=case == "weights")
    finally:
        drop_ns(ns)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"profile of module {case}, N={n} ({n} services x 10 dests): "
          f"{res['elapsed'] * 1000:.1f} ms under cProfile")
    print("phases (ms, under the profiler): " + ", ".join(
        f"{PHASE_LABELS.get(k, k)} {v * 1000:.1f}" for k, v in res["phases"].items()))
    print(res["profile"])
    return 0


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def summarize(samples: dict) -> dict:
    """{n: {row: [sample, ...]}} -> {n: {row: {median, min, max, samples, at, phases_median,
    phases}}}: ``at`` is each sample's start (Unix time, the guest's clock), ``phases`` each
    sample's module phases."""
    out = {}
    for n, rows in samples.items():
        out[n] = {}
        for row, runs in rows.items():
            times = [r["elapsed"] for r in runs]
            entry = {"median": statistics.median(times), "min": min(times), "max": max(times),
                     "samples": times, "at": [round(r["at"], 1) for r in runs]}
            if "processes" in runs[0]:
                entry["processes"] = runs[0]["processes"]
            phase_names = sorted({p for r in runs for p in r.get("phases", {})})
            if phase_names:
                entry["phases_median"] = {
                    p: statistics.median(r["phases"].get(p, 0.0) for r in runs)
                    for p in phase_names
                }
                entry["phases"] = [r["phases"] for r in runs]
            out[n][row] = entry
    return out


def print_table(summary: dict) -> None:
    head = (f"{'case':<24}{'N':>6}{'entries':>9}{'runs':>6}{'median s':>11}{'min s':>10}"
            f"{'max s':>10}   ratio")
    print(head)
    print("-" * (len(head) + 32))
    for n in sorted(summary):
        rows = summary[n]
        for key, label in ROWS:
            if key not in rows:
                continue
            e = rows[key]
            entries = n if key.endswith("weights") else 11 * n
            if key in ("module-noop", "module-noop-full"):
                empty = rows["module-empty"]["median"]
                ratio = f"{100 * e['median'] / empty:.1f}% of module from-empty"
                if "save" in rows:
                    ratio += f", {e['median'] / rows['save']['median']:.2f}x ipvsadm -Sn read"
            else:
                base = rows.get(BASE[key], {}).get("median")
                ratio = (f"{e['median'] / base:.2f}x {dict(ROWS)[BASE[key]].replace(' 10%', '')}"
                         if base else "-")
            print(f"{label:<24}{n:>6}{entries:>9}{len(e['samples']):>6}{e['median']:>11.3f}"
                  f"{e['min']:>10.3f}{e['max']:>10.3f}   {ratio}")
        print()
    names = [PHASE_LABELS[p] for p in PHASES] + ["rest"]
    print("module phases (median ms; batch = netlink send + acks, inside execute):")
    head = f"{'case':<24}{'N':>6}" + "".join(f"{name:>9}" for name in names) + f"{'batch':>9}"
    print(head)
    print("-" * len(head))
    for n in sorted(summary):
        for key, label in ROWS[:4]:
            ph = summary[n].get(key, {}).get("phases_median")
            if not ph:
                continue
            cells = "".join(f"{ph.get(p, 0.0) * 1000:>9.1f}" for p in (*PHASES, "rest"))
            print(f"{label:<24}{n:>6}{cells}{ph.get('batch', 0.0) * 1000:>9.1f}")
    print()


def verdicts(summary: dict) -> list[dict]:
    """The issue's two targets per size: from empty within TARGET_RATIO x of ``ipvsadm -R``,
    and the no-op under TARGET_NOOP_SHARE of from-empty (both by medians)."""
    targets = (
        ("module-empty", "restore-empty", "module from-empty, {n} services x 10, within "
         f"{TARGET_RATIO:g}x of ipvsadm -R", lambda r: r <= TARGET_RATIO,
         lambda r, a, b: f"{r:.2f}x ({a['median']:.3f} s vs {b['median']:.3f} s; min vs min "
                         f"{a['min'] / b['min']:.2f}x)"),
        ("module-noop", "module-empty", "module no-op, {n} services x 10, under "
         f"{TARGET_NOOP_SHARE:.0%} of from-empty", lambda r: r < TARGET_NOOP_SHARE,
         lambda r, a, b: f"{r:.1%} ({a['median']:.3f} s vs {b['median']:.3f} s)"),
    )
    out = []
    for n in sorted(summary):
        rows = summary[n]
        for row, base, target, ok, value in targets:
            if row in rows and base in rows:
                a, b = rows[row], rows[base]
                ratio = a["median"] / b["median"]
                out.append({"target": target.format(n=n), "value": value(ratio, a, b),
                            "verdict": "PASS" if ok(ratio) else "FAIL"})
    return out


def _ipvsadm_version() -> str:
    proc = subprocess.run(["ipvsadm", "--version"], capture_output=True, text=True)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else ""


def environment() -> dict:
    """Where and what was measured. ``LVS_BENCH_HOST`` (JSON, set by run-director) adds the host's
    side: git commit, load average, qemu; otherwise git is asked here."""
    env = {
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "ipvsadm": _ipvsadm_version(),
        "in_vm": os.environ.get("LVT_GUEST") == "1",
        "module_sha256": {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in MODULE_PATHS
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    host = os.environ.get("LVS_BENCH_HOST")
    if host:
        env["host"] = json.loads(host)
    else:
        def git(*args):
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                                  text=True).stdout.strip()

        env["host"] = {"git_head": git("rev-parse", "HEAD"), "module_dirty": bool(
            git("status", "--porcelain", "--", *map(str, MODULE_PATHS)))}
    return env


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,1000", help="service counts, comma-separated (max 65535)")
    p.add_argument("--repeat", type=int, default=3,
                   help="repetitions per case (fresh namespace each; default 3)")
    p.add_argument("--per-entry-repeat", type=int, default=1, metavar="N",
                   help="repetitions of the per-entry rows (default 1: 11 000 ipvsadm processes "
                        "take about 13 min under TCG; 0 leaves them out)")
    p.add_argument("--json", metavar="FILE", help="write samples, medians and verdicts here")
    p.add_argument("--skip", default="", help="comma-separated rows to leave out: restore, per-entry")
    p.add_argument("--profile", metavar="CASE:N",
                   help="profile one module case instead (from-empty, no-op, weights)")
    p.add_argument("--tmpdir", help="where the state files go (default: system temp dir)")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if any(not 1 <= n <= 65535 for n in args.sizes):
        p.error("--sizes: each size is a port count from 1 to 65535")
    if args.skip - {"restore", "per-entry"}:
        p.error(f"--skip: unknown {', '.join(sorted(args.skip - {'restore', 'per-entry'}))}")
    return args


def main(argv=None) -> int:
    global MOD
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root, in a kernel with IPVS: sudo benchmarks/run-director")
    MOD = load_modules()
    tmp_root = Path(tempfile.mkdtemp(prefix="lvs-bench-dir-", dir=args.tmpdir))
    try:
        if args.profile:
            return run_profile(args.profile, tmp_root)
        env = environment()
        host = env["host"]
        print(f"lvs_director.apply benchmark: sizes {args.sizes} (services x 10 real servers), "
              f"{args.repeat} repetitions (per-entry: {args.per_entry_repeat}), {env['cpus']} CPU, "
              f"kernel {env['kernel']}, Python {env['python']}, {env['ipvsadm']}"
              f"{', in the kernel-lane VM (TCG)' if env['in_vm'] else ''}", flush=True)
        print(f"modules at {host.get('git_head', '?')[:10]}"
              f"{' (uncommitted changes)' if host.get('module_dirty') else ''}, sha256 "
              + ", ".join(f"{k} {v[:12]}" for k, v in env["module_sha256"].items()), flush=True)
        samples: dict = {}
        t_start = time.monotonic()
        for n in args.sizes:
            pillars = (make_pillar(n), make_pillar(n, changed=True))
            rows = samples.setdefault(n, {})
            for rep in range(args.repeat):
                # Interleave the cases in every repetition so drift (other load) hits all alike.
                parts = [measure_module(n, pillars, tmp_root, f"d{n}m{rep}")]
                if "restore" not in args.skip:
                    parts.append(measure_restore(n, f"d{n}r{rep}"))
                if "per-entry" not in args.skip and rep < args.per_entry_repeat:
                    parts.append(measure_per_entry(n, f"d{n}e{rep}"))
                for part in parts:
                    for key, res in part.items():
                        rows.setdefault(key, []).append(res)
                print(f"  N={n} repetition {rep + 1}/{args.repeat} done "
                      f"({time.monotonic() - t_start:.0f} s)", file=sys.stderr, flush=True)
        summary = summarize(samples)
        print()
        print_table(summary)
        results = verdicts(summary)
        print("verdicts:")
        for v in results:
            print(f"  {v['verdict']:<5} {v['target']}: {v.get('value', '')}")
        env["benchmark_seconds"] = round(time.monotonic() - t_start, 1)
        if args.json:
            doc = {
                "environment": env,
                "summary": {str(n): rows for n, rows in summary.items()},
                "verdicts": results,
            }
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
            print(f"results written to {args.json}")
        return 0
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
