"""saltext-lvs: LVS direct-routing and IP-tunnel clusters for Salt.

The loader modules live where a Salt file root expects them (``_modules``, ``_states``,
``_beacons``), so the repository works as a file root with ``saltutil.sync_all``. ``pip install``
ships the same files as the package ``saltext_lvs`` (``saltext_lvs/modules``, ``/states``,
``/beacons``) and registers it in the ``salt.loader`` entry point group: Salt then finds them
with no sync. Both deployments use these very files; nothing is generated or copied by hand.
"""

import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).resolve().parent
LOADER_DIRS = {"modules": "_modules", "states": "_states", "beacons": "_beacons",
               "runners": "_runners"}
# Salt's loader lists the files of these folders itself: they are not Python packages and must
# not get an __init__.py (a synced _modules/__init__.py would be loaded as a module).
PACKAGES = [f"saltext_lvs.{kind}" for kind, folder in LOADER_DIRS.items()
            if any((HERE / folder).glob("*.py"))]

setup(
    name="saltext-lvs",
    version="0.1.0",
    description="Salt extension for LVS (IPVS) DR and TUN clusters: real servers that never "
    "answer ARP for the VIP, directors, drift remediation",
    long_description=(HERE / "README.md").read_text(encoding="utf-8")
    if (HERE / "README.md").exists()
    else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # Salt itself is the host program (a minion's onedir or a venv); it is not pulled in here so
    # that `salt-pip install saltext-lvs` never tries to rebuild Salt.
    install_requires=["pyroute2>=0.9.7"],
    packages=PACKAGES,
    package_dir={f"saltext_lvs.{kind}": folder for kind, folder in LOADER_DIRS.items()},
    entry_points={"salt.loader": ["saltext_lvs = saltext_lvs"]},
    classifiers=[
        "Framework :: Salt",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
