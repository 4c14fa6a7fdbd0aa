"""Session-wide test setup.

Three promises, kept here so no single test has to remember them:

1. The host's network namespace is never touched. Before pytest starts any thread (the Salt log
   server, the event listener), :func:`pytest_configure` moves the whole pytest process into a
   fresh namespace of its own. A test that forgets to create a namespace changes that throwaway
   one, not the machine. Daemons and ``salt-call`` processes inherit it.
2. Every namespace a test makes is deleted on every exit path (pass, fail, error, Ctrl-C), and the
   processes started inside it are ended with it (``lab.netns`` does this).
3. Nothing is written outside temporary folders: Salt's root_dir, the minion's persistence files
   (``lvs_realserver:`` paths), everything.

Tests need root (namespaces, /proc/sys writes, netlink). Without it the session stops with a
usage error instead of skipping: a green run that tested nothing would be a lie.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # pytest.ini sets pythonpath too; this covers `-c other.ini`
    sys.path.insert(0, str(REPO_ROOT))

from lab import netns as labns  # noqa: E402  (needs the sys.path line above)

# lab.netns replaces SIGINT with "clean up and die". Inside pytest, Ctrl-C should instead raise
# KeyboardInterrupt so fixture teardown stops the Salt daemons and deletes the namespaces in order;
# the atexit cleanup in lab.netns still catches whatever is left.
if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Per-interface ARP sysctls of the host, checked before and after the session.
_HOST_ARP_KEYS = ("arp_ignore", "arp_announce")


class SessionNetns:
    """The namespace pytest itself runs in, named so the lab can plug a veth into it.

    Registered with lab.netns' cleanup list in place of the plain ``Netns`` that ``enter()``
    returned: ``Netns.delete()`` SIGKILLs every process in the namespace, which for this one
    includes pytest itself (exit code 137 instead of pytest's). This version ends every *other*
    process in it (all of them were started by this session) and only then drops the name.
    """

    def __init__(self, name: str, path: str, owned: bool):
        self.name = name
        self.path = path
        self.owned = owned  # False: the caller's namespace, only named by us
        self.pid = os.getpid()

    def __repr__(self) -> str:
        return f"SessionNetns({self.name!r})"

    def delete(self) -> None:
        if self in labns._created:  # noqa: SLF001 - see the class docstring
            labns._created.remove(self)  # noqa: SLF001
        if not self.owned:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)
            return
        pids = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            if int(pid) == self.pid:
                continue
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)


_session_netns: SessionNetns | None = None
_host_netns_fd: int | None = None  # an open handle on the namespace we started in (read-only use)
_host_arp_before: dict | None = None


def _in_host_netns() -> bool:
    try:
        return labns.in_host_netns()
    except PermissionError:
        # Some VMs hide /proc/1/ns/net even from root. When in doubt, fence: entering a fresh
        # namespace is always safe, skipping it might not be.
        return True


def _read_arp_sysctls() -> dict:
    base = pathlib.Path("/proc/sys/net/ipv4/conf")
    return {
        f"{iface.name}/{key}": (iface / key).read_text().strip()
        for iface in sorted(base.iterdir())
        for key in _HOST_ARP_KEYS
        if (iface / key).exists()
    }


def _read_host_state() -> dict:
    """ARP sysctls and addresses of the namespace this process is in (used in the host's)."""
    links = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, check=True).stdout)
    return {
        "sysctl": _read_arp_sysctls(),
        # IPv4 everywhere and anything on lo: where a VIP would land if a test escaped. (Global
        # IPv6 addresses elsewhere may legitimately come and go, e.g. privacy addresses.)
        "addrs": sorted(
            f"{link['ifname']} {a['local']}/{a['prefixlen']}"
            for link in links
            for a in link.get("addr_info", [])
            if a.get("family") == "inet" or link["ifname"] == "lo"
        ),
    }


def host_state() -> dict:
    """Read the starting (host) namespace's ARP sysctls and addresses without moving pytest."""
    if _host_netns_fd is None:
        return _read_host_state()
    return labns.call_in_netns(f"/proc/self/fd/{_host_netns_fd}", _read_host_state)


def _other_threads() -> int:
    return len(os.listdir("/proc/self/task")) - 1


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    global _session_netns, _host_netns_fd, _host_arp_before
    if os.geteuid() != 0:
        raise pytest.UsageError(
            "saltext-lvs tests must run as root: they create network namespaces, write "
            "/proc/sys and talk netlink inside them. Run `sudo ./tests/run`."
        )
    if _session_netns is not None:  # configure called twice (pytester): already fenced
        return
    if _in_host_netns():
        if _other_threads():
            raise pytest.UsageError(
                f"cannot fence the test run into its own network namespace: {_other_threads()} "
                "other thread(s) already run, and setns() moves only the calling thread. "
                "Some plugin started a thread before tests/conftest.py; run with -p no:<plugin>."
            )
        _host_netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        _host_arp_before = _read_host_state()
        entered = labns.enter("pytest")
        _session_netns = SessionNetns(entered.name, entered.path, owned=True)
        labns._created[labns._created.index(entered)] = _session_netns  # noqa: SLF001
    else:
        # Started inside a namespace the caller chose (e.g. `ip netns exec X pytest`): stay
        # there, but give it a name of ours so the lab can attach to it (removed at exit).
        name = labns.unique_name("pytest")
        subprocess.run(["ip", "netns", "attach", name, str(os.getpid())], check=True)
        _session_netns = SessionNetns(name, f"/run/netns/{name}", owned=False)
        labns._created.insert(0, _session_netns)  # noqa: SLF001 - removed last
        _host_arp_before = None
    config.stash[session_netns_key] = _session_netns
    # Leftovers (a test that crashed mid-way) still die with their namespaces, and pytest's own
    # namespace goes last.
    config.add_cleanup(labns.cleanup_all)


session_netns_key = pytest.StashKey[SessionNetns]()


def pytest_unconfigure(config: pytest.Config) -> None:
    # Salt's temporary console handler queues every record in this process and writes them out
    # at exit to the stderr it saw when Salt was imported: pytest's capture file, closed by then.
    # The result is dozens of "--- Logging error --- ValueError: I/O operation on closed file"
    # blocks after the summary. The same records already reached pytest's log capture; drop them.
    for handler in logging.root.handlers:
        if type(handler).__name__ == "DeferredStreamHandler":
            handler.stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115


def pytest_report_header(config: pytest.Config) -> list[str]:
    ns = config.stash.get(session_netns_key, None)
    where = f"own namespace {ns.name}" if ns and ns.owned else "the caller's namespace"
    versions = []
    for dist in ("salt", "pyroute2", "pytest-salt-factories"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} missing")
    return [
        f"saltext-lvs: running as uid {os.geteuid()} in {where}; repo {REPO_ROOT}",
        f"saltext-lvs: {', '.join(versions)}; kernel {os.uname().release}",
    ]


_FOLDER_MARKERS = {"unit", "functional", "integration", "kernel"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests get the marker of their folder (tests/unit -> unit, ...) so `-m unit` just works.

    ``kernel`` tests need IPVS/ipip/dummy and run only in the kernel lane's VM (LVT_GUEST=1,
    tools/kernel-lane/run-tests); a host session deselects them wherever they live. Deselected,
    not skipped: `./tests/run -m kernel` on a host then runs nothing, which tests/run fails.
    """
    tests_dir = REPO_ROOT / "tests"
    for item in items:
        try:
            rel = pathlib.Path(item.path).resolve().relative_to(tests_dir)
        except ValueError:
            continue
        marker = rel.parts[0] if len(rel.parts) > 1 else None
        if marker in _FOLDER_MARKERS and not item.get_closest_marker(marker):
            item.add_marker(marker)
    if os.environ.get("LVT_GUEST") != "1":
        kernel = [item for item in items if item.get_closest_marker("kernel")]
        if kernel:
            config.hook.pytest_deselected(items=kernel)
            items[:] = [item for item in items if not item.get_closest_marker("kernel")]


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def session_netns(pytestconfig: pytest.Config) -> SessionNetns:
    """The namespace pytest (and every daemon it starts) runs in; never the host's."""
    return pytestconfig.stash[session_netns_key]


@pytest.fixture(scope="session", autouse=True)
def _host_untouched():
    """Fail the session if the host's ARP sysctls or addresses changed while it ran.

    Only reads: a forked child enters the starting namespace through a file descriptor that was
    opened before pytest left it.
    """
    yield
    if _host_arp_before is None:
        return
    after = host_state()
    assert after == _host_arp_before, (
        "the host network namespace changed while the tests ran (ARP sysctls or addresses): "
        "a test escaped its namespace, or another process on this machine changed the host"
    )


@pytest.fixture(scope="session")
def salt_factories_config(tmp_path_factory) -> dict:
    """Every daemon's root_dir (pki, cache, logs, sockets) lives in the session's temp dir."""
    return {
        "root_dir": tmp_path_factory.mktemp("salt-factories"),
        # 2-core machines shared with other work: a minion can take 10-20 s to start.
        "start_timeout": 120,
    }


class NetnsFactory:
    """Makes throwaway namespaces (``lab.netns.Netns``, lo up) and deletes them all at cleanup."""

    _seq = itertools.count(1)

    def __init__(self):
        self.made: list[labns.Netns] = []

    def __call__(self, tag: str = "t") -> labns.Netns:
        # Names must be unique per run: the same tag in two tests must not collide.
        ns = labns.Netns(f"{tag}{next(self._seq)}")
        self.made.append(ns)
        return ns

    def cleanup(self) -> None:
        while self.made:
            self.made.pop().delete()


@pytest.fixture
def netns():
    """Factory for namespaces that live as long as the test: ``ns = netns("rs1")``."""
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def module_netns():
    """Like ``netns``, for module-scoped fixtures (a topology shared by a module's tests)."""
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


def lvs_realserver_opts(directory: os.PathLike) -> dict:
    """Minion config that points all four persistence paths of the module into ``directory``."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "lvs_realserver": {
            "state_file": str(directory / "lvs-realserver.state.json"),
            "sysctl_file": str(directory / "99-lvs-realserver.conf"),
            "vip_file": str(directory / "lvs-realserver-vips"),
            "unit_file": str(directory / "lvs-realserver.service"),
        }
    }


@pytest.fixture
def lvs_opts(tmp_path) -> dict:
    """``lvs_realserver:`` minion config for one test, all paths under its tmp_path."""
    return lvs_realserver_opts(tmp_path / "lvs-persist")

