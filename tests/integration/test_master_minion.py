"""A real salt-master and a real salt-minion inside real server rs1's namespace.

Topology (lab.netlab): client, director lb1 (holding the VIP), rs1 and rs2 on one bridge; pytest's
own namespace joins the bridge as 198.51.100.1 and runs the master. The minion ``rs1`` runs
inside rs1's namespace, so every sysctl and address it changes is rs1's alone.
"""

from __future__ import annotations

import json

import pytest
import yaml

from lab import netlab
from tests.conftest import lvs_realserver_opts
from tests.integration.netns_minion import (
    SALT_ADDRESS,
    NetnsSaltMinion,
    attach_session_netns,
    minion_overrides,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(session_netns):
    with netlab.Lab() as lab:
        attach_session_netns(lab, session_netns)
        yield lab


@pytest.fixture(scope="module")
def salt_master(lab, salt_factories, repo_root):
    master = salt_factories.salt_master_daemon(
        "lvs-master",
        overrides={
            "interface": SALT_ADDRESS,
            # The formula (salt://lvs/...) and the custom types (salt://_modules/...).
            "file_roots": {"base": [str(repo_root / "salt"), str(repo_root)]},
            # Do not serve the virtualenv and git objects from the repo file root.
            "file_ignore_regex": [r"^\.venv(/|$)", r"^\.git(/|$)", r"(^|/)__pycache__(/|$)"],
        },
    )
    with master.started():
        yield master


@pytest.fixture(scope="module")
def rs1(lab, salt_master, tmp_path_factory):
    persist = tmp_path_factory.mktemp("rs1-persist")
    minion = salt_master.salt_minion_daemon(
        "rs1",
        factory_class=NetnsSaltMinion,
        netns=lab.host("rs1").netns,
        overrides=minion_overrides(**lvs_realserver_opts(persist)),
    )
    with minion.started():
        yield minion


@pytest.fixture(scope="module")
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=120)


def test_minion_runs_in_rs1_namespace(salt_cli, rs1, lab):
    ret = salt_cli.run("grains.get", "ipv4", minion_tgt="rs1")
    assert ret.returncode == 0, ret
    assert lab.host("rs1").address in ret.data
    assert "198.51.100.1" not in ret.data  # pytest's (the master's) address is not the minion's
    ret = salt_cli.run("sysctl.get", "net.ipv4.conf.eth0.arp_ignore", minion_tgt="rs1")
    assert ret.returncode == 0, ret
    assert str(ret.data) == "0"
