"""Load the loader modules of this repository as plain Python modules, for unit tests and
benchmarks that call their pure functions without Salt's loader."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


def load(kind, name, **dunders):
    """Import ``_<kind>/<name>.py`` under a private name and set the given dunders on it."""
    path = REPO / f"_{kind}" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"saltext_lvs_test_{kind}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key, value in dunders.items():
        setattr(module, f"__{key}__", value)
    return module
