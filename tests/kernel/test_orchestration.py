"""The roll-out orchestrations (salt/orch/lvs/) on a real IPVS kernel, in the kernel lane.

The lane cannot run a salt-master and minions (under TCG a master alone takes minutes to start),
so the orchestration runs in-process, and only the transport is a stand-in:

- the orchestration SLS is rendered by Salt's Jinja renderer with the orchestration pillar, and
  run by Salt's own state engine (``salt.state.State.call_high``: order, requisites, failhard),
  as ``state.orchestrate`` does on a master;
- ``saltutil.cmd`` (what ``salt.state``/``salt.function`` publish through) and
  ``saltutil.runner`` are routed in-process: a minion's call runs through Salt's loaders in a
  child forked into that minion's namespace (the director's IPVS is the kernel's, real servers
  are real namespaces); ``batch`` and ``failhard`` keep Salt's meaning (one batch after the
  other, stop after a failed one);
- the formula's SLS files are represented by what they pick for the minion's role in the pillar
  (``lvs.realserver``: ``lvs_realserver.present``/``absent``; ``lvs.director``:
  ``lvs_director.present``/``absent``; ``lvs.beacon``: nothing, as under salt-call). Their own
  rendering is tested through a real master in tests/integration;
- the ``lvs_rollout`` runner is the real one; its ``LocalClient`` calls go the same way.

Traffic is real TCP from the client through the director; a connection held open across a
removal must survive it.
"""

import copy
import json
import pathlib

import pytest

from lab.netlab import Lab
from tests.kernel.test_director import Held
from tests.loadmod import load

pytestmark = pytest.mark.kernel

REPO = pathlib.Path(__file__).resolve().parents[2]
VIP = "198.51.100.100"
PORT = 80
REALSERVERS = {"rs1": "198.51.100.11", "rs2": "198.51.100.12", "rs3": "198.51.100.13"}


def tree(*members, weight=100):
    return {
        "services": {
            "web": {
                "vip": VIP, "protocol": "tcp", "ports": [PORT], "method": "dr",
                "scheduler": "rr",
                "realservers": {m: {"address": REALSERVERS[m], "weight": weight}
                                for m in members},
            }
        },
        "directors": {"lb1": {"interface": "eth0"}},
        "realserver": {"persist": False},
    }


# --------------------------------------------------------------------------------------------
# the in-process "master": Salt's state engine with the transport routed into namespaces


class Minions:
    """Runs a minion's function where that minion lives (its namespace) with Salt's loaders, as
    the minion would with its own id and pillar (``lvs`` = the current tree)."""

    def __init__(self, lab, loaders, tmp):
        self.lab = lab
        self.loaders = loaders
        self.tmp = pathlib.Path(tmp)
        self.lvs = None
        self.log = []  # (minion, function) in the order they ran

    def paths(self, minion):
        base = self.tmp / minion
        if minion == "lb1":
            return {"state_file": str(base / "director.json")}
        return {"state_file": str(base / "state.json"), "sysctl_file": str(base / "sysctl.conf"),
                "vip_file": str(base / "vips"),
                "unit_file": str(base / "systemd" / "lvs-realserver.service")}

    def _run(self, minion, body):
        return self.lab.host(minion).ns.call(body)

    def call(self, minion, fun, arg=(), kwarg=None):
        """``{"ret": ..., "retcode": 0|1}`` as a minion's job returns it."""
        kwarg = dict(kwarg or {})
        self.log.append((minion, fun))
        loaders, lvs, paths = self.loaders, copy.deepcopy(self.lvs), self.paths(minion)

        def body():
            mods = loaders.modules
            if fun == "state.sls":
                return formula(loaders, minion, lvs, paths, arg[0].split(","))
            if fun.startswith("lvs_director."):
                kw = dict(kwarg, minion_id=minion, lvs=lvs)
                if fun in ("lvs_director.status", "lvs_director.apply"):
                    kw.update(paths)
                if fun == "lvs_director.drain":
                    kw.setdefault("interval", 0.5)
                return getattr(mods.lvs_director, fun.split(".")[1])(*arg, **kw)
            if fun == "lvs_realserver.audit":
                conf = mods.lvs_pillar.realserver(minion_id=minion, lvs=lvs)
                return mods.lvs_realserver.audit(vips=[v["address"] for v in conf["vips"]])
            if fun == "lvs_realserver.managed":
                return mods.lvs_realserver.managed(**paths)
            if fun in ("network.ip_addrs", "network.ip_addrs6"):
                # the namespace's addresses, as network.ip_addrs[6] lists them (no loopback,
                # no link-local), read by one netlink dump: Salt's network module runs `ip`
                # twice per call, seconds under TCG
                version = 6 if fun.endswith("6") else 4
                return sorted({str(a.address) for a in mods.lvs_realserver.observe().addrs
                               if a.address.version == version and not a.address.is_loopback
                               and not a.address.is_link_local})
            raise AssertionError(f"no route for {fun} in this test")

        try:
            ret = self._run(minion, body)
        except RuntimeError as err:  # the child's exception, with its traceback
            return {"ret": f"ERROR: {err}", "retcode": 1}
        retcode = 0
        if fun == "state.sls" and not all(s["result"] for s in ret.values()):
            retcode = 2
        return {"ret": ret, "retcode": retcode}


def formula(loaders, minion, lvs, paths, mods):
    """What salt/lvs/<mod>.sls applies for this minion's role in ``lvs`` (runs in its netns)."""
    out = {}
    roles = loaders.modules.lvs_pillar.roles(minion_id=minion, lvs=lvs)
    for num, mod in enumerate(mods):
        if mod == "lvs.realserver":
            states = loaders.states.lvs_realserver
            if "realserver" in roles:
                conf = loaders.modules.lvs_pillar.realserver(minion_id=minion, lvs=lvs)
                res = states.present(name="lvs-realserver", vips=[
                    {"address": v["address"], "device": v["device"]} for v in conf["vips"]],
                    scope=conf["scope"], persist=conf["persist"], **paths)
                sid = "lvs_realserver_|-lvs-realserver_|-lvs-realserver_|-present"
            else:
                res = states.absent(name="lvs-realserver", persist=False, **paths)
                sid = "lvs_realserver_|-lvs-realserver_|-lvs-realserver_|-absent"
        elif mod == "lvs.director":
            states = loaders.states.lvs_director
            fun = "present" if "director" in roles else "absent"
            res = getattr(states, fun)(name="lvs-director", minion_id=minion, lvs=lvs, **paths)
            sid = f"lvs_director_|-lvs-director_|-lvs-director_|-{fun}"
        elif mod == "lvs.beacon":
            out["test_|-lvs-realserver-beacon_|-lvs-realserver-beacon_|-show_notification"] = {
                "result": True, "changes": {}, "__run_num__": num,
                "comment": "beacons run in the salt-minion daemon; none here"}
            continue
        else:
            raise AssertionError(f"no formula SLS {mod} in this test")
        out[sid] = {"result": res.result, "changes": res.changes, "comment": res.comment,
                    "__run_num__": num}
    return out


class Orchestrator:
    """``state.orchestrate`` in-process: Salt's state engine with master-role opts, its
    ``saltutil.cmd``/``saltutil.runner`` routed to :class:`Minions` and the lvs_rollout runner."""

    def __init__(self, minions, tmp):
        import salt.config  # pylint: disable=import-outside-toplevel
        import salt.state  # pylint: disable=import-outside-toplevel

        self.minions = minions
        root = pathlib.Path(tmp)
        opts = salt.config.minion_config(None)
        opts.update({
            "id": "orch-master", "__role": "master", "file_client": "local",
            "root_dir": str(root), "cachedir": str(root / "cache"), "pki_dir": str(root / "pki"),
            "sock_dir": str(root / "sock"), "extension_modules": str(root / "ext"),
            "file_roots": {"base": [str(REPO / "salt")]}, "grains": {"id": "orch-master"},
        })
        self.opts = opts
        self.state = salt.state.State(opts, initial_pillar={})
        self.state.functions["saltutil.cmd"] = self.cmd
        self.state.functions["saltutil.runner"] = self.runner
        self.rollout = load("runners", "lvs_rollout", opts={})
        self.rollout._cmd = self.runner_cmd  # pylint: disable=protected-access
        self.rollout._pillar_of = lambda minion: {"lvs": self.minions.lvs}  # noqa: SLF001
        self.rollout._cached_addresses = lambda minion: set()  # noqa: SLF001
        self.published = []  # (targets, fun) as the orchestration published them

    # saltutil.cmd: what salt.state and salt.function call
    def cmd(self, tgt, fun, arg=(), timeout=None, tgt_type="glob", ret="", kwarg=None,
            **kwargs):
        assert tgt_type == "list", "the orchestrations target lists of minion ids only"
        self.published.append((list(tgt), fun))
        size = int(kwargs.get("batch") or len(tgt))
        out = {}
        for start in range(0, len(tgt), size):
            chunk = tgt[start:start + size]
            for minion in chunk:
                got = self.minions.call(minion, fun, arg, kwarg)
                out[minion] = {"ret": got["ret"], "retcode": got["retcode"], "out": "highstate"}
            if kwargs.get("failhard") and any(out[m]["retcode"] for m in chunk):
                break  # Salt's batch stops after a failed batch under failhard
        return out

    def runner_cmd(self, minions, fun, arg=(), kwarg=None, timeout=None):
        return {m: self.minions.call(m, fun, arg, kwarg) for m in minions}

    # saltutil.runner: what salt.runner (and the SLS's Jinja) call
    def runner(self, name, arg=None, kwarg=None, full_return=False, **kwargs):
        mod, fun = name.split(".")
        assert mod == "lvs_rollout", name
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
        kwargs.update(kwarg or {})
        try:
            ret, success = getattr(self.rollout, fun)(*(arg or []), **kwargs), True
        except Exception as err:  # pylint: disable=broad-except
            ret, success = f"Exception occurred in runner {name}: {err}", False
        return {"return": ret, "success": success} if full_return else ret

    def run(self, sls, pillar):
        """Render ``salt/orch/lvs/<sls>.sls`` with ``pillar`` and run it; the results in order."""
        import salt.utils.templates  # pylint: disable=import-outside-toplevel
        import salt.utils.yaml  # pylint: disable=import-outside-toplevel

        text = (REPO / "salt" / "orch" / "lvs" / f"{sls}.sls").read_text()
        rendered = salt.utils.templates.JINJA(
            text, from_str=True, to_str=True, opts=self.opts, saltenv="base",
            sls=f"orch.lvs.{sls}", pillar=pillar, grains={},
            salt={"pillar.get": lambda key, default=None: pillar.get(key, default),
                  "saltutil.runner": self.runner})
        assert rendered["result"], rendered
        high = {}
        for sid, body in salt.utils.yaml.safe_load(rendered["data"]).items():
            ((key, args),) = body.items()
            mod, fun = key.split(".", 1)
            high[sid] = {mod: [fun, *args], "__sls__": f"orch.lvs.{sls}", "__env__": "base"}
        self.published.clear()
        ret = self.state.call_high(high)
        assert isinstance(ret, dict), ret  # a list means the high data did not compile
        steps = sorted(ret.values(), key=lambda s: s["__run_num__"])
        # a runner's failure is in its return (the comment only says that it failed)
        return [(s["__id__"], s["result"],
                 f"{s['comment']} {(s.get('changes') or {}).get('return', '')}")
                for s in steps]


# --------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def cluster(loaders, tmp_path):
    with Lab(realservers=REALSERVERS, director_vip=False, ipv6=False) as lab:
        minions = Minions(lab, loaders, tmp_path / "minions")
        lab.start_tcp_servers(PORT, echo=True)
        yield lab, minions, Orchestrator(minions, tmp_path / "orch")


def configure(minions, members):
    """The starting point: these real servers configured and in the director, nothing else."""
    minions.lvs = tree(*members)
    for m in members:
        assert minions.call(m, "state.sls", ["lvs.realserver"])["retcode"] == 0
    res = minions.call("lb1", "state.sls", ["lvs.director"])
    assert res["retcode"] == 0, res


def answered_by(lab, n=6):
    return {lab.tcp_request(VIP, PORT)["reply"].split()[0] for _ in range(n)}


def ipvs_dests(minions):
    status = minions.call("lb1", "lvs_director.status")["ret"]
    entry = status["live"].get(f"tcp {VIP}:{PORT}", {"realservers": {}})
    return {dest: (rs["weight"], rs["active"]) for dest, rs in entry["realservers"].items()}


# --------------------------------------------------------------------------------------------
# add


def test_add_realservers_in_batches_they_get_traffic_only_after_their_audit(cluster):
    lab, minions, orch = cluster
    configure(minions, ["rs1"])
    assert answered_by(lab) == {"rs1"}

    minions.lvs = tree("rs1", "rs2", "rs3")  # the operator's pillar edit
    minions.log.clear()
    steps = orch.run("add_realserver", {"realservers": ["rs2", "rs3"], "batch": 1})
    print("\n" + json.dumps(steps, indent=1))
    assert [(sid, ok) for sid, ok, _ in steps] == [
        ("lvs-add-realserver-state", True), ("lvs-add-realserver-audit", True),
        ("lvs-add-director-state", True), ("lvs-add-director-check", True)]

    # order on the minions: both real servers (one batch each) and their audits come before
    # the director is changed
    order = [(m, f) for m, f in minions.log if f in ("state.sls", "lvs_realserver.audit")]
    assert order[:4] == [("rs2", "state.sls"), ("rs3", "state.sls"),
                         ("rs2", "lvs_realserver.audit"), ("rs3", "lvs_realserver.audit")]
    first_director_change = minions.log.index(("lb1", "state.sls"))
    assert all(minions.log.index(step) < first_director_change for step in order[:4])
    assert orch.published[0] == (["rs2", "rs3"], "state.sls")

    for m in ("rs2", "rs3"):
        assert f"{VIP}/32" in lab.host(m).addresses("lo")
        assert lab.host(m).arp_sysctls()["eth0"] == (1, 2)
    assert ipvs_dests(minions) == {f"{a}:{PORT}": (100, 0) for a in REALSERVERS.values()}
    assert answered_by(lab, 9) == {"rs1", "rs2", "rs3"}
    assert lab.arp_responders(VIP) == {"lb1"}


# --------------------------------------------------------------------------------------------
# remove


def test_remove_drains_waits_stops_while_connections_remain_then_finishes(cluster):
    lab, minions, orch = cluster
    configure(minions, ["rs1", "rs2"])
    held = Held(lab)
    assert held.server in ("rs1", "rs2"), held.hello
    leaving = held.server
    staying = "rs2" if leaving == "rs1" else "rs1"
    leaving_dest = f"{REALSERVERS[leaving]}:{PORT}"

    # 1. run before the pillar edit: refused at the drain, nothing changed
    steps = orch.run("remove_realserver", {"realservers": [leaving], "drain_timeout": 2})
    assert [(sid, ok) for sid, ok, _ in steps] == [("lvs-remove-drain", False)], steps
    assert "still in the directors' pillar" in steps[0][2]
    assert ipvs_dests(minions)[leaving_dest] == (100, 1)

    # 2. pillar edited, but the held connection does not end within drain_timeout: stop there
    minions.lvs = tree(staying)
    steps = orch.run("remove_realserver", {"realservers": [leaving], "drain_timeout": 3})
    print("\n" + json.dumps(steps, indent=1))
    assert [(sid, ok) for sid, ok, _ in steps] == [("lvs-remove-drain", False)], steps
    assert "active connections remain" in steps[0][2]
    assert ipvs_dests(minions)[leaving_dest] == (0, 1), "drained to weight 0, still there"
    assert f"{VIP}/32" in lab.host(leaving).addresses("lo"), "the VIP stays while it has traffic"
    assert held.ping("during the drain") == "during the drain"
    assert answered_by(lab, 4) == {staying}, "weight 0: no new connections"

    # 3. the connection ends: the same orchestration goes through, in order
    held.close()
    minions.log.clear()
    steps = orch.run("remove_realserver", {"realservers": [leaving], "drain_timeout": 60})
    print("\n" + json.dumps(steps, indent=1))
    assert [(sid, ok) for sid, ok, _ in steps] == [
        ("lvs-remove-drain", True), ("lvs-remove-director-state", True),
        ("lvs-remove-director-check", True), ("lvs-remove-realserver-state", True)]
    director_change = minions.log.index(("lb1", "state.sls"))
    realserver_change = minions.log.index((leaving, "state.sls"))
    assert director_change < realserver_change, "the VIP goes only after the director let go"
    assert leaving_dest not in ipvs_dests(minions)
    assert f"{VIP}/32" not in lab.host(leaving).addresses("lo")
    assert lab.host(leaving).arp_sysctls()["eth0"] == (0, 0), "suppression relaxed after the VIP"
    assert answered_by(lab, 4) == {staying}
    assert lab.arp_responders(VIP) == {"lb1"}

