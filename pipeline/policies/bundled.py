"""Where the default policies are: the demo policies ship inside the package, like the demo model.

``clipguard worker``, ``clipguard scan`` and the settings all ask :func:`default_policies`, so a
default run finds the same files from any working directory. The demo policies
(``pipeline/policies/data/demo/``: ``red-triangle``, ``spam-text`` and their regression
examples) are package data, calibrated for ``clipguard-demo``. Any other model's default is the
``policies/`` folder of the current directory, else the one beside a source checkout of
clipguard (its uncalibrated starting points); an installed package ships no such folder.

Importing this module loads nothing but the standard library.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Final

from pipeline.errors import ConfigError

__all__ = ["DEMO_POLICIES", "POLICIES_FOLDER", "default_policies"]

# The package folder, not a copy: ``clipguard policy test`` and the worker's accuracy guard read
# the regression examples beside the YAML files.
DEMO_POLICIES: Final = Path(str(resources.files("pipeline.policies") / "data" / "demo"))
# The folder name looked up for a model other than the demo model.
POLICIES_FOLDER: Final = Path("policies")


def default_policies(demo: bool) -> Path:
    """The policies a run uses when none are named: :data:`DEMO_POLICIES` for the demo model;
    otherwise ``policies/`` in the current directory, else beside the clipguard checkout.

    Raises :class:`~pipeline.errors.ConfigError` when the demo policies are missing from the
    installation, or no ``policies/`` folder is found for another model.
    """
    if demo:
        if not DEMO_POLICIES.is_dir():
            raise ConfigError(f"the bundled demo policies are missing: {DEMO_POLICIES}")
        return DEMO_POLICIES
    checkout = Path(__file__).resolve().parents[2]  # pipeline/policies/bundled.py -> checkout
    for base in (Path.cwd(), checkout):
        if (base / POLICIES_FOLDER).is_dir():
            return base / POLICIES_FOLDER
    raise ConfigError(f"no {POLICIES_FOLDER}/ folder here or beside clipguard: name the policies")
