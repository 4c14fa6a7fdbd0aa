"""Fixtures for the real-kernel lane (``sudo tools/kernel-lane/run-tests``, docs/kernel-lane.md).

Tests marked ``kernel`` need IPVS, ipip and dummy, which this machine's kernel lacks. They run in
one qemu VM booting Debian's stock kernel, where ``run-tests`` starts ``pytest -m kernel`` with
``LVT_GUEST=1``. The guest sees the host's tree read-only at the same paths (the repository, its
.venv) with a tmpfs overlay on top, so the session fence of tests/conftest.py works there as on
the host: pytest moves into a namespace of its own, and tests build theirs with ``netns``.

Everything under tests/kernel gets the ``kernel`` marker from its folder, and outside the VM a
host session deselects every ``kernel`` test (both in tests/conftest.py). If one runs anyway
(``LVT_GUEST`` unset, or a guest without IPVS), :func:`kernel_lane` fails it: a kernel test never
turns into a skip.

Python runs ~15-20x slower under TCG: import pyroute2 and Salt once per session, and call Salt
in-process through :func:`loaders` (``salt-call`` costs 12-17 s per call in the guest).
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

IN_GUEST = os.environ.get("LVT_GUEST") == "1"
REPO = pathlib.Path(__file__).resolve().parents[2]


def modprobe(*modules: str) -> None:
    """Load kernel modules in the guest (busybox modprobe from stage 2; autoload uses it too)."""
    for module in modules:
        try:
            proc = subprocess.run(["modprobe", module], capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:  # the host has no kmod; stage 2 puts busybox's on PATH
            raise RuntimeError(f"modprobe {module}: {exc}") from exc
        if proc.returncode != 0:
            raise RuntimeError(f"modprobe {module} failed: {proc.stderr.strip() or proc.returncode}")


@pytest.fixture(scope="session", autouse=True)
def kernel_lane() -> dict:
    """Fail (never skip) unless this is the lane's guest and IPVS is there.

    Returns what the tests may want to print: the kernel release and the modprobe helper.
    """
    if not IN_GUEST:
        pytest.fail(
            "kernel tests run only inside the kernel lane's VM: sudo tools/kernel-lane/run-tests. "
            "A host session must deselect them (LVT_GUEST=1 is unset here).",
            pytrace=False,
        )
    try:
        modprobe("ip_vs")
    except RuntimeError as exc:
        pytest.fail(f"LVT_GUEST=1 but IPVS cannot be loaded: {exc}", pytrace=False)
    if not pathlib.Path("/proc/net/ip_vs").exists():
        pytest.fail("ip_vs is loaded but /proc/net/ip_vs is missing in this namespace", pytrace=False)
    return {
        "release": os.uname().release,
        "modprobe": pathlib.Path("/proc/sys/kernel/modprobe").read_text().strip(),
    }


@pytest.fixture(scope="session")
def kmod():
    """``kmod("ipip", "dummy")``: load modules, raising with modprobe's message on failure."""
    return modprobe


def _lane_loaders_class():
    from saltfactories.utils.functional import Loaders  # slow import: only when asked for

    def no_sync(*args, **kwargs):
        return {}

    class LaneLoaders(Loaders):
        """saltfactories' Loaders, minus what costs half a minute under TCG and gives nothing here.

        ``Loaders.__init__`` runs ``saltutil.sync_all()`` (30 s in the guest) to fill the extension
        cache from the file roots; the modules come from ``module_dirs`` instead, and there are
        no file roots to sync. Grains are computed once: the guest's do not change.
        """

        _skip_sync = False
        _lane_grains = None

        def __init__(self, opts, loaded_base_name=None):
            self._skip_sync = True
            try:
                super().__init__(opts, loaded_base_name)
            finally:
                self._skip_sync = False

        @property
        def modules(self):
            modules = Loaders.modules.fget(self)
            if self._skip_sync:
                modules._dict["saltutil.sync_all"] = no_sync  # noqa: SLF001
            return modules

        @property
        def grains(self):
            if self._lane_grains is None:
                self._lane_grains = Loaders.grains.fget(self)
            return self._lane_grains

    return LaneLoaders


@pytest.fixture(scope="session")
def loaders(salt_factories, tmp_path_factory):
    """In-process Salt loaders for the repository's modules, as in tests/functional.

    Building them costs ~20 s under TCG once per session (``salt-call`` would cost 12-17 s per
    call); each call is then 0.02-0.5 s. Call inside a namespace:
    ``ns.call(lambda: loaders.modules.lvs_realserver.audit())``.
    """
    factory = salt_factories.salt_minion_daemon(
        "kernel-lane",
        overrides={
            "file_client": "local",
            # the loader looks in <dir>/_modules and <dir>/_states: the repository as shipped
            "module_dirs": [str(REPO)],
            # persistence paths are passed per call; these catch any call that forgets
            "lvs_realserver": {
                k: str(tmp_path_factory.mktemp("unused") / k)
                for k in ("state_file", "sysctl_file", "vip_file", "unit_file")
            },
        },
    )
    return _lane_loaders_class()(factory.config.copy())
