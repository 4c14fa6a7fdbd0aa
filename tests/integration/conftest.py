"""Fixtures for the wire tests (tests/integration/test_wire.py): the namespace lab with the
formula applied by ``salt-call --local`` inside each real server (file-root deployment).

Paths are computed here (not from a ``repo_root`` fixture) so these tests run with any
top-level conftest.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lab import saltenv

REPO = Path(__file__).resolve().parents[2]
PILLAR_EXAMPLE = REPO / "pillar.example"


class Cluster:
    """A Lab plus one masterless salt config dir per real server."""

    def __init__(self, lab, workdir: Path, pillar=PILLAR_EXAMPLE):
        self.lab = lab
        self.workdir = Path(workdir)
        self.pillar = pillar
        self.confs: dict[str, Path] = {}

    def conf(self, name: str, pillar=None) -> Path:
        """(Re)write ``name``'s config; a new pillar replaces lvs.sls, the salt root is kept."""
        self.confs[name] = saltenv.make_local_config(
            self.workdir / name, name, pillar if pillar is not None else self.pillar, REPO)
        return self.confs[name]

    def persist_dir(self, name: str) -> Path:
        return self.workdir / name / "persist"

    def salt(self, name: str, *args: str):
        return saltenv.salt_call(self.confs[name], *args, netns=self.lab.host(name).ns)

    def deploy(self, names) -> dict[str, dict]:
        """sync_all + state.apply lvs in each named real server, all at once."""
        for name in names:
            if name not in self.confs:
                self.conf(name)
        return saltenv.in_parallel({
            n: (lambda n=n: saltenv.deploy_formula(self.confs[n], netns=self.lab.host(n).ns))
            for n in names
        })

    def apply(self, names, *extra: str) -> dict[str, dict]:
        """``state.apply lvs [extra...]`` in each named real server, all at once."""
        return saltenv.in_parallel({
            n: (lambda n=n: self.salt(n, "state.apply", "lvs", *extra)) for n in names
        })


@pytest.fixture(scope="session")
def example_pillar() -> dict:
    """pillar.example as data (the whole document, ``lvs:`` at the top)."""
    return yaml.safe_load(PILLAR_EXAMPLE.read_text())


@pytest.fixture(scope="session")
def pillar_without(example_pillar):
    """``pillar_without("rs1")``: pillar.example in which rs1 is no real server of any service."""

    def make(name: str) -> dict:
        out = copy.deepcopy(example_pillar)
        for svc in out["lvs"]["services"].values():
            svc.get("realservers", {}).pop(name, None)
        return out

    return make


@pytest.fixture(scope="session")
def new_cluster(tmp_path_factory):
    """``new_cluster(lab)``: a :class:`Cluster` whose salt roots live in a fresh temp dir."""

    def make(lab, pillar=PILLAR_EXAMPLE) -> Cluster:
        return Cluster(lab, tmp_path_factory.mktemp("wire-salt"), pillar)

    return make
