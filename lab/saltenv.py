"""Masterless Salt for one minion, deployed the file-root way, runnable inside a namespace.

:func:`make_local_config` writes a self-contained config dir: everything Salt writes (pki, cache,
logs, sockets, and the extension's persistence files) stays under one root folder, nothing goes to
``/etc`` or ``/var``. :func:`salt_call` runs ``salt-call --local`` against it, optionally inside a
network namespace (``ip netns exec``), and returns the parsed ``local`` value.

Exit codes: both runners pass ``--retcode-passthrough``, so a failed state makes ``salt-call``
exit non-zero. :func:`salt_call` raises :class:`SaltCallError` on any non-zero exit (with stdout,
stderr and the parsed output when there is one); :func:`salt_call_raw` never raises on the exit
code and returns the CompletedProcess (``.returncode``, ``.stdout``, ``.stderr``); use
:func:`parse_local` on it. Use the raw variant when a failure is the expected result.

The file-root deployment path is :func:`deploy_formula`: ``saltutil.sync_all`` (ships ``_modules``
and ``_states`` from the repository) then ``state.apply lvs``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Seconds one salt-call may take. Under emulation (the kernel lane's qemu) a sync_all takes
# minutes, not seconds: LAB_SALT_TIMEOUT raises the bound there.
SALT_TIMEOUT = float(os.environ.get("LAB_SALT_TIMEOUT", "180"))
PERSIST_FILES = {
    "state_file": "state.json",
    "sysctl_file": "sysctl.d/90-lvs-realserver.conf",
    "vip_file": "realserver-vips.batch",
    "unit_file": "systemd/lvs-realserver.service",
}


class SaltCallError(RuntimeError):
    def __init__(self, message: str, proc: subprocess.CompletedProcess, parsed=None):
        super().__init__(message)
        self.proc = proc
        self.parsed = parsed


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def make_local_config(root: Path, minion_id: str, pillar: dict | Path, repo: Path = REPO,
                      extra: dict | None = None) -> Path:
    """Write ``<root>/conf/minion`` for a masterless minion and return the config dir.

    ``pillar`` is the whole pillar document (a dict with the ``lvs`` key) or a path to a YAML file
    such as ``pillar.example`` (copied verbatim). It is served as ``lvs.sls``, assigned to every
    minion by ``top.sls``. ``file_roots`` is ``<repo>/salt``: the formula (``salt://lvs/...``)
    and, through symlinks, ``salt://_modules``, ``_states`` and ``_beacons`` for the sync. The extension's
    persistence paths (``lvs_realserver:``) point into ``<root>/persist``. ``extra`` is merged
    into the config last (dicts merge recursively).
    """
    root = Path(root).resolve()
    repo = Path(repo).resolve()
    conf = root / "conf"
    pillar_dir = root / "pillar"
    persist = root / "persist"
    for folder in (conf, pillar_dir, persist, persist / "sysctl.d", persist / "systemd"):
        folder.mkdir(parents=True, exist_ok=True)
    if isinstance(pillar, (str, os.PathLike)):
        shutil.copyfile(pillar, pillar_dir / "lvs.sls")
    else:
        (pillar_dir / "lvs.sls").write_text(json.dumps(pillar, indent=2) + "\n")  # JSON is YAML
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - lvs\n")
    opts = {
        "id": minion_id,
        "file_client": "local",
        "root_dir": str(root),  # pki_dir, cachedir, sock_dir, log_file are prefixed with it
        # salt/ holds the formula and symlinks to _modules, _states and _beacons: one file root,
        # and Salt never walks .git or .venv (that cost about 1.2 s per call)
        "file_roots": {"base": [str(repo / "salt")]},
        "pillar_roots": {"base": [str(pillar_dir)]},
        "lvs_realserver": {key: str(persist / rel) for key, rel in PERSIST_FILES.items()},
        "log_level_logfile": "info",
        "file_ignore_regex": [r"(^|/)__pycache__/"],
    }
    _merge(opts, extra or {})
    (conf / "minion").write_text(json.dumps(opts, indent=2) + "\n")
    return conf


def default_venv() -> Path:
    here = Path(sys.prefix)
    return here if (here / "bin" / "salt-call").exists() else REPO / ".venv"


def _netns_name(netns) -> str | None:
    if netns is None:
        return None
    return getattr(netns, "name", netns)


def salt_call_argv(config_dir: Path, *args: str, netns=None, venv: Path | None = None,
                   log_level: str = "warning") -> list[str]:
    venv = Path(venv) if venv else default_venv()
    argv = [str(venv / "bin" / "salt-call"), "--local", "--config-dir", str(config_dir),
            "--out=json", "--retcode-passthrough", f"--log-level={log_level}", *args]
    ns = _netns_name(netns)
    return ["ip", "netns", "exec", ns, *argv] if ns else argv


def salt_call_raw(config_dir: Path, *args: str, netns=None, venv: Path | None = None,
                  timeout: float = SALT_TIMEOUT) -> subprocess.CompletedProcess:
    """Run salt-call and return the CompletedProcess whatever the exit code."""
    return subprocess.run(salt_call_argv(config_dir, *args, netns=netns, venv=venv),
                          capture_output=True, text=True, timeout=timeout)


def parse_local(proc: subprocess.CompletedProcess):
    """The ``local`` value of salt-call's JSON output (raises ValueError when there is none)."""
    text = proc.stdout.strip()
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON document in salt-call output")
    return json.loads(text[start:])["local"]


def salt_call(config_dir: Path, *args: str, netns=None, venv: Path | None = None,
              timeout: float = SALT_TIMEOUT):
    """Run salt-call and return the parsed ``local`` value; raise SaltCallError on failure."""
    proc = salt_call_raw(config_dir, *args, netns=netns, venv=venv, timeout=timeout)
    try:
        parsed = parse_local(proc)
    except (ValueError, KeyError):
        parsed = None
    if proc.returncode != 0 or parsed is None:
        where = f" in {_netns_name(netns)}" if netns else ""
        raise SaltCallError(
            f"salt-call {' '.join(args)}{where} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}", proc, parsed)
    return parsed


def deploy_formula(config_dir: Path, netns=None, venv: Path | None = None,
                   sls: str = "lvs", test: bool = False) -> dict:
    """The file-root deployment: ``saltutil.sync_all`` then ``state.apply lvs``.

    Returns the state run's ``local`` value ({state id: result dict}); raises SaltCallError when
    salt-call fails or any state fails.
    """
    salt_call(config_dir, "saltutil.sync_all", netns=netns, venv=venv)
    return apply_state(config_dir, sls, netns=netns, venv=venv, test=test)


def in_parallel(jobs: dict):
    """Run ``{name: zero-argument callable}`` at once (one thread each, the work is in salt-call
    subprocesses) and return ``{name: result}``; the first exception is re-raised."""
    if not jobs:
        return {}
    pool = ThreadPoolExecutor(max_workers=len(jobs))
    try:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: fut.result() for name, fut in futures.items()}
    finally:
        # On Ctrl-C do not wait here for salt-call to finish: the caller's cleanup (deleting
        # the namespaces) ends the salt-call processes, and with them these threads.
        pool.shutdown(wait=False, cancel_futures=True)


def apply_state(config_dir: Path, sls: str = "lvs", netns=None, venv: Path | None = None,
                test: bool = False, pillar: dict | None = None) -> dict:
    args = ["state.apply", sls]
    if test:
        args.append("test=True")
    if pillar is not None:
        args.append(f"pillar={json.dumps(pillar)}")
    return salt_call(config_dir, *args, netns=netns, venv=venv)


def ordered_states(state_ret: dict) -> list[dict]:
    """The state results of a state run in execution order, each with its ``id`` added."""
    if not isinstance(state_ret, dict):
        raise TypeError(f"not a state run result: {state_ret!r}")
    items = []
    for key, value in state_ret.items():
        if isinstance(value, dict) and "result" in value:
            items.append({"id": key, **value})
    return sorted(items, key=lambda s: s.get("__run_num__", 0))


def changed_states(state_ret: dict) -> list[dict]:
    return [s for s in ordered_states(state_ret) if s.get("changes")]


def failed_states(state_ret: dict) -> list[dict]:
    return [s for s in ordered_states(state_ret) if s.get("result") is False]


def summarize_changes(state_ret: dict, width: int = 100) -> list[str]:
    """One short line per state: result mark, state id, and what changed (or the comment)."""
    lines = []
    for s in ordered_states(state_ret):
        mark = {True: "ok", False: "FAIL", None: "test"}.get(s.get("result"), "?")
        sid = s["id"].split("_|-")
        label = f"{sid[0]}.{sid[-1]} {sid[1]}" if len(sid) == 4 else s["id"]
        if s.get("changes"):
            detail = json.dumps(s["changes"], sort_keys=True, separators=(",", ":"))
        else:
            detail = (s.get("comment") or "").replace("\n", " ")
        line = f"{mark:4} {label}: {detail}"
        lines.append(line if len(line) <= width else line[: width - 3] + "...")
    return lines
