"""Contract tests over the registries: every registered policy, prefetcher and weight format, and
every model profile in ``conf/model``, is picked up here automatically, so adding one is adding its
file. Where another test keeps a list by hand, a test here fails for an item missing from it and
says where to add it."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import yaml
from moesim.kernels.formats import get_format, list_formats
from moesim.sim.policies import REQUIRED_ATTRS, get_policy, list_policies
from moesim.sim.prefetch import get_prefetcher, list_prefetchers
from moesim.sim.profiles import CONF_DIR, list_profiles, load_model_profile
from moesim.traces.synth import MODEL_SHAPES
from policy_support import ADVANCED, CORE

POLICIES = list_policies()
PREFETCHERS = list_prefetchers()
FORMATS = list_formats()
MODELS = list_profiles("model")
# Formats reached through another one's config: MLX's scale-precision variants of a format
# (``<format>-f16``, ``<format>-f32``) are chosen by ``quant.format`` overrides, not config files.
VARIANT_SUFFIXES = ("-f16", "-f32")


def conf_file(group: str, name: str) -> dict[str, Any]:
    path = CONF_DIR / group / f"{name}.yaml"
    assert path.exists(), f"{name!r} has no config file: add conf/{group}/{name}.yaml (copy a neighbour)"
    return yaml.safe_load(path.read_text())


# ---- policies ------------------------------------------------------------------------------------

def test_registries_are_sorted_and_not_empty() -> None:
    for names in (POLICIES, PREFETCHERS, FORMATS, MODELS):
        assert names and names == sorted(names)


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_has_its_entry_points_and_its_config(name: str) -> None:
    module = get_policy(name)
    assert module.NAME == name and isinstance(module.PARAMS, dict)
    for attr in REQUIRED_ATTRS[2:]:
        assert callable(getattr(module, attr)), (name, attr)
    conf = conf_file("policy", name)
    assert conf["name"] == name
    assert set(conf["params"] or {}) == set(module.PARAMS), f"conf/policy/{name}.yaml lists other knobs than PARAMS"


@pytest.mark.parametrize("name", POLICIES)
def test_a_policy_reading_the_layer_context_says_so(name: str) -> None:
    module = get_policy(name)
    reads = '"_num_layers"' in inspect.getsource(module)
    assert reads == bool(getattr(module, "LAYER_CLOCK", False)), (
        f"{module.__name__} {'reads' if reads else 'does not read'} _num_layers: set LAYER_CLOCK = {reads} there")


def test_every_policy_has_by_hand_counts() -> None:
    missing = sorted(set(POLICIES) - set(CORE) - set(ADVANCED))
    assert not missing, (f"policies {missing} have no by-hand test: add them to CORE or ADVANCED in "
                         "tests/policy_support.py and count a hand-made trace in the matching test file")
    assert sorted(CORE + ADVANCED) == POLICIES


# ---- prefetchers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PREFETCHERS)
def test_every_prefetcher_has_its_entry_points_and_its_config(name: str) -> None:
    module = get_prefetcher(name)
    assert module.NAME == name and isinstance(module.PARAMS, dict)
    assert callable(module.start) and callable(module.reference)
    conf = conf_file("prefetch", name)
    assert conf["name"] == name
    assert set(conf["params"] or {}) == set(module.PARAMS), f"conf/prefetch/{name}.yaml lists other knobs than PARAMS"


# ---- weight formats ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FORMATS)
def test_every_format_is_found_by_its_name_and_has_a_config(name: str) -> None:
    assert get_format(name).name == name
    base = next((name[: -len(s)] for s in VARIANT_SUFFIXES if name.endswith(s)), name)
    assert base in FORMATS
    assert conf_file("quant", base)["format"] == base


def test_every_quant_config_names_its_registered_format() -> None:
    for path in sorted((CONF_DIR / "quant").glob("*.yaml")):
        fmt = yaml.safe_load(path.read_text())["format"]
        assert fmt == path.stem and fmt in FORMATS, path


# ---- model profiles and the synthetic generator's shapes ----------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_every_model_profile_has_the_synthetic_shape_of_its_config(name: str) -> None:
    assert name in MODEL_SHAPES, f"conf/model/{name}.yaml has no synthetic shape: add it to MODEL_SHAPES in traces/synth.py"
    m, shape = load_model_profile(name), MODEL_SHAPES[name]
    assert (shape.num_layers, shape.num_experts, shape.top_k) == (m.num_moe_layers, m.num_experts, m.top_k)


def test_every_synthetic_shape_has_a_model_profile() -> None:
    assert sorted(MODEL_SHAPES) == MODELS
