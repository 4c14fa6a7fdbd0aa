"""Both ways of deploying the extension, each end to end with salt-call in a lab namespace.

(a) pip: ``pip install --no-deps --target DIR <repo>``, then ``salt-call --local`` with
    ``PYTHONPATH=DIR`` and neither file_roots nor a sync: Salt must find the modules through the
    ``salt.loader`` entry point alone.
(b) file root: the repository as file root, ``saltutil.sync_all`` ships ``_modules`` and
    ``_states`` into the minion's cache; run with the plain .venv (salt, pyroute2 and test tools,
    no saltext-lvs installed, no repo on sys.path).

Both then run ``lvs_realserver.audit`` without any pillar on a real server that has the usual
copy-paste setup (VIP /32 on lo, default ARP sysctls): the audit must find that eth0 answers ARP
for the VIP. That proves the deployed module loads and reads the namespace's kernel.
"""

from __future__ import annotations

import filecmp
import json
import os
import pathlib
import shutil
import subprocess

import pytest

from lab import netlab, saltenv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VENV = saltenv.default_venv()
# What must reach the minion either way: every loader file in the repository, by Salt type.
EXTENSION_FILES = {
    kind: sorted(p.name for p in (saltenv.REPO / f"_{kind}").glob("*.py"))
    for kind in ("modules", "states", "beacons")
}


def plain_env(**extra) -> dict:
    """The environment salt-call gets: no PYTHONPATH (nothing of the repo on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


def run_salt_call(config_dir, *args, netns, env, cwd):
    """saltenv.salt_call with a chosen environment and working directory."""
    argv = saltenv.salt_call_argv(config_dir, *args, netns=netns, venv=VENV)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=180)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stderr}"
    return saltenv.parse_local(proc)


@pytest.fixture(scope="module")
def lab():
    """client, director and one real server with the copy-paste setup (VIP on lo, sysctls 0)."""
    with netlab.Lab(realservers={"rs1": netlab.REALSERVERS["rs1"]}) as lab:
        lab.naive_realserver("rs1")
        yield lab


def assert_audit_finds_the_arp_race(audit: dict) -> None:
    assert audit["source"] == "lo/tunl0"  # no pillar: the VIPs found on lo
    assert audit["ok"] is False
    assert audit["vips"] == {
        netlab.VIP: {"held_on": [{"interface": "lo", "prefixlen": 32, "label": None}]}
    }
    assert audit["interfaces"]["eth0"]["answers_arp_for"] == [netlab.VIP]
    errors = {(f["vip"], f["interface"]) for f in audit["findings"] if f["severity"] == "error"}
    assert (netlab.VIP, "eth0") in errors


def test_venv_has_no_installed_extension():
    """Precondition of (b), and of (a)'s control run: only PYTHONPATH may bring saltext_lvs in."""
    probe = (
        "import importlib.metadata as m, importlib.util as u, json;"
        "print(json.dumps([u.find_spec('saltext_lvs') is not None,"
        " [e.value for e in m.entry_points(group='salt.loader')]]))"
    )
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", probe], capture_output=True,
                         text=True, check=True, env=plain_env(), cwd="/").stdout
    importable, entry_points = json.loads(out)
    assert not importable and "saltext_lvs" not in entry_points, (
        f"{VENV} has saltext-lvs installed (pip install . or -e .): the deployment tests cannot "
        "tell which copy Salt loads. `pip uninstall saltext-lvs` from that venv."
    )


# --------------------------------------------------------------------------------------------
# (a) pip install, entry point, no sync


# What `pip install <repo>` reads: setup.py and its neighbours at the top, the loader folders.
DIST_DIRS = ("_modules", "_states", "_beacons")


def copy_dist_sources(repo_root: pathlib.Path, dest: pathlib.Path) -> None:
    """The working tree's distribution inputs (uncommitted edits included), nothing else."""
    dest.mkdir(parents=True)
    for entry in repo_root.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            shutil.copy2(entry, dest / entry.name)
    for folder in DIST_DIRS:
        if (repo_root / folder).is_dir():
            shutil.copytree(repo_root / folder, dest / folder,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def offline_build_options() -> tuple[list[str], dict]:
    """Build with the venv's own setuptools and wheel (requirements.txt installs wheel).

    pytest runs in a namespace without a route to the package index, so pip's default isolated
    build, which downloads setuptools and wheel into a throwaway env, cannot work there.
    """
    return ["--no-build-isolation"], {}


@pytest.fixture(scope="module")
def pip_target(repo_root, tmp_path_factory):
    """``pip install --no-deps --target DIR`` of the working tree.

    pip builds a local directory in place (setuptools writes build/ and *.egg-info next to
    setup.py), so it builds from a copy: the shared checkout stays clean and parallel runs do not
    race.
    """
    base = tmp_path_factory.mktemp("pip")
    src, target = base / "src", base / "target"
    copy_dist_sources(repo_root, src)
    args, env = offline_build_options()
    proc = subprocess.run(
        [str(VENV / "bin" / "pip"), "install", "--no-deps", "--disable-pip-version-check",
         *args, "--target", str(target), str(src)],
        capture_output=True, text=True, env=plain_env(**env), timeout=600,
    )
    assert proc.returncode == 0, (
        f"pip install failed:\n{proc.stdout}\n{proc.stderr}\n(the tests' namespace has no "
        "network: the venv needs `wheel` or setuptools>=70.1 to build offline)"
    )
    return target


@pytest.fixture(scope="module")
def pip_config(tmp_path_factory):
    """A masterless minion with no file roots, no pillar, no module_dirs: nothing to sync from."""
    root = tmp_path_factory.mktemp("pip-minion")
    empty = root / "empty"
    empty.mkdir()
    return saltenv.make_local_config(
        root, "rs1", {},
        extra={"file_roots": {"base": [str(empty)]}, "pillar_roots": {"base": [str(empty)]}},
    )


def test_pip_install_ships_the_loader_dirs(pip_target, repo_root):
    assert EXTENSION_FILES["modules"] and EXTENSION_FILES["states"]
    pkg = pip_target / "saltext_lvs"
    for kind, names in EXTENSION_FILES.items():
        for name in names:
            src = repo_root / f"_{kind}" / name
            assert filecmp.cmp(pkg / kind / name, src, shallow=False), f"{kind}/{name} differs"
    entry_points = next(pip_target.glob("saltext_lvs-*.dist-info")) / "entry_points.txt"
    assert "[salt.loader]" in entry_points.read_text()


def test_pip_install_loads_without_sync(pip_target, pip_config, lab, tmp_path):
    ns = lab.host("rs1").ns
    with_pkg = plain_env(PYTHONPATH=str(pip_target))

    # control: the same minion without the package knows nothing of the extension
    assert run_salt_call(pip_config, "sys.list_modules", "lvs_*", netns=ns, env=plain_env(),
                         cwd=tmp_path) == []

    modules = run_salt_call(pip_config, "sys.list_modules", "lvs_*", netns=ns, env=with_pkg,
                            cwd=tmp_path)
    assert "lvs_realserver" in modules and "lvs_pillar" in modules
    states = run_salt_call(pip_config, "sys.list_state_modules", netns=ns, env=with_pkg,
                           cwd=tmp_path)
    assert "lvs_realserver" in states
    audit = run_salt_call(pip_config, "lvs_realserver.audit", netns=ns, env=with_pkg,
                          cwd=tmp_path)
    assert_audit_finds_the_arp_race(audit)
    # nothing was synced: the minion's extension module cache holds no copy
    extmods = run_salt_call(pip_config, "config.get", "extension_modules", netns=ns,
                            env=with_pkg, cwd=tmp_path)
    assert not list(pathlib.Path(extmods).glob("**/lvs_*.py"))


# --------------------------------------------------------------------------------------------
# (b) the repository as file root, saltutil.sync_all


@pytest.fixture(scope="module")
def fileroot_config(tmp_path_factory, repo_root):
    root = tmp_path_factory.mktemp("fileroot-minion")
    return saltenv.make_local_config(root, "rs1", {}, repo=repo_root)


def test_file_root_sync_ships_modules_and_states(fileroot_config, lab, repo_root, tmp_path):
    ns = lab.host("rs1").ns
    env = plain_env()
    synced = run_salt_call(fileroot_config, "saltutil.sync_all", netns=ns, env=env, cwd=tmp_path)
    for kind, names in EXTENSION_FILES.items():
        for name in names:
            assert f"{kind}.{name[:-3]}" in synced[kind], synced
    extmods = run_salt_call(fileroot_config, "config.get", "extension_modules", netns=ns,
                            env=env, cwd=tmp_path)
    for kind, names in EXTENSION_FILES.items():
        for name in names:
            copy = os.path.join(extmods, kind, name)
            assert filecmp.cmp(copy, repo_root / f"_{kind}" / name, shallow=False), copy

    modules = run_salt_call(fileroot_config, "sys.list_modules", "lvs_*", netns=ns, env=env,
                            cwd=tmp_path)
    assert "lvs_realserver" in modules and "lvs_pillar" in modules
    assert "lvs_realserver" in run_salt_call(fileroot_config, "sys.list_state_modules",
                                             netns=ns, env=env, cwd=tmp_path)
    audit = run_salt_call(fileroot_config, "lvs_realserver.audit", netns=ns, env=env,
                          cwd=tmp_path)
    assert_audit_finds_the_arp_race(audit)


def test_audit_changed_nothing(lab):
    """Both audits are read-only: rs1 still has the copy-paste setup they found."""
    rs1 = lab.host("rs1")
    assert rs1.arp_sysctls()["eth0"] == (0, 0)
    assert f"{netlab.VIP}/32" in rs1.addresses("lo")
    assert "rs1" in lab.arp_responders()  # the race is still there: the audit only reported it
