"""The four top-level names (`sim`, `kernels`, `traces`, `bench`) are also names of unrelated PyPI
packages; these tests make sure each one resolves to this repository."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["sim", "kernels", "traces", "bench"])
def test_package_imports_from_this_repository(name: str) -> None:
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == REPO / name


def test_kernels_package_has_no_version_attribute() -> None:
    # transformers probes an installed HF `kernels` package through `kernels.__version__`.
    kernels = importlib.import_module("kernels")
    assert not hasattr(kernels, "__version__")


def _cache_dir_in_subprocess(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | env_extra
    code = "import sim, os; print(os.environ['NUMBA_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_numba_cache_dir_is_keyed_by_package_source(tmp_path: Path) -> None:
    from sim import numba_env

    chosen = _cache_dir_in_subprocess({"XDG_CACHE_HOME": str(tmp_path)})
    assert Path(chosen) == tmp_path / "moesim" / "numba" / numba_env.source_hash()


def test_users_numba_cache_dir_is_respected(tmp_path: Path) -> None:
    assert _cache_dir_in_subprocess({"NUMBA_CACHE_DIR": str(tmp_path / "mine")}) == str(tmp_path / "mine")
