"""Generic importers (expert-id arrays, router-logit dumps) and the routing rules behind them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from moesim.traces.errors import ImportFormatError
from moesim.traces.import_generic import import_expert_ids, import_router_logits
from moesim.traces.routing_rules import (
    RoutingRule,
    RoutingRuleError,
    apply_rule,
    rule_for_config,
    rule_from_name,
)
from moesim.traces.trace import PAD

LN2, LN4 = math.log(2.0), math.log(4.0)


# ---- routing rules on hand-made logits --------------------------------------------------------

def test_softmax_topk_with_and_without_renormalisation():
    logits = np.array([[0.0, LN2, LN4], [LN4, 0.0, LN2]])  # probabilities 1/7, 2/7, 4/7
    ids, w = apply_rule(logits, RoutingRule("softmax_topk", 2, renormalize=False))
    np.testing.assert_array_equal(ids, [[2, 1], [0, 2]])
    np.testing.assert_allclose(w, [[4 / 7, 2 / 7]] * 2, rtol=1e-6)
    ids, w = apply_rule(logits, RoutingRule("softmax_topk", 2, renormalize=True))
    np.testing.assert_allclose(w, [[2 / 3, 1 / 3]] * 2, rtol=1e-6)
    ids, w = apply_rule(logits, RoutingRule("topk_softmax", 2))
    np.testing.assert_array_equal(ids, [[2, 1], [0, 2]])
    np.testing.assert_allclose(w, [[2 / 3, 1 / 3]] * 2, rtol=1e-6)


def test_ties_break_towards_the_lower_expert():
    ids, _ = apply_rule(np.zeros((1, 5)), RoutingRule("softmax_topk", 3))
    np.testing.assert_array_equal(ids, [[0, 1, 2]])


def test_deepseek_v3_bias_and_groups_change_the_choice():
    # 4 experts in 2 groups {0,1}, {2,3}; sigmoid scores of these logits: ~.73, .5, .62, .62
    logits = np.array([[1.0, 0.0, 0.5, 0.5]])
    s = 1 / (1 + np.exp(-logits[0]))
    rule = RoutingRule("deepseek_v3", 2, renormalize=True, scaling=2.5, n_group=2, topk_group=1)
    # Group sums of the two best: {0,1} .73+.5=1.23 < {2,3} 1.24, so group 1 wins over the best expert.
    ids, w = apply_rule(logits, rule)
    np.testing.assert_array_equal(np.sort(ids, 1), [[2, 3]])
    np.testing.assert_allclose(w.sum(), 2.5, rtol=1e-6)
    # A bias lifting expert 1 moves the choice to group 0; weights stay the unbiased sigmoid scores.
    ids, w = apply_rule(logits, rule.with_bias([0.0, 0.2, 0.0, 0.0]))
    np.testing.assert_array_equal(ids, [[0, 1]])
    np.testing.assert_allclose(w[0], 2.5 * s[[0, 1]] / s[[0, 1]].sum(), rtol=1e-6)
    # Without groups and bias the rule is top-k of the sigmoid, i.e. of the logits.
    ids, w = apply_rule(logits, RoutingRule("deepseek_v3", 2, n_group=1, topk_group=1))
    np.testing.assert_array_equal(ids, [[0, 2]])
    np.testing.assert_allclose(w[0], s[[0, 2]], rtol=1e-6)


def test_deepseek_v2_group_limited_greedy():
    logits = np.array([[2.0, -5.0, 1.5, 1.4]])  # group max: {0,1} -> e0, {2,3} -> e2
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    greedy = RoutingRule("deepseek_v2", 2, scaling=1.0, topk_method="greedy")
    np.testing.assert_array_equal(apply_rule(logits, greedy)[0], [[0, 2]])
    limited = RoutingRule("deepseek_v2", 2, scaling=2.0, n_group=2, topk_group=1,
                          topk_method="group_limited_greedy")
    ids, w = apply_rule(logits, limited)
    np.testing.assert_array_equal(ids, [[0, 1]])  # only group 0 is allowed
    np.testing.assert_allclose(w[0], 2.0 * p[[0, 1]], rtol=1e-6)


def test_sparsemixer_weights_by_hand():
    eps = 0.01
    logits = np.array([[3.0, 2.999, 1.0, 2.0]])
    ids, w = apply_rule(logits, RoutingRule("sparsemixer", 2, jitter_eps=eps))
    np.testing.assert_array_equal(ids, [[0, 1]])
    # First: logits within 2*eps (relative to max(|x|, 3)) of 3 are 3 and 2.999 -> softmax over both.
    w1 = 1 / (1 + math.exp(2.999 - 3.0))
    # Second: expert 0 removed; within 2*eps of 2.999 only expert 1 remains -> weight 1.
    np.testing.assert_allclose(w[0], [w1, 1.0], rtol=1e-6)
    with pytest.raises(RoutingRuleError, match="exactly 2"):
        RoutingRule("sparsemixer", 3)


def test_rules_of_known_configs_and_bad_rules():
    assert rule_for_config({"model_type": "mixtral", "num_experts_per_tok": 2}).renormalize
    assert not rule_for_config({"model_type": "olmoe", "num_experts_per_tok": 8}).renormalize
    r = rule_for_config({"model_type": "qwen3_moe", "num_experts_per_tok": 8, "norm_topk_prob": True})
    assert r.name == "softmax_topk" and r.renormalize and r.weight_sum == "1"
    assert rule_for_config({"model_type": "gpt_oss", "num_experts_per_tok": 4}).name == "topk_softmax"
    v3 = rule_from_name("deepseek_v3", 8, n_group=8, topk_group=4, scaling=2.5)
    assert (v3.name, v3.n_group, v3.topk_group, v3.scaling, v3.renormalize) == ("deepseek_v3", 8, 4, 2.5, True)
    with pytest.raises(RoutingRuleError, match="no routing rule known for model_type 'llama'"):
        rule_for_config({"model_type": "llama", "num_experts_per_tok": 2})
    with pytest.raises(RoutingRuleError, match="unknown routing rule"):
        RoutingRule("argmax", 1)
    with pytest.raises(RoutingRuleError, match="do not split"):
        apply_rule(np.zeros((1, 6)), RoutingRule("deepseek_v3", 2, n_group=4, topk_group=1))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(4, 12)),
              elements=st.floats(-8, 8, width=32)), st.integers(1, 4), st.booleans())
def test_softmax_topk_matches_torch(logits, k, renorm):
    k = min(k, logits.shape[1])
    x = torch.from_numpy(logits.astype(np.float64))
    p = torch.softmax(x, -1)
    ids, w = apply_rule(logits, RoutingRule("softmax_topk", k, renormalize=renorm))
    # Exact ties may be ordered differently; compare the chosen probabilities, which are unique.
    want_w = p.topk(k, -1).values
    if renorm:
        want_w = want_w / want_w.sum(-1, keepdim=True)
    np.testing.assert_allclose(w, want_w.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.take_along_axis(p.numpy(), ids, 1).sum(1),
                               p.topk(k, -1).values.sum(-1).numpy(), rtol=1e-9)
    assert len({tuple(sorted(r)) for r in ids.tolist()}) >= 1 and all(len(set(r)) == k for r in ids.tolist())


# ---- expert ids -------------------------------------------------------------------------------

IDS = np.array([[[0, 3], [1, 2]], [[2, 1], [3, 0]], [[1, 0], [0, 3]]])  # [T=3, L=2, K=2]


def _check(trace, ids=IDS, E=4):
    np.testing.assert_array_equal(trace.experts, ids)
    assert trace.num_experts == E and trace.meta.source == "imported:expert-ids"


def test_one_npy_per_layer_and_one_for_all_layers(tmp_path):
    for layer in range(2):
        np.save(tmp_path / f"l{layer}.npy", IDS[:, layer])
    _check(import_expert_ids([tmp_path / "l0.npy", tmp_path / "l1.npy"]))
    np.save(tmp_path / "all_tlk.npy", IDS)
    _check(import_expert_ids(tmp_path / "all_tlk.npy", num_experts=4))
    np.save(tmp_path / "all_ltk.npy", IDS.transpose(1, 0, 2))
    _check(import_expert_ids(tmp_path / "all_ltk.npy", layer_axis=0))
    t = import_expert_ids(tmp_path / "all_tlk.npy", num_experts=16)
    assert t.num_experts == 16 and "inferred" not in t.meta.notes


def test_npz_per_layer_members_and_key(tmp_path):
    np.savez(tmp_path / "a.npz", layer_1=IDS[:, 1], layer_0=IDS[:, 0])
    _check(import_expert_ids(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", experts=IDS, weights=np.ones((3, 2, 2)))
    _check(import_expert_ids(tmp_path / "b.npz", key="experts"))
    with pytest.raises(ImportFormatError, match=r"b\.npz.*pass key"):
        import_expert_ids(tmp_path / "b.npz")
    with pytest.raises(ImportFormatError, match=r"b\.npz: field 'gates'.*missing"):
        import_expert_ids(tmp_path / "b.npz", key="gates")
    np.savez(tmp_path / "c.npz", layer_0=IDS[:, 0], layer_2=IDS[:, 1])
    with pytest.raises(ImportFormatError, match="not consecutive"):
        import_expert_ids(tmp_path / "c.npz")


def test_json_nested_dict_and_ragged(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(IDS.tolist()))
    _check(import_expert_ids(tmp_path / "a.json"))
    (tmp_path / "b.json").write_text(json.dumps({"layer_0": IDS[:, 0].tolist(), "layer_1": IDS[:, 1].tolist()}))
    _check(import_expert_ids(tmp_path / "b.json"))
    # A dropped expert (ragged row) becomes a -1 pad.
    (tmp_path / "r0.json").write_text(json.dumps([[0, 3], [2], [1, 0]]))
    (tmp_path / "r1.json").write_text(json.dumps(IDS[:, 1].tolist()))
    t = import_expert_ids([tmp_path / "r0.json", tmp_path / "r1.json"], num_experts=4)
    want = IDS.copy()
    want[1, 0] = [2, PAD]
    _check(t, want)
    assert t.meta.top_k == 2


def test_csv_per_layer_and_long_form(tmp_path):
    for layer in range(2):
        rows = "\n".join(",".join(map(str, r)) for r in IDS[:, layer])
        (tmp_path / f"l{layer}.csv").write_text(f"e0,e1\n{rows}\n")
    _check(import_expert_ids([tmp_path / "l0.csv", tmp_path / "l1.csv"]))
    lines = ["token,layer,experts"]
    for t in reversed(range(3)):  # out of order on purpose: the token column orders them
        for layer in range(2):
            lines.append(f"{t},{layer},{' '.join(map(str, IDS[t, layer]))}")
    (tmp_path / "long.csv").write_text("\n".join(lines) + "\n")
    _check(import_expert_ids(tmp_path / "long.csv"))
    (tmp_path / "wide.csv").write_text("layer,top1,top2\n" + "\n".join(
        f"{layer},{IDS[t, layer, 0]},{IDS[t, layer, 1]}" for t in range(3) for layer in range(2)) + "\n")
    _check(import_expert_ids(tmp_path / "wide.csv"))


def test_gate_weights_beside_ids(tmp_path):
    w = np.array([[[0.6, 0.4], [0.7, 0.3]], [[0.5, 0.5], [0.9, 0.1]], [[0.8, 0.2], [0.55, 0.45]]])
    np.save(tmp_path / "ids.npy", IDS)
    np.save(tmp_path / "w.npy", w)
    t = import_expert_ids(tmp_path / "ids.npy", weights=tmp_path / "w.npy")
    np.testing.assert_allclose(t.gate_weights, w.astype(np.float32))


def test_expert_id_errors_name_file_field_and_position(tmp_path):
    bad = IDS[:, 0].astype(float)
    bad[2, 1] = 1.5
    np.save(tmp_path / "f.npy", bad)
    np.save(tmp_path / "g.npy", IDS[:, 1])
    np.save(tmp_path / "ok.npy", np.array([[0, 1], [2, 0], [1, 2]]))
    with pytest.raises(ImportFormatError, match=r"f\.npy: field 'experts layer 0' at \[2, 1\].*1\.5"):
        import_expert_ids([tmp_path / "f.npy", tmp_path / "g.npy"])
    with pytest.raises(ImportFormatError, match=r"g\.npy: field 'experts layer 1' at \[1, 0\].*outside \[0, 3\)"):
        import_expert_ids([tmp_path / "ok.npy", tmp_path / "g.npy"], num_experts=3)
    np.save(tmp_path / "dup.npy", np.array([[0, 1], [2, 2]]))
    with pytest.raises(ImportFormatError, match=r"dup\.npy.*at \[1\].*twice"):
        import_expert_ids([tmp_path / "dup.npy"])
    np.save(tmp_path / "short.npy", IDS[:2, 1])
    with pytest.raises(ImportFormatError, match=r"short\.npy.*layer 1 has 2 tokens, layer 0 has 3"):
        import_expert_ids([tmp_path / "g.npy", tmp_path / "short.npy"])
    (tmp_path / "x.csv").write_text("1,2\n3,x\n")
    with pytest.raises(ImportFormatError, match=r"x\.csv: field 'row' at \[2\]"):
        import_expert_ids([tmp_path / "x.csv"])
    (tmp_path / "y.json").write_text("[[1, 2],\n [3, ")
    with pytest.raises(ImportFormatError, match=r"y\.json: field 'line' at \[2\]"):
        import_expert_ids(tmp_path / "y.json")
    (tmp_path / "z.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportFormatError, match=r"z\.parquet.*unknown extension"):
        import_expert_ids(tmp_path / "z.parquet")
    with pytest.raises(ImportFormatError, match="no such file"):
        import_expert_ids(tmp_path / "missing.npy")


# ---- router logits ----------------------------------------------------------------------------

def test_router_logits_tuple_to_trace_with_padding_dropped():
    rng = np.random.default_rng(0)
    layers = tuple(torch.from_numpy(rng.normal(size=(6, 8)).astype(np.float32)) for _ in range(3))
    valid = np.array([0, 1, 1, 1, 0, 1], bool)  # a batch's flattened attention mask
    t = import_router_logits(layers, rule="mixtral", top_k=2, valid=valid, model="tiny")
    assert t.experts.shape == (4, 3, 2)
    for layer, x in enumerate(layers):
        want = np.argsort(-x.numpy()[valid], axis=1, kind="stable")[:, :2]
        np.testing.assert_array_equal(t.experts[:, layer], want)
    np.testing.assert_allclose(t.gate_weights.sum(2), 1.0, rtol=1e-6)
    assert t.meta.extra["routing_rule"]["rule"] == "softmax_topk" and t.meta.top_k == 2


def test_router_logits_files_and_per_layer_bias(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 8))
    bias = rng.normal(size=(2, 8))
    rule = RoutingRule("deepseek_v3", 2, renormalize=True, scaling=2.5, n_group=4, topk_group=2)
    want = [apply_rule(logits[i], rule.with_bias(bias[i]))[0] for i in range(2)]
    np.save(tmp_path / "l.npy", logits)
    torch.save(tuple(torch.from_numpy(x) for x in logits), tmp_path / "l.pt")
    np.savez(tmp_path / "l.npz", layer_0=logits[0], layer_1=logits[1])
    for src in (tmp_path / "l.npy", tmp_path / "l.pt", tmp_path / "l.npz", logits, list(logits)):
        t = import_router_logits(src, rule=rule, bias=bias)
        for i in range(2):
            np.testing.assert_array_equal(t.experts[:, i], want[i])
    # One bias for every layer differs from the per-layer one.
    t = import_router_logits(logits, rule=rule, bias=bias[0])
    np.testing.assert_array_equal(t.experts[:, 0], want[0])


def test_router_logit_errors():
    x = np.zeros((4, 8))
    with pytest.raises(ImportFormatError, match="needs top_k"):
        import_router_logits([x], rule="mixtral")
    with pytest.raises(ImportFormatError, match=r"layer 1 logits have shape \(3, 8\)"):
        import_router_logits([x, x[:3]], rule="mixtral", top_k=2)
    with pytest.raises(ImportFormatError, match=r"field 'bias'.*deepseek_v3 rule only"):
        import_router_logits([x], rule="mixtral", top_k=2, bias=np.zeros(8))
    with pytest.raises(ImportFormatError, match=r"field 'valid'"):
        import_router_logits([x], rule="mixtral", top_k=2, valid=np.ones(3, bool))
    y = x.copy()
    y[2, 5] = np.nan
    with pytest.raises(ImportFormatError, match=r"router_logits layer 1' at \[2, 5\].*NaN"):
        import_router_logits([x, y], rule="mixtral", top_k=2)
    with pytest.raises(ImportFormatError, match="no routing rule known"):
        import_router_logits([x], rule="llama", top_k=2)


# ---- hostile inputs: one located ImportFormatError each, never a coercion ------------------------

def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        np.save(path, content, allow_pickle=True)
    return path


def struct_header(text: str) -> bytes:
    """The length and text of a hand-made ``.npy`` header (version 1.0)."""
    import struct

    h = text.encode() + b"\n"
    return struct.pack("<H", len(h)) + h


GENERIC_HOSTILE = [
    ("ids.json", json.dumps([[[0, True]]]), "boolean"),
    ("ids.json", json.dumps([[["1", 0]]]), 'string "1"'),
    ("ids.json", json.dumps([[[1.9, 0]]]), "float 1.9"),
    ("ids.json", json.dumps([[[1.0, 0]]]), "float 1.0"),
    ("ids.json", json.dumps([[[[[0]]]]]), "nested deeper"),
    ("ids.json", json.dumps([[[0, 1], 2]]), "depth"),
    ("ids.json", json.dumps([[[2 ** 70, 0]]]), "outside"),
    ("ids.json", json.dumps({"layer_0": [[0, None]], "layer_1": [[0, 1]]}), "null"),
    ("ids.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("ids.json", "[[[0, NaN]]]", "NaN"),
    ("ids.json", b"[[[0, 1]]] \xff", "not UTF-8"),
    ("ids.json", "[[[0, 1]], [[1, 2]]] trailing", "not JSON"),
    ("ids.csv", "1,2\n3,1.5\n", "not an integer"),
    ("ids.csv", "1,2\n3,nan\n", "not an integer"),
    ("ids.csv", "1,2\n3,inf\n", "not an integer"),
    ("ids.csv", "1,2\n3,1e2\n", "not an integer"),
    ("ids.csv", "1,2\n3, +1\n", "not an integer"),
    ("ids.csv", "1,2\n3,1_0\n", "not an integer"),
    ("ids.csv", "layer,token,experts\n0,0,1 2\n0,0.5,1 2\n", "not an integer"),
    ("ids.csv", "layer,token,experts\nzero,0,1 2\n", "not an integer"),
    ("ids.csv", "layer,token,experts\n0,0,1 2,9\n", "cells for"),
    ("ids.csv", "layer,token\n0,0\n", "no column holds the ids"),
    ("ids.csv", "layer,token,experts\n0,0,1 2\n0,0,2 1\n", "appears twice"),
    ("ids.csv", "layer,token,experts\n5,0,1 2\n", "not 0.."),
    ("ids.csv", b"1,2\n\xfe,1\n", "not UTF-8"),
    ("ids.npy", np.array([[[True, False]]]), "integers"),
    ("ids.npy", np.array([[["1", "2"]]]), "not allowed"),
    ("ids.npy", np.array([[[None, 1]]], dtype=object), "not allowed"),
    ("ids.npy", np.array([[[1 + 2j, 0]]]), "not allowed"),
    ("ids.npy", np.array([[[np.nan, 0.0]]]), "not an integer"),
    ("ids.npy", np.array([[[2.0 ** 70, 0.0]]]), "not an integer"),
    ("ids.npy", np.array([[[2 ** 64 - 1, 0]]], dtype=np.uint64), "does not fit int64"),
    ("ids.npy", b"\x93NUMPY\x01\x00" + struct_header("{'descr': '<i8', 'fortran_order': False, 'shape': (1000000000, 2), }"),
     "needs 16000000000 bytes"),
    ("ids.npy", b"not an npy at all", "bad magic"),
    ("ids.h5", "whatever", "unknown extension"),
]


@pytest.mark.parametrize(("name", "content", "words"), GENERIC_HOSTILE,
                         ids=[f"{n}:{i}" for i, (n, _, _) in enumerate(GENERIC_HOSTILE)])
def test_generic_hostile_files(tmp_path, name, content, words):
    path = _write(tmp_path, name, content)
    with pytest.raises(ImportFormatError) as exc:
        import_expert_ids(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)) and words in msg and "\n" not in msg, msg


@pytest.mark.parametrize(("content", "words"), [
    (json.dumps([[[0.5, "0.5"]]]), "string"),
    (json.dumps([[[0.5, True]]]), "boolean"),
    ("[[[0.5, Infinity]]]", "Infinity"),
    ("[[[0.5, 1e400]]]", "finite"),
])
def test_generic_hostile_weights(tmp_path, content, words):
    np.save(tmp_path / "ids.npy", np.array([[[0, 1]]]))
    path = _write(tmp_path, "w.json", content)
    with pytest.raises(ImportFormatError) as exc:
        import_expert_ids(tmp_path / "ids.npy", weights=path)
    assert str(exc.value).startswith(str(path)) and words in str(exc.value)


def test_generic_missing_files_and_bad_arguments(tmp_path):
    with pytest.raises(ImportFormatError, match=r"nope\.npy: no such file"):
        import_expert_ids(tmp_path / "nope.npy")
    with pytest.raises(ImportFormatError, match="not a regular file"):
        import_expert_ids([tmp_path, tmp_path])
    np.save(tmp_path / "ids.npy", IDS)
    for kw in ({"num_experts": 4.5}, {"num_experts": True}, {"top_k": 0}, {"num_experts": -1}):
        with pytest.raises(ImportFormatError):
            import_expert_ids(tmp_path / "ids.npy", **kw)
    np.save(tmp_path / "big.npy", np.array([[[40000, 0]]]))
    with pytest.raises(ImportFormatError, match="int16"):
        import_expert_ids(tmp_path / "big.npy")
    with pytest.raises(ImportFormatError, match="must hold numbers"):
        import_router_logits([np.array([["a", "b"]])], rule="softmax_topk", top_k=1)
