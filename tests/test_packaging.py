"""How the repository's folders install and import: under one root, ``moesim``, beside Hugging Face's
``kernels`` (which transformers requires) without either taking the other's files, and with one numba
cache rule for every jitted module.

The design (see ``pyproject.toml``): ``sim/``, ``kernels/``, ``traces/``, ``bench/`` and ``conf/``
install as ``moesim.sim`` ... ``moesim.conf``; ``kernels/`` is not a regular package, so even with
the repository root first on ``sys.path`` a plain ``import kernels`` finds Hugging Face's.
"""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("sim", "kernels", "traces", "bench")
SCRIPTS = ("moesim", "moesim-report", "moesim-analyze", "moesim-trace", "moesim-record", "moesim-replay",
           "moesim-measure", "moesim-fidelity")


def _py_files(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((REPO / f).rglob("*.py")) if "__pycache__" not in p.parts]


def _run(args: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else os.environ.copy())
    assert done.returncode == 0, f"{args} in {cwd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


# ---- the layout the wheel and the editable install share --------------------------------------

def test_every_package_folder_is_listed_in_pyproject() -> None:
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {p.parent.relative_to(REPO).as_posix() for p in _py_files(*ROOMS)} | {"conf"}
    expected = {"moesim." + f.replace("/", ".") for f in folders} | {"moesim.traces.presets"}
    assert set(setup["packages"]) == expected, "pyproject.toml [tool.setuptools] packages is out of date"
    assert setup["package-dir"] == {f"moesim.{r}": r for r in (*ROOMS, "conf")}


def test_kernels_folder_is_not_a_regular_package() -> None:
    # A regular package at the repository root would shadow Hugging Face's `kernels` whenever the
    # root is on sys.path (python -m, python -c, pytest); a namespace folder never does.
    assert not (REPO / "kernels" / "__init__.py").exists()


def test_code_imports_the_packages_only_under_moesim() -> None:
    bad = []
    for path in _py_files(*ROOMS, "tests"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                # `import kernels as hub` is how the tests name Hugging Face's package on purpose.
                names = [a.name for a in node.names if (a.name, a.asname) != ("kernels", "hub")]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in ROOMS]
    assert not bad, "import these as moesim.<package>:\n" + "\n".join(bad)


def test_kernels_import_nothing_from_the_floors_above() -> None:
    # The formats (and the few helpers every floor shares: jit, files, messages) are the lowest
    # floor: the traces, the simulator and the reports use them, never the reverse.
    bad = []
    for path in _py_files("kernels"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            bad += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names
                    if n.startswith(("moesim.sim", "moesim.bench", "moesim.traces"))]
    assert not bad, "kernels/ imports from above it:\n" + "\n".join(bad)


def test_jitted_modules_compile_only_through_the_package_njit() -> None:
    bad = []
    for path in _py_files("sim", "kernels", "traces"):
        if path == REPO / "kernels" / "jit.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "numba":
                bad += [f"{path.relative_to(REPO)}:{node.lineno}: from numba import {a.name}"
                        for a in node.names if a.name in ("njit", "jit", "generated_jit", "vectorize")]
            if isinstance(node, ast.Attribute) and node.attr in ("njit", "jit") and \
                    isinstance(node.value, ast.Name) and node.value.id == "numba":
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: numba.{node.attr}")
    assert not bad, "use moesim.kernels.jit.njit:\n" + "\n".join(bad)


# ---- numba's cache: one location, keyed by every jitted source, whatever imported numba first ----

def _all_modules() -> list[str]:
    names = []
    for room in ("sim", "kernels", "traces"):
        for info in pkgutil.walk_packages([str(REPO / room)], prefix=f"moesim.{room}."):
            names.append(info.name)
    return [n for n in names if not n.endswith("__main__")]


def test_every_cached_function_is_located_under_the_keyed_cache_root() -> None:
    from moesim.kernels.jit import PackageCacheLocator, cache_root
    from numba.core.registry import CPUDispatcher

    checked = 0
    for name in _all_modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if not isinstance(obj, CPUDispatcher) or getattr(obj.py_func, "__module__", None) != name:
                continue
            locator = obj._cache._impl._locator  # every njit here caches; a NullCache has no _impl
            assert isinstance(locator, PackageCacheLocator), f"{name}.{attr} uses {type(locator).__name__}"
            assert Path(locator.get_cache_path()).is_relative_to(cache_root()), f"{name}.{attr}"
            checked += 1
    assert checked > 150  # every policy, codec, trace helper and the engine's loops


_PROBE = """
import numba, numpy as np                      # numba first: the package must not depend on the order
from moesim.traces.synth_kernel import __name__ as _t
from moesim.sim.policies import lru
from moesim.kernels.jit import cache_root
import moesim.traces.synth_kernel as tk
disp = [v for v in vars(tk).values() if isinstance(v, numba.core.registry.CPUDispatcher)][0]
print(cache_root()); print(disp._cache._cache_path)
"""


@pytest.mark.parametrize("user_dir", [False, True])
def test_cache_root_holds_whatever_was_imported_first(tmp_path: Path, user_dir: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | {"XDG_CACHE_HOME": str(tmp_path)}
    if user_dir:
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    root, traces_path = _run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=env).split()
    from moesim.kernels.jit import source_hash

    base = tmp_path / "mine" / "moesim" if user_dir else tmp_path / "moesim" / "numba"
    assert Path(root) == base / source_hash()
    assert Path(traces_path) == Path(root) / "traces"


def test_source_hash_covers_every_jitted_package(tmp_path: Path) -> None:
    from moesim.kernels import jit

    for room in jit.JITTED_PACKAGES:
        shutil.copytree(REPO / room, tmp_path / room, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; sys.path.insert(0, {root!r}); import importlib.util as u; "
            "s = u.spec_from_file_location('j', {root!r} + '/kernels/jit.py'); m = u.module_from_spec(s); "
            "s.loader.exec_module(m); print(m.source_hash())")
    hashes = [_run([sys.executable, "-c", code.format(root=str(tmp_path))], cwd=tmp_path).strip()]
    for edited in ("traces/synth_kernel.py", "sim/policies/_lists.py", "kernels/formats/_mx_numba.py"):
        with open(tmp_path / edited, "a") as fh:
            fh.write("\n# edited\n")
        hashes.append(_run([sys.executable, "-c", code.format(root=str(tmp_path))], cwd=tmp_path).strip())
    assert len(set(hashes)) == len(hashes)


# ---- living beside transformers and Hugging Face's `kernels` -----------------------------------

_CLASH_PROBE = """
import os, sys
os.environ.setdefault("USE_HUB_KERNELS", "0"); os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import transformers.integrations.hub_kernels  # imports Hugging Face's `kernels`
import kernels
from moesim.kernels.formats import get_format
import moesim.kernels.formats as ours
hub, mine = os.path.realpath(kernels.__file__), os.path.realpath(ours.__file__)
ours_dir = os.path.join(os.path.realpath(sys.argv[1]), "kernels")
assert not hub.startswith(ours_dir + os.sep), f"`kernels` resolved to this repository ({hub}), not Hugging Face's"
assert "site-packages" in hub, f"`kernels` resolved to {hub}, not an installed package"
assert not mine.startswith(os.path.dirname(hub) + os.sep), f"moesim.kernels resolved to Hugging Face's files ({mine})"
w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
fmt = get_format("mxfp4")
back = fmt.decode(fmt.encode(w))
assert back.shape == w.shape and np.abs(back - w).max() < 1.0
print(hub); print(mine)
"""


@pytest.fixture(scope="module")
def transformers_installed() -> None:
    pytest.importorskip("transformers", reason="the `record` extra is not installed")
    pytest.importorskip("kernels", reason="Hugging Face's `kernels` is not installed")


@pytest.mark.parametrize("where", ["repo-root", "elsewhere"])
def test_transformers_and_moesim_resolve_to_their_own_files(transformers_installed: None, where: str,
                                                            tmp_path: Path) -> None:
    cwd = REPO if where == "repo-root" else tmp_path
    # `python -c` puts the current folder first on sys.path: the case that used to shadow.
    hub, mine = _run([sys.executable, "-c", _CLASH_PROBE, str(REPO)], cwd=cwd).split()
    assert not Path(hub).is_relative_to(REPO / "kernels") and Path(mine).is_relative_to(REPO / "kernels")


def test_in_process_imports_do_not_cross(transformers_installed: None) -> None:
    import moesim.kernels.formats as ours
    import transformers.integrations.hub_kernels  # noqa: F401

    import kernels as hub

    assert not Path(hub.__file__).resolve().is_relative_to(REPO / "kernels"), (
        f"`import kernels` gave this repository's folder ({hub.__file__}); transformers needs Hugging "
        "Face's `kernels`: see the packaging note in pyproject.toml")
    assert Path(ours.__file__).resolve().is_relative_to(REPO / "kernels"), (
        f"moesim.kernels resolved to {ours.__file__}, not this repository")


def _tiny_model(tmp_path: Path) -> Path:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tf.MixtralConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=2, intermediate_size=24, max_position_embeddings=32,
                              num_local_experts=4, num_experts_per_tok=2)
    model = tf.MixtralForCausalLM(config)
    path = tmp_path / "tiny-mixtral"
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("where", ["repo-root", "elsewhere"])
def test_recorder_records_beside_hub_kernels(transformers_installed: None, tmp_path: Path, where: str) -> None:
    model = _tiny_model(tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("[1, 2, 3]\n[4, 5]\n")
    out = tmp_path / "trace.safetensors"
    cwd = REPO if where == "repo-root" else tmp_path
    env = os.environ | {"USE_HUB_KERNELS": "0", "HF_HUB_OFFLINE": "1"}
    _run([sys.executable, "-m", "moesim.traces.record_cli", f"model={model}", f"prompts={prompts}", f"out={out}",
          "max_new_tokens=3"], cwd=cwd, env=env)
    from moesim.traces.io import load

    trace = load(out)
    assert trace.num_layers == 2 and trace.num_experts == 4 and trace.meta.top_k == 2
    assert trace.num_steps > 0 and set(np.unique(trace.request_id)) == {0, 1}


# ---- a wheel, installed into a fresh environment beside transformers --------------------------

def _record_paths(site: Path) -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for record in site.glob("*.dist-info/RECORD"):
        with open(record, newline="") as fh:
            for row in csv.reader(fh):
                path = os.path.normpath(row[0])
                if path.startswith(".."):  # scripts under bin/ are checked by running them
                    continue
                owners.setdefault(path, []).append(record.parent.name)
    return owners


def _unchanged_files(site: Path, dist_info: Path) -> None:
    with open(dist_info / "RECORD", newline="") as fh:
        for path, digest, _ in csv.reader(fh):
            if not digest or path.startswith(".."):
                continue
            algo, want = digest.split("=", 1)
            got = base64.urlsafe_b64encode(hashlib.new(algo, (site / path).read_bytes()).digest()).rstrip(b"=")
            assert got.decode() == want, f"{path} of {dist_info.name} was overwritten"


@pytest.mark.integration
def test_wheel_installs_beside_hub_kernels_and_its_scripts_run(transformers_installed: None, tmp_path: Path) -> None:
    import kernels as hub

    wheels = tmp_path / "wheels"
    # Built from a copy of the tracked layout: setuptools writes build/ and *.egg-info beside the source.
    src = tmp_path / "src"
    src.mkdir()
    for name in (*ROOMS, "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels),
          str(src)], cwd=tmp_path)
    (wheel,) = wheels.glob("moesim-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    # Hugging Face's `kernels` goes into the same site-packages as the wheel, installed as pip left it
    # (files and RECORD); the rest of the dependencies are reached through a path entry.
    hub_site = Path(hub.__file__).resolve().parents[1]
    (hub_dist,) = hub_site.glob("kernels-*.dist-info")
    shutil.copytree(hub_site / "kernels", site / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(hub_dist, site / hub_dist.name)
    (site / "zz-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)

    owners = _record_paths(site)
    shared = {p: o for p, o in owners.items() if len(o) > 1}
    assert not shared, f"files owned by two distributions: {shared}"
    assert not [p for p, o in owners.items() if o[0].startswith("moesim-") and p.split(os.sep)[0] != "moesim"
                and not p.startswith("moesim-")]
    _unchanged_files(site, site / hub_dist.name)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    # The wheel's files are the same bytes at the same relative paths, so it shares the compiled cache.
    env |= {"HF_HUB_OFFLINE": "1", "USE_HUB_KERNELS": "0"}
    probe = _run([str(py), "-c", _CLASH_PROBE, str(REPO)], cwd=tmp_path, env=env).split()
    assert Path(probe[0]) == (site / "kernels" / "__init__.py").resolve()
    assert Path(probe[1]).is_relative_to(site / "moesim")
    for script in SCRIPTS:
        out = _run([str(venv / "bin" / script), "--help"], cwd=tmp_path, env=env)
        assert out.strip(), script
    # The app finds its configuration inside the installed package, and a real single run works.
    run_dir = tmp_path / "run"
    _run([str(venv / "bin" / "moesim"), "trace.requests=1", f"trace.cache_dir={tmp_path / 'traces'}", f"hydra.run.dir={run_dir}"],
         cwd=tmp_path, env=env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok", metrics.get("error")
