"""Both a wheel and the editable install expose the top-level folders under `lowbit.`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_table() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _expected_packages() -> set[str]:
    """Every folder with an __init__.py under a mapped root, named as it installs."""
    names = set()
    for pkg, folder in _setuptools_table()["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            names.add(".".join((pkg, *rel)))
    return names


def test_every_package_is_listed():
    assert set(_setuptools_table()["packages"]) == _expected_packages()


def test_editable_install_maps_top_level_folders():
    import lowbit.calib

    assert Path(lowbit.calib.__file__).resolve() == ROOT / "calib" / "__init__.py"


def test_wheel_contains_mapped_packages(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("lowbit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in _expected_packages():
        assert f"{pkg.replace('.', '/')}/__init__.py" in names, pkg
    assert "lowbit/calib/rtn.py" in names
    assert not any(n.startswith(("calib/", "tests/")) for n in names)
