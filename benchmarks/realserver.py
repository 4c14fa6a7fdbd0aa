#!/usr/bin/env python3
"""Benchmark ``lvs_realserver.apply``: converge 1, 100, 1000 VIPs from scratch and as a no-op.

Run from the repository root, as root (namespaces, netlink, /proc/sys writes)::

    sudo .venv/bin/python benchmarks/realserver.py [--sizes 1,100,1000] [--repeat 5] [--json FILE]

Everything happens in throwaway network namespaces from :mod:`lab.netns` (one fresh namespace per
repetition, with an ``eth0`` veth carrying 198.51.100.11/24 so the ARP-facing logic has a NIC);
persistence files go to a temporary folder. The host's namespace and /etc are never touched.

Cases (each row of the table):

module scratch         ``apply(persist=False)`` on a fresh namespace: observe + plan + execute
module no-op           the same call again right after it, in the same namespace (no changes)
module scratch persist ``apply(persist=True)``, files into the temp folder (a user with
                       persistence pays for them: sysctl drop-in, VIP list, unit, fsync'd)
module no-op persist   the same again
ip -batch scratch      ``ip -n NS -batch FILE``, one ``address add`` line per VIP: the reference,
                       about the kernel's cost plus one process start
ip per-VIP scratch     one ``ip -n NS addr add`` process per VIP, how most formulas do it

Only the module's in-process call is timed (``time.perf_counter`` around ``apply(...)`` in a child
forked into the namespace): not Salt's loader, not the fork, not the namespace set-up. The module
file is loaded with importlib, given the dunders it reads, in this process before any fork.

Each run is checked, outside the timing, so a broken module cannot post a fast number: after a
from-scratch run the addresses on ``lo`` (other than 127.0.0.1 and ::1) must be exactly the VIPs,
each /32 or /128, and eth0 must have arp_ignore=1 / arp_announce=2 when there are IPv4 VIPs; the
module must report one address change per VIP; a no-op must report no changes and do nothing.

``--profile CASE:N`` runs one module case under cProfile instead of the benchmark and prints where
the time goes (e.g. ``--profile noop:1000``).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import importlib.util
import inspect
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

# lab.netns turns SIGINT into "delete the namespaces and die"; a KeyboardInterrupt instead lets
# the `with` blocks delete them and the temp folder go too (its atexit hook still backs this up).
signal.signal(signal.SIGINT, signal.default_int_handler)

MODULE_PATH = REPO / "_modules" / "lvs_realserver.py"
ETH0 = "eth0"
ETH0_ADDR = "198.51.100.11"
ETH0_PREFIX = 24
V4_NETS = ("198.51.100", "203.0.113")  # documentation ranges only (never 192.0.2.0/24)
V6_PREFIX = "2001:db8:100::"
TARGET_SCRATCH_RATIO = 2.0  # module from scratch, 1000 VIPs: within 2x of ip -batch
TARGET_NOOP_SECONDS = 0.050  # module no-op check, 1000 VIPs: under 50 ms
TARGET_N = 1000

ROWS = (
    # (key, label)
    ("module-scratch", "module scratch"),
    ("module-noop", "module no-op"),
    ("module-scratch-persist", "module scratch persist"),
    ("module-noop-persist", "module no-op persist"),
    ("ip-batch", "ip -batch scratch"),
    ("ip-per-vip", "ip per-VIP scratch"),
)

MOD = None  # the module under test, loaded once in this process; forked children inherit it


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------


def _no_pillar(*_a, **_k):
    raise AssertionError("benchmark passes vips, scope and persist: the module must not ask pillar")


def load_module():
    """Load ``_modules/lvs_realserver.py`` directly and give it the dunders it reads.

    It reads ``__salt__["config.get"]`` (paths; we pass every path as an argument) and
    ``__salt__["lvs_pillar.realserver"]`` only for arguments left out (we leave none out: a call
    to it fails the run).
    ``__pillar__`` is read by ``audit`` only; ``__opts__`` by nothing here.
    """
    spec = importlib.util.spec_from_file_location("lvs_realserver_bench", MODULE_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.__salt__ = {"config.get": lambda *a, **k: {}, "lvs_pillar.realserver": _no_pillar}
    mod.__pillar__ = {}
    mod.__opts__ = {"id": "bench"}
    mod.__grains__ = {}
    return mod


def make_vips(n: int) -> list[str]:
    """``n`` VIPs, IPv4 first half (rounded up), IPv6 the rest, documentation ranges only.

    IPv4 comes from 198.51.100.0/24 and 203.0.113.0/24 without .0, .255 and eth0's address:
    507 addresses, so at most 1015 VIPs in all.
    """
    n4, n6 = (n + 1) // 2, n // 2
    v4 = [
        f"{net}.{host}"
        for net in V4_NETS
        for host in range(1, 255)
        if f"{net}.{host}" != ETH0_ADDR
    ]
    if n4 > len(v4):
        raise SystemExit(f"{n} VIPs need {n4} IPv4 addresses; the two /24s give {len(v4)}")
    return v4[:n4] + [f"{V6_PREFIX}{i:x}" for i in range(1, n6 + 1)]


def prefix_of(addr: str) -> int:
    return 128 if ":" in addr else 32


def fresh_ns(tag: str) -> Netns:
    """A new namespace with lo up and an eth0 veth (peer in the same namespace) on 198.51.100.11/24."""
    return veth_namespace(tag, ETH0, f"{ETH0_ADDR}/{ETH0_PREFIX}")


def persist_paths(folder: Path) -> dict:
    return {
        "state_file": str(folder / "state.json"),
        "sysctl_file": str(folder / "sysctl.d" / "90-lvs-realserver.conf"),
        "vip_file": str(folder / "realserver-vips.batch"),
        "unit_file": str(folder / "systemd" / "lvs-realserver.service"),
    }


# --------------------------------------------------------------------------------------------
# Inside the namespace (forked child)
# --------------------------------------------------------------------------------------------

PHASES = ("observe", "read_record", "plan_changes", "execute")


def _child_apply(vips, persist, paths, profile=False):
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

    for name in PHASES:  # _run looks these up as module globals at call time
        if hasattr(mod, name):
            setattr(mod, name, timed(name, getattr(mod, name)))
    prof = cProfile.Profile() if profile else None
    gc.collect()
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    ret = mod.apply(**apply_kwargs(mod, vips, persist, paths))
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - t0
    out = {
        "elapsed": elapsed,
        "phases": phases,
        "changes": {group: len(items) for group, items in ret["changes"].items()},
        "address_changes": sorted(ret["changes"].get("address", {})),
        "journal": list(ret["journal"]),
        "warnings": list(ret["warnings"]),
    }
    if prof:
        out["profile"] = _profile_text(prof)
    return out


def apply_kwargs(mod, vips, persist, paths) -> dict:
    """Every argument the module would otherwise take from pillar, given explicitly.

    ``arp_method`` exists in newer versions only; it is passed when ``apply`` names it (anything
    unknown would land in ``**paths`` and be refused).
    """
    kwargs = dict(vips=vips, scope="interfaces", persist=persist, exclusive=True, test=False)
    if "arp_method" in inspect.signature(mod.apply).parameters:
        kwargs["arp_method"] = "sysctl"
    return {**kwargs, **paths}


def _profile_text(prof) -> str:
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.strip_dirs()
    text.write("=== sorted by cumulative time ===\n")
    stats.sort_stats("cumulative").print_stats(30)
    text.write("=== sorted by own (total) time ===\n")
    stats.sort_stats("tottime").print_stats(25)
    text.write("=== callers of the top own-time functions ===\n")
    stats.sort_stats("tottime").print_callers(8)
    return text.getvalue()


def _read_arp(iface):
    out = {}
    for key in ("arp_ignore", "arp_announce"):
        with open(f"/proc/sys/net/ipv4/conf/{iface}/{key}", encoding="ascii") as fh:
            out[key] = int(fh.read())
    return out


# --------------------------------------------------------------------------------------------
# Checks (never timed)
# --------------------------------------------------------------------------------------------


class CheckFailed(RuntimeError):
    pass


def lo_vips(ns: Netns) -> dict[str, int]:
    """Addresses on lo other than the loopback ones: {address: prefixlen}."""
    proc = subprocess.run(
        ["ip", "-n", ns.name, "-j", "addr", "show", "dev", "lo"],
        capture_output=True, text=True, check=True,
    )
    out = {}
    for link in json.loads(proc.stdout):
        for info in link.get("addr_info", []):
            if info["local"] in ("127.0.0.1", "::1"):
                continue
            out[info["local"]] = info["prefixlen"]
    return out


def check_converged(ns: Netns, vips: list[str], case: str, check_arp: bool = True) -> None:
    got = lo_vips(ns)
    want = {v: prefix_of(v) for v in vips}
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        wrong = sorted(a for a in set(got) & set(want) if got[a] != want[a])
        raise CheckFailed(
            f"{case}: lo holds {len(got)} VIPs, want {len(want)}; missing {missing[:5]}, "
            f"extra {extra[:5]}, wrong prefix {wrong[:5]}"
        )
    if check_arp and any(":" not in v for v in vips):
        arp = ns.call(_read_arp, ETH0)
        if arp != {"arp_ignore": 1, "arp_announce": 2}:
            raise CheckFailed(f"{case}: eth0 ARP sysctls are {arp}, want arp_ignore 1 / announce 2")


def check_scratch_result(res: dict, vips: list[str], case: str) -> None:
    if res["changes"].get("address") != len(vips):
        raise CheckFailed(
            f"{case}: module reported {res['changes'].get('address')} address changes, "
            f"want {len(vips)} ({res['changes']})"
        )
    adds = [j for j in res["journal"] if j.startswith("add ")]
    if len(adds) != len(vips):
        raise CheckFailed(f"{case}: journal has {len(adds)} address adds, want {len(vips)}")
    if any(":" not in v for v in vips) and res["changes"].get("sysctl") != 2:
        raise CheckFailed(f"{case}: want 2 sysctl changes (eth0), got {res['changes']}")


def check_noop_result(res: dict, case: str) -> None:
    if res["changes"] or res["journal"]:
        raise CheckFailed(
            f"{case}: a no-op reported changes {res['changes']} / journal {res['journal'][:5]}"
        )


def check_persist_files(paths: dict, vips: list[str], case: str) -> None:
    with open(paths["vip_file"], encoding="utf-8") as fh:
        lines = [l for l in fh if l.startswith("address ")]
    if len(lines) != len(vips):
        raise CheckFailed(f"{case}: vip_file has {len(lines)} address lines, want {len(vips)}")
    for key in ("sysctl_file", "unit_file", "state_file"):
        if not os.path.exists(paths[key]):
            raise CheckFailed(f"{case}: {key} {paths[key]} was not written")


# --------------------------------------------------------------------------------------------
# Measurements: each returns {row key: seconds}
# --------------------------------------------------------------------------------------------


def measure_module(vips, persist, tmp_root: Path, tag: str) -> dict:
    suffix = "-persist" if persist else ""
    folder = Path(tempfile.mkdtemp(prefix="rs-", dir=tmp_root))
    paths = persist_paths(folder)
    with fresh_ns(tag) as ns:
        first = ns.call(_child_apply, vips, persist, paths)
        check_scratch_result(first, vips, f"module scratch{suffix}")
        check_converged(ns, vips, f"module scratch{suffix}")
        if persist:
            check_persist_files(paths, vips, f"module scratch{suffix}")
        second = ns.call(_child_apply, vips, persist, paths)
        check_noop_result(second, f"module no-op{suffix}")
        check_converged(ns, vips, f"module no-op{suffix}")
    shutil.rmtree(folder, ignore_errors=True)
    return {
        f"module-scratch{suffix}": first,
        f"module-noop{suffix}": second,
    }


def _ip_line(addr: str) -> str:
    return f"address add {addr}/{prefix_of(addr)} dev lo" + (" nodad" if ":" in addr else "")


def measure_ip_batch(vips, tmp_root: Path, tag: str) -> dict:
    batch = Path(tmp_root) / f"{tag}.batch"
    batch.write_text("".join(_ip_line(a) + "\n" for a in vips))
    with fresh_ns(tag) as ns:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["ip", "-n", ns.name, "-batch", str(batch)], capture_output=True, text=True
        )
        elapsed = time.perf_counter() - t0
        if proc.returncode:
            raise CheckFailed(f"ip -batch exited {proc.returncode}: {proc.stderr[:500]}")
        check_converged(ns, vips, "ip -batch", check_arp=False)
    batch.unlink()
    return {"ip-batch": {"elapsed": elapsed}}


def measure_ip_per_vip(vips, tag: str) -> dict:
    with fresh_ns(tag) as ns:
        argvs = [
            ["ip", "-n", ns.name, *_ip_line(a).replace("address", "addr", 1).split()]
            for a in vips
        ]
        t0 = time.perf_counter()
        for argv in argvs:
            proc = subprocess.run(argv, capture_output=True)
            if proc.returncode:
                raise CheckFailed(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr!r}")
        elapsed = time.perf_counter() - t0
        check_converged(ns, vips, "ip per-VIP", check_arp=False)
    return {"ip-per-vip": {"elapsed": elapsed}}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def summarize(samples: dict) -> dict:
    """{n: {row: [sample, ...]}} -> {n: {row: {median, min, max, samples, phases_median}}}"""
    out = {}
    for n, rows in samples.items():
        out[n] = {}
        for row, runs in rows.items():
            times = [r["elapsed"] for r in runs]
            entry = {
                "median": statistics.median(times),
                "min": min(times),
                "max": max(times),
                "samples": times,
            }
            phase_names = sorted({p for r in runs for p in r.get("phases", {})})
            if phase_names:
                entry["phases_median"] = {
                    p: statistics.median(r["phases"].get(p, 0.0) for r in runs)
                    for p in phase_names
                }
            out[n][row] = entry
    return out


def print_table(summary: dict) -> None:
    head = (
        f"{'case':<24}{'N':>6}{'median s':>11}{'min s':>10}{'x ip-batch':>12}{'median ms':>11}"
        f"   phases (median ms: observe/read_record/plan/execute)"
    )
    print(head)
    print("-" * len(head))
    for n in sorted(summary):
        rows = summary[n]
        base = rows.get("ip-batch", {}).get("median")
        for key, label in ROWS:
            if key not in rows:
                continue
            e = rows[key]
            ratio = f"{e['median'] / base:.2f}x" if base else "-"
            ms = f"{e['median'] * 1000:.1f}"
            phases = ""
            if "phases_median" in e:
                ph = e["phases_median"]
                phases = "   " + "/".join(
                    f"{ph.get(p, 0.0) * 1000:.1f}" for p in PHASES
                )
            print(f"{label:<24}{n:>6}{e['median']:>11.4f}{e['min']:>10.4f}{ratio:>12}{ms:>11}{phases}")
        print()


def verdicts(summary: dict) -> list[dict]:
    out = []
    rows = summary.get(TARGET_N)
    if not rows:
        return [{"target": f"N={TARGET_N} not measured (add it to --sizes)", "verdict": "n/a"}]
    base = rows["ip-batch"]["median"]
    for key, note in (("module-scratch", ""), ("module-scratch-persist", " (info: with persist)")):
        if key not in rows:
            continue
        ratio = rows[key]["median"] / base
        min_ratio = rows[key]["min"] / rows["ip-batch"]["min"]
        out.append({
            "target": f"{key} {TARGET_N} VIPs within {TARGET_SCRATCH_RATIO:g}x of ip -batch{note}",
            "value": f"{ratio:.2f}x ({rows[key]['median'] * 1000:.1f} ms vs {base * 1000:.1f} ms;"
                     f" min vs min {min_ratio:.2f}x)",
            "verdict": "PASS" if ratio <= TARGET_SCRATCH_RATIO else "FAIL",
        })
    for key, note in (("module-noop", ""), ("module-noop-persist", " (info: with persist)")):
        if key not in rows:
            continue
        med = rows[key]["median"]
        out.append({
            "target": f"{key} {TARGET_N} VIPs under {TARGET_NOOP_SECONDS * 1000:g} ms{note}",
            "value": f"{med * 1000:.1f} ms (min {rows[key]['min'] * 1000:.1f} ms)",
            "verdict": "PASS" if med < TARGET_NOOP_SECONDS else "FAIL",
        })
    return out


OTHERS_NOISY = 0.25  # share of all CPUs used by other processes above which a run is noisy


class CpuShare:
    """How much of the machine's CPU time went to processes other than this run.

    All CPU time from /proc/stat minus this process's and its waited-for children's (the forked
    namespace children and the ``ip`` processes). Kernel work done for us asynchronously (such as
    namespace teardown) counts as "others", so a quiet machine still shows a few percent.
    """

    def __init__(self):
        self.start = (self._busy(), self._ours(), time.monotonic())

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
        busy = sum(fields[:8]) - fields[3] - fields[4]
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def others_share(self) -> float:
        busy0, ours0, t0 = self.start
        wall = time.monotonic() - t0
        others = (self._busy() - busy0) - (self._ours() - ours0)
        return max(0.0, others) / (wall * (os.cpu_count() or 1))


def wait_quiet(limit: float, window: float = 5.0, quiet: float = 0.10) -> bool:
    deadline = time.monotonic() + limit
    while True:
        probe = CpuShare()
        time.sleep(window)
        share = probe.others_share()
        if share < quiet:
            print(f"quiet: other processes used {share:.0%} of the CPUs for {window:g} s", flush=True)
            return True
        if time.monotonic() >= deadline:
            print(f"not quiet after {limit:g} s (others use {share:.0%}); running anyway", flush=True)
            return False
        print(f"  waiting: other processes use {share:.0%} of the CPUs", file=sys.stderr, flush=True)


def environment() -> dict:
    def git(*args):
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True
        ).stdout.strip()

    return {
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "iproute2": subprocess.run(["ip", "-V"], capture_output=True, text=True).stdout.strip(),
        "git_head": git("rev-parse", "HEAD"),
        "module_dirty": bool(git("status", "--porcelain", "--", str(MODULE_PATH))),
        "module_sha256": hashlib.sha256(MODULE_PATH.read_bytes()).hexdigest(),
        "loadavg_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1,100,1000", help="VIP counts, comma-separated (max 1015)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions per case (fresh namespace each)")
    p.add_argument("--json", metavar="FILE", help="write samples, medians and verdicts here")
    p.add_argument(
        "--skip", default="",
        help="comma-separated cases to leave out: persist, ip-batch, ip-per-vip",
    )
    p.add_argument(
        "--profile", metavar="CASE:N",
        help="profile one module case instead (scratch, noop, scratch-persist, noop-persist)",
    )
    p.add_argument(
        "--wait-quiet", type=float, default=0, metavar="SECONDS",
        help="first wait up to SECONDS for a 5 s window in which other processes use under 10%% "
        "of the CPUs (a shared machine); then run anyway",
    )
    p.add_argument("--tmpdir", help="where the persistence files go (default: system temp dir)")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def run_profile(spec: str, tmp_root: Path) -> int:
    case, _, n = spec.partition(":")
    n = int(n or TARGET_N)
    if case not in ("scratch", "noop", "scratch-persist", "noop-persist"):
        raise SystemExit(f"--profile: unknown case {case!r}")
    persist = case.endswith("-persist")
    vips = make_vips(n)
    folder = Path(tempfile.mkdtemp(prefix="rs-prof-", dir=tmp_root))
    paths = persist_paths(folder)
    with fresh_ns("prof") as ns:
        if case.startswith("noop"):
            first = ns.call(_child_apply, vips, persist, paths)
            check_scratch_result(first, vips, "profile set-up")
            res = ns.call(_child_apply, vips, persist, paths, True)
            check_noop_result(res, case)
        else:
            res = ns.call(_child_apply, vips, persist, paths, True)
            check_scratch_result(res, vips, case)
        check_converged(ns, vips, case)
    print(f"profile of module {case}, N={n}: {res['elapsed'] * 1000:.1f} ms under cProfile")
    print("phases (ms): " + ", ".join(f"{k} {v * 1000:.1f}" for k, v in res["phases"].items()))
    print(res["profile"])
    return 0


def main(argv=None) -> int:
    global MOD
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: sudo .venv/bin/python benchmarks/realserver.py")
    MOD = load_module()
    tmp_root = Path(tempfile.mkdtemp(prefix="lvs-bench-", dir=args.tmpdir))
    try:
        if args.profile:
            return run_profile(args.profile, tmp_root)
        for n in args.sizes:
            make_vips(n)  # fail early on a size the ranges cannot hold
        if args.wait_quiet > 0:
            wait_quiet(args.wait_quiet)
        env = environment()
        print(
            f"lvs_realserver.apply benchmark: sizes {args.sizes}, {args.repeat} repetitions, "
            f"{env['cpus']} CPUs, kernel {env['kernel']}, Python {env['python']}, "
            f"{env['iproute2']}",
            flush=True,
        )
        print(
            f"module {MODULE_PATH.relative_to(REPO)} at {env['git_head'][:10]}"
            f"{' (uncommitted changes)' if env['module_dirty'] else ''}, sha256 "
            f"{env['module_sha256'][:12]}; load average {env['loadavg_start'][0]:.2f}",
            flush=True,
        )
        samples: dict = {}
        cpu = CpuShare()
        for n in args.sizes:
            vips = make_vips(n)
            rows = samples.setdefault(n, {})
            for rep in range(args.repeat):
                # Interleave the cases in every repetition so drift (other load) hits all alike.
                parts = [measure_module(vips, False, tmp_root, f"b{n}m{rep}")]
                if "persist" not in args.skip:
                    parts.append(measure_module(vips, True, tmp_root, f"b{n}p{rep}"))
                if "ip-batch" not in args.skip:
                    parts.append(measure_ip_batch(vips, tmp_root, f"b{n}i{rep}"))
                if "ip-per-vip" not in args.skip:
                    parts.append(measure_ip_per_vip(vips, f"b{n}s{rep}"))
                for part in parts:
                    for key, res in part.items():
                        rows.setdefault(key, []).append(res)
                print(f"  N={n} repetition {rep + 1}/{args.repeat} done", file=sys.stderr, flush=True)
        env["loadavg_end"] = os.getloadavg()
        summary = summarize(samples)
        print()
        print_table(summary)
        results = verdicts(summary)
        env["cpu_share_others"] = others = cpu.others_share()
        if others > OTHERS_NOISY:
            print(
                f"note: other processes used {others:.0%} of the {env['cpus']} CPUs during the run"
                " (load average "
                f"{env['loadavg_start'][0]:.2f} at the start): medians and ratios are noisy; "
                "rerun on a quiet machine before quoting them\n"
            )
        else:
            print(f"other processes used {others:.0%} of the CPUs during the run\n")
        print("verdicts:")
        for v in results:
            print(f"  {v['verdict']:<5} {v['target']}: {v.get('value', '')}")
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
