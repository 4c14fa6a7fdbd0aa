"""Throwaway network namespaces for the lab, the tests and the benchmarks.

Every namespace gets a per-run unique name and is removed on every exit path: normal exit,
an exception, Ctrl-C (SIGINT), SIGTERM and SIGHUP. Nothing here touches the namespace of the
calling process, except :func:`enter`, which moves the *calling process* into a namespace
(used to fence the whole pytest run off the host).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import pickle
import signal
import subprocess
import sys
import traceback
import uuid

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_created: list["Netns"] = []
RUN_TAG = f"lvs{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"


def unique_name(tag: str) -> str:
    """A namespace name that no other run (parallel CI, another session) can use."""
    return f"{RUN_TAG}-{tag}"


def setns(path: str) -> None:
    """Move the calling thread into the network namespace bound at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def current_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def in_host_netns() -> bool:
    """True when this process shares the network namespace of PID 1 (the host's).

    Some VMs hide /proc/1/ns/net even from root: when in doubt, say yes (callers then fence
    themselves off in a namespace of their own, which is always safe)."""
    try:
        return current_netns_inode() == os.stat("/proc/1/ns/net").st_ino
    except PermissionError:
        return True


class Netns:
    """A named network namespace (``ip netns``) with ``lo`` up."""

    def __init__(self, tag: str):
        self.name = unique_name(tag)
        self.path = f"/run/netns/{self.name}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        _created.append(self)
        self.ip("link", "set", "lo", "up")

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 120, **kw):
        """Run a command inside the namespace; returns CompletedProcess with text output."""
        kw.setdefault("capture_output", True)
        proc = subprocess.run(self.exec_argv(*argv), text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"in {self.name}: {' '.join(argv)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.exec_argv(*argv), **kw)

    def ip(self, *args: str, check: bool = True):
        return self.run("ip", *args, check=check)

    def sysctl(self, key: str) -> str:
        """Read a sysctl inside the namespace, e.g. ``net/ipv4/conf/eth0/arp_ignore``."""
        return self.call(_read_proc_sys, key)

    def write_sysctl(self, key: str, value) -> None:
        self.call(_write_proc_sys, key, str(value))

    def call(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` in a forked child that has entered this namespace.

        The return value (or exception) comes back pickled. This is how in-process Salt loader
        calls run against a namespace without moving the test process itself.
        """
        return call_in_netns(self.path, fn, *args, **kwargs)

    def delete(self) -> None:
        if self not in _created:
            return
        _created.remove(self)
        # End the processes we started in it (every process in a namespace of ours is ours).
        pids = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            if pid == str(os.getpid()):  # the namespace enter() moved us into
                continue
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


def veth_namespace(tag: str, dev: str, cidr: str) -> Netns:
    """A new namespace with lo up and a veth ``dev`` (its peer ``<dev>peer`` in the same
    namespace, so the link is up without a second namespace) holding ``cidr``."""
    ns = Netns(tag)
    try:
        batch = (f"link add {dev} type veth peer name {dev}peer\n"
                 f"address add {cidr} dev {dev}\n"
                 f"link set {dev} up\nlink set {dev}peer up\n")
        subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input=batch, text=True, check=True,
                       capture_output=True)
    except BaseException:
        ns.delete()
        raise
    return ns


def _read_proc_sys(key: str) -> str:
    with open(f"/proc/sys/{key}", encoding="ascii") as fh:
        return fh.read().strip()


def _write_proc_sys(key: str, value: str) -> None:
    with open(f"/proc/sys/{key}", "w", encoding="ascii") as fh:
        fh.write(value)


def call_in_netns(path: str, fn, *args, **kwargs):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            setns(path)
            payload = (True, fn(*args, **kwargs))
        except BaseException as exc:  # report everything, including SystemExit
            payload = (False, (exc, traceback.format_exc()))
        try:
            data = pickle.dumps(payload)
        except Exception as exc:  # unpicklable result: report it instead of hanging
            data = pickle.dumps((False, (RuntimeError(repr(exc)), traceback.format_exc())))
        with os.fdopen(write_fd, "wb") as fh:
            fh.write(data)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"child in {path} died without a result")
    ok, value = pickle.loads(data)
    if ok:
        return value
    exc, tb = value
    raise RuntimeError(f"in netns {path}:\n{tb}") from exc


def enter(tag: str = "main") -> Netns:
    """Move the calling process into a fresh namespace of its own (lo up) and return it.

    Call this before any thread starts: setns applies to the calling thread only.
    """
    ns = Netns(tag)
    setns(ns.path)
    return ns


def cleanup_all() -> None:
    for ns in list(reversed(_created)):
        ns.delete()


def _on_signal(signum, _frame):
    cleanup_all()
    # Re-raise the default behaviour so exit codes stay honest (130 for Ctrl-C and so on).
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_installed = False


def install_cleanup_handlers() -> None:
    """Remove every namespace made by this process on exit and on SIGINT/SIGTERM/SIGHUP."""
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(cleanup_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)


install_cleanup_handlers()

if __name__ == "__main__":  # pragma: no cover - manual smoke check
    with Netns("smoke") as n:
        print(n.name, n.sysctl("net/ipv4/conf/all/arp_ignore"), file=sys.stderr)
