"""Salt's own loader picks the real server backend from the ``kernel`` grain.

The FreeBSD, Solaris and Windows backends all carry ``__virtualname__ = "lvs_realserver"``;
each ``__virtual__`` accepts only its kernel, so ``__salt__["lvs_realserver.apply"]`` (what the
``lvs_realserver`` state calls) is the right one. These tests build a real Salt loader over a
folder holding only those files (the Linux module is left out: on this Linux machine it would
accept every grain set that names Linux, which is its own business), with fake grains.

The last test runs a backend through the loader end to end in test mode, with ``cmd`` replaced
by a loader module that replays recorded output: recorded output, NOT a real system.
"""

import copy
import json

import pytest
import salt.config
import salt.loader

from tests.fixtures.fake_commands import GRAINS
from tests.fixtures.fake_commands import recorded
from tests.loadmod import REPO

pytestmark = pytest.mark.unit

MODULES = ["lvs_realserver_cmd", "lvs_realserver_freebsd", "lvs_realserver_solaris",
           "lvs_realserver_windows", "lvs_pillar"]

# A stand-in for Salt's cmd module, loaded ahead of it (extension modules win): it replays the
# recorded output named in the minion opts and refuses anything else. Not a real system.
FAKE_CMD = '''
import json
__virtualname__ = "cmd"

def __virtual__():
    return __virtualname__

def run_all(cmd, python_shell=None, **kwargs):
    assert python_shell is False, cmd
    reads = json.loads(open(__opts__["lvs_fake_reads"]).read())
    key = json.dumps(cmd)
    if key not in reads:
        raise AssertionError(f"unexpected command {cmd}")
    return {"stdout": reads[key], "stderr": "", "retcode": 0, "pid": 1}

def which(name):
    return None
'''


def loader(tmp_path, os_name, extra=None):
    root = tmp_path / "root"
    (root / "_modules").mkdir(parents=True)
    (root / "_states").mkdir()
    for name in MODULES:
        (root / "_modules" / f"{name}.py").symlink_to(REPO / "_modules" / f"{name}.py")
    (root / "_states" / "lvs_realserver.py").symlink_to(REPO / "_states" / "lvs_realserver.py")
    for name, text in (extra or {}).items():
        (root / "_modules" / f"{name}.py").write_text(text)
    opts = copy.deepcopy(salt.config.DEFAULT_MINION_OPTS)
    opts.update({
        "id": "rs1",
        "file_client": "local",
        "module_dirs": [str(root)],
        "cachedir": str(tmp_path / "cache"),
        "extension_modules": str(tmp_path / "extmods"),
        "grains": dict(GRAINS[os_name]) if os_name in GRAINS else {
            "kernel": "Linux", "os": "Debian", "os_family": "Debian"},
        "pillar": {},
        "lazy_loader_strict_matching": True,
    })
    return opts, salt.loader.minion_mods(opts)


@pytest.mark.parametrize("os_name", ["freebsd", "solaris", "windows"])
def test_the_kernel_grain_picks_the_backend_and_the_state_loads_over_it(tmp_path, os_name):
    opts, mods = loader(tmp_path, os_name)
    assert mods["lvs_realserver.apply"].func.__module__.endswith(f"lvs_realserver_{os_name}")
    assert "lvs_realserver_cmd.apply_with" in mods
    states = salt.loader.states(opts, mods, salt.loader.utils(opts), {})
    assert "lvs_realserver.present" in states and "lvs_realserver.absent" in states


def test_on_linux_grains_none_of_them_loads(tmp_path):
    _, mods = loader(tmp_path, "linux")
    assert "lvs_realserver.apply" not in mods
    assert "lvs_realserver_cmd.apply_with" not in mods
    reason = mods.missing_fun_string("lvs_realserver.apply")
    for name in ("freebsd", "solaris", "windows"):
        assert f"lvs_realserver_{name}:" in reason


def test_a_backend_through_the_loader_in_test_mode(tmp_path):
    """Recorded output, not a real system: FreeBSD's ifconfig, sysrc and sysctl output."""
    reads = {
        json.dumps(["ifconfig", "-a"]): recorded("freebsd", "ifconfig-a.fresh.txt"),
        json.dumps(["sysrc", "-f", "/etc/rc.conf", "-a"]): recorded("freebsd",
                                                                    "sysrc-a.fresh.txt"),
        json.dumps(["sysctl", "-n", "net.link.ether.inet.proxyall"]): "0\n",
    }
    (tmp_path / "reads.json").write_text(json.dumps(reads))
    opts, mods = loader(tmp_path, "freebsd", extra={"cmd": FAKE_CMD})
    opts["lvs_fake_reads"] = str(tmp_path / "reads.json")
    res = mods["lvs_realserver.apply"](vips=["198.51.100.100"], scope="interfaces",
                                       persist=True, test=True,
                                       state_file=str(tmp_path / "state.json"))
    assert res["changes"] == {
        "address": {"198.51.100.100/32 dev lo0": {"old": None,
                                                  "new": "198.51.100.100/32 dev lo0"}},
        "rc.conf": {"ifconfig_lo0_alias1": {"old": None,
                                            "new": "inet 198.51.100.100 netmask 0xffffffff"}},
    }
    assert not (tmp_path / "state.json").exists()
