"""The README's lab on a kernel with IPVS: it must pick the real director (the lvs_director state
on lb1) over the nftables stand-in, say so, and meet every expectation."""

import os
import subprocess
import sys

import pytest

from lab.netlab import REPO

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def test_the_lab_uses_a_real_ipvs_director_when_the_kernel_has_one():
    # salt-call takes 12-17 s under emulation, a sync_all minutes: raise the lab's bound
    env = dict(os.environ, LAB_SALT_TIMEOUT="1500")
    proc = subprocess.run([sys.executable, "-m", "lab"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=2400)
    out = proc.stdout
    assert "director: real IPVS, configured by the lvs_director state on lb1" in out, out
    assert "[ok  ] director: lvs_director.status on lb1" in out, out
    assert "[ok  ] idempotent lb1" in out, out
    assert proc.returncode == 0 and "RESULT: all" in out, out + proc.stderr
