"""The saltext-lvs lab: the ARP problem of LVS-DR real servers, before and after the formula.

    sudo ./lab/run                 # bootstrap, then this
    sudo .venv/bin/python -m lab   # when the venv exists

Builds a LAN of network namespaces (client, director lb1, real servers rs1 and rs2), gives the
real servers the usual copy-paste setup (VIP /32 on lo, default sysctls), shows who answers ARP
for the VIP (the race), applies the formula with ``salt-call --local`` inside each real server
(``saltutil.sync_all``, then ``state.apply lvs``, pillar from ``pillar.example``), and checks on
the wire that only the director answers, that real servers never use the VIP as ARP sender, and
that a TCP connection to the VIP through the director stand-in is answered by a real server,
from the VIP, straight from the real server's MAC.

Exit status: 0 when every expectation holds, 1 when one does not, 2 when the lab could not run
(salt-call failed, missing tools), 130 on Ctrl-C (143 on SIGTERM). Namespaces are removed on
every exit path.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from lab import saltenv
from lab.netlab import REPO, Lab, ipvs_available


class Report:
    def __init__(self, verbose: bool = False):
        self.checks: list[tuple[str, bool]] = []
        self.verbose = verbose
        self.t0 = time.monotonic()

    def section(self, title: str) -> None:
        print(f"\n{title}", flush=True)

    def info(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def check(self, label: str, ok: bool, detail: str, why: str = "") -> bool:
        self.checks.append((label, ok))
        mark = "ok  " if ok else "FAIL"
        tail = f"   ({why})" if why and (not ok or self.verbose) else ""
        print(f"  [{mark}] {label}: {detail}{tail}", flush=True)
        return ok

    def finish(self) -> int:
        failed = [label for label, ok in self.checks if not ok]
        took = time.monotonic() - self.t0
        if failed:
            print(f"\nRESULT: {len(failed)} of {len(self.checks)} expectations FAILED "
                  f"({', '.join(failed)}) in {took:.1f} s")
            return 1
        print(f"\nRESULT: all {len(self.checks)} expectations met in {took:.1f} s")
        return 0


def names(items) -> str:
    return ", ".join(sorted(items)) or "nobody"


def tcp_rounds(lab: Lab, port: int, count: int) -> dict:
    results = [lab.tcp_request(port=port) for _ in range(count)]
    return {
        "results": results,
        "ok": [r for r in results if r.get("ok")],
        "servers": collections.Counter(r.get("server", "?") for r in results if r.get("ok")),
        "server_local": {r.get("server_local") for r in results if r.get("ok")},
        "sent_to": {m for r in results for m in r.get("sent_to", [])},
        "reply_from": {m for r in results for m in r.get("reply_from", [])},
        "mismatch": [r for r in results
                     if r.get("ok") and r.get("reply_from") != [r.get("server")]],
        "errors": [r.get("error") for r in results if not r.get("ok")],
    }


def deploy_all(lab: Lab, confs: dict[str, Path]) -> dict[str, tuple[dict, float]]:
    """sync_all + state.apply lvs in every real server at once (one salt-call per host)."""

    def one(name):
        start = time.monotonic()
        ret = saltenv.deploy_formula(confs[name], netns=lab.host(name).ns)
        return ret, time.monotonic() - start

    return saltenv.in_parallel({name: (lambda n=name: one(n)) for name in confs})


def run(args) -> int:
    rep = Report(args.verbose)
    pillar = Path(args.pillar)
    work = Path(tempfile.mkdtemp(prefix="lvs-lab-"))
    real_ipvs = ipvs_available() and not args.standin
    try:
        with Lab(director_vip=not real_ipvs) as lab:
            rs_names = [h.name for h in lab.realservers]
            print(f"saltext-lvs lab: LVS-DR on a namespace LAN, VIP {lab.vip} (IPv6 {lab.vip6})")
            print("  " + ", ".join(f"{h.name} {h.address} ({h.role})" for h in lab.hosts.values())
                  + f"; built in {time.monotonic() - rep.t0:.1f} s")
            if real_ipvs:
                print("  director: real IPVS, configured by the lvs_director state on lb1")
            else:
                print("  director: nftables netdev stand-in (this kernel has no IPVS; "
                      "the real director is tested in the kernel lane)")

            rep.section("BEFORE: real servers with the VIP /32 on lo and default ARP sysctls")
            for name in rs_names:
                lab.naive_realserver(name)
            before = lab.arp_responders()
            rep.check("race", set(rs_names) <= before,
                      f"ARP who-has {lab.vip} answered by {names(before)}",
                      "expected the real servers to answer too: that is the ARP problem")
            leak = lab.own_arp_senders(rs_names[0])
            poisoned = lab.name_of(lab.neighbour("client", lab.vip) or "none")
            rep.check("leak", lab.vip in leak,
                      f"{rs_names[0]}'s own ARP requests carry sender {names(leak)}; "
                      f"client's cache for the VIP is now {poisoned}",
                      "arp_announce=0 uses the VIP as sender when it answers from the VIP")

            targets = rs_names + (["lb1"] if real_ipvs else [])
            rep.section(f"APPLY: salt-call --local saltutil.sync_all + state.apply lvs "
                        f"in {', '.join(targets)} (pillar {pillar.name})")
            confs = {n: saltenv.make_local_config(
                work / n, n, pillar, REPO,
                extra={"lvs_director": {"state_file": str(work / n / "persist" / "director.json")}})
                for n in targets}
            with lab.arp_watch() as watch:
                deployed = deploy_all(lab, confs)
            for name, (ret, took) in deployed.items():
                changed = saltenv.changed_states(ret)
                comments = "; ".join(s.get("comment", "") for s in changed) or "no changes"
                rep.info(f"{name} ({took:.1f} s): {comments}")
                for s in changed:
                    for group, items in s["changes"].items():  # the module's order
                        if not isinstance(items, dict):
                            rep.info(f"    {group}: {items}")
                            continue
                        for target, change in items.items():
                            if group == "file" and not args.verbose:
                                rep.info(f"    file {target}")
                            elif isinstance(change, dict) and "old" in change:
                                rep.info(f"    {group} {target}: "
                                         f"{change['old']} -> {change['new']}")
                            else:
                                rep.info(f"    {group} {target}: {json.dumps(change)}")
            seen = watch.responders
            rep.info(f"continuous ARP probe during the apply: {watch.result['sent']} who-has, "
                     f"answered by {', '.join(f'{k} x{v}' for k, v in sorted(seen.items()))} "
                     "(the real servers answered until their suppression went in)")

            rep.section("AFTER")
            after = lab.arp_responders()
            rep.check("arp", after == {"lb1"}, f"ARP who-has {lab.vip} answered by {names(after)}",
                      "only the director may answer for the VIP")
            if lab.ipv6:
                nd = lab.ndp_responders()
                rep.check("ndp", nd == {"lb1"}, f"NDP solicit {lab.vip6} answered by {names(nd)}",
                          "IPv6 VIP on lo: only the director may advertise it")
            for name in rs_names:
                senders = lab.own_arp_senders(name)
                rip = lab.host(name).address
                rep.check(f"announce {name}", senders == {rip},
                          f"{name}'s own ARP requests carry sender {names(senders)}",
                          f"expected only its RIP {rip}, never the VIP")
            # The client kernel learns from every ARP reply it sees, the probes' included: a
            # stale real server entry would only go after it expires. Start from an empty cache.
            lab.flush_neighbours("client")
            if not real_ipvs:
                lab.director_standin(ports=(80, 443))
            lab.start_tcp_servers(80)
            tcp = tcp_rounds(lab, 80, args.connections)
            spread = ", ".join(f"{k} x{v}" for k, v in sorted(tcp["servers"].items()))
            errors = f"; errors: {tcp['errors'][:2]}" if tcp["errors"] else ""
            rep.check("tcp", len(tcp["ok"]) == args.connections
                      and set(tcp["servers"]) <= set(rs_names),
                      f"{len(tcp['ok'])}/{args.connections} connections to {lab.vip}:80 answered "
                      f"by {spread or 'nobody'}{errors}")
            rep.check("tcp local", tcp["server_local"] == {f"{lab.vip}:80"},
                      f"the real server's local address was {names(tcp['server_local'])}")
            rep.check("direct return", tcp["sent_to"] == {"lb1"} and not tcp["mismatch"]
                      and tcp["reply_from"] <= set(rs_names),
                      f"client frames went to {names(tcp['sent_to'])}; replies came from "
                      f"{names(tcp['reply_from'])} (each from the answering real server)",
                      "DR: the reply must bypass the director")
            cache = lab.name_of(lab.neighbour("client", lab.vip) or "none")
            rep.check("client cache", cache == "lb1", f"client's cache for the VIP: {cache}")

            if real_ipvs:
                status = saltenv.salt_call(confs["lb1"], "lvs_director.status",
                                           netns=lab.director.ns)
                rep.check("director", bool(status.get("ok")),
                          f"lvs_director.status on lb1: {len(status.get('live', {}))} IPVS "
                          f"services, {'as in the pillar' if status.get('ok') else status}")

            rep.section("AGAIN")
            for name in targets:
                start = time.monotonic()
                ret = saltenv.apply_state(confs[name], netns=lab.host(name).ns)
                changed = saltenv.changed_states(ret)
                rep.check(f"idempotent {name}", not changed,
                          f"second state.apply in {name}: "
                          f"{'no changes' if not changed else [s['id'] for s in changed]} "
                          f"({time.monotonic() - start:.1f} s)")
            audit = saltenv.salt_call(confs[rs_names[0]], "lvs_realserver.audit",
                                      netns=lab.host(rs_names[0]).ns)
            rep.check("audit", bool(audit.get("ok")),
                      f"lvs_realserver.audit in {rs_names[0]}: "
                      f"{'ok' if audit.get('ok') else audit.get('findings')}")
        return rep.finish()
    finally:
        if args.keep:
            print(f"(salt roots kept in {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__.split("\n")[0])
    parser.add_argument("--pillar", default=str(REPO / "pillar.example"),
                        help="pillar file served as lvs.sls (default: pillar.example)")
    parser.add_argument("--connections", type=int, default=8,
                        help="TCP connections through the director stand-in (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the salt root dirs")
    parser.add_argument("--standin", action="store_true",
                        help="use the nftables stand-in even when the kernel has IPVS")
    parser.add_argument("-v", "--verbose", action="store_true", help="show file contents, reasons")
    args = parser.parse_args(argv)

    # Ctrl-C and SIGTERM unwind normally (Lab.__exit__ and the finally above run); lab.netns'
    # atexit hook removes whatever is left.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    got = {"signal": signal.SIGINT}

    def on_term(signum, _frame):
        got["signal"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    for tool in ("ip", "nft"):
        if not shutil.which(tool):
            print(f"lab: '{tool}' is missing; run tools/bootstrap", file=sys.stderr)
            return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"\n{signal.Signals(got['signal']).name}: stopped; namespaces removed",
              file=sys.stderr)
        return 128 + got["signal"]
    except saltenv.SaltCallError as err:
        print(f"\nlab: salt-call failed:\n{err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
