"""Recording routing from tiny random Hugging Face MoE models (traces.record, traces.record_cli).

Every architecture is built from a config with random weights (no downloads), seeded, in float32;
the routers are re-initialised with larger random weights so that routing is decisive (several
routers start at zero, where every expert ties) and DeepSeek-V3 gets a non-zero score bias, so that
its choice differs from a plain top-k.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("USE_HUB_KERNELS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from moesim.traces.errors import TraceError
from moesim.traces.io import load, save
from moesim.traces.record_routers import (
    FORM_INDICES,
    FORM_LOGITS,
    FORM_SCORES,
    MoeLayer,
    UnsupportedModelError,
    decode_router_output,
)
from moesim.traces.record_writer import ChunkedTraceWriter
from moesim.traces.routing_rules import RoutingRule, apply_rule, rule_for_config
from moesim.traces.trace import DECODE, PAD, PREFILL, TraceMeta

REPO = Path(__file__).resolve().parents[1]
COMMON = dict(vocab_size=96, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
              intermediate_size=48, max_position_embeddings=64)
ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "deepseek_v2", "deepseek_v3", "phimoe",
         "granitemoe")
PROMPTS = [[5, 17, 3, 88, 41], [9, 2, 60], [70, 11, 23, 4]]


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matmuls: threads only add contention on a shared machine.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _config(tf, arch: str):
    mla = dict(kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=8, qk_nope_head_dim=8,
               moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1, n_routed_experts=8,
               num_experts_per_tok=2, n_group=2, topk_group=1)
    return {
        "mixtral": lambda: tf.MixtralConfig(**COMMON, num_local_experts=8, num_experts_per_tok=2),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2,
                                               moe_intermediate_size=16, shared_expert_intermediate_size=24,
                                               mlp_only_layers=[0], norm_topk_prob=False),
        "qwen3_moe": lambda: tf.Qwen3MoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2, head_dim=8,
                                               moe_intermediate_size=16, norm_topk_prob=True),
        "olmoe": lambda: tf.OlmoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False),
        "gpt_oss": lambda: tf.GptOssConfig(**COMMON, num_local_experts=8, num_experts_per_tok=2, head_dim=8,
                                           sliding_window=8),
        "deepseek_v2": lambda: tf.DeepseekV2Config(**COMMON, **mla, topk_method="group_limited_greedy",
                                                   routed_scaling_factor=1.0),
        "deepseek_v3": lambda: tf.DeepseekV3Config(**COMMON, **mla, routed_scaling_factor=2.5,
                                                   norm_topk_prob=True),
        "phimoe": lambda: tf.PhimoeConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2),
        "granitemoe": lambda: tf.GraniteMoeConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2),
    }[arch]()


_MODELS: dict[str, torch.nn.Module] = {}


def _model(tf, arch: str) -> torch.nn.Module:
    if arch not in _MODELS:
        from moesim.traces.record_routers import find_moe_layers

        torch.manual_seed(1234)
        model = tf.AutoModelForCausalLM.from_config(_config(tf, arch), dtype=torch.float32).eval()
        with torch.no_grad():
            for layer in find_moe_layers(model):
                torch.nn.init.normal_(layer.router.weight, std=0.4)
                if isinstance(getattr(layer.router, "bias", None), torch.Tensor):
                    torch.nn.init.normal_(layer.router.bias, std=0.4)
                if hasattr(layer.router, "e_score_correction_bias"):
                    layer.router.e_score_correction_bias.copy_(torch.randn(layer.num_experts) * 0.3)
        _MODELS[arch] = model
    return _MODELS[arch]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _reference_ids(arch: str, logits: np.ndarray, cfg, bias: np.ndarray | None) -> np.ndarray:
    """Chosen experts (sorted per row), written out per architecture from the published rules."""
    k = cfg.num_experts_per_tok
    N, E = logits.shape
    if arch in ("deepseek_v2", "deepseek_v3"):
        G, keep_groups = cfg.n_group, cfg.topk_group
        if arch == "deepseek_v2":
            s = _softmax(logits)
            group = s.reshape(N, G, E // G).max(axis=-1)
        else:
            s = _sigmoid(logits) + bias
            group = np.sort(s.reshape(N, G, E // G), axis=-1)[..., -2:].sum(axis=-1)
        best = np.argsort(-group, axis=1)[:, :keep_groups]
        allowed = np.zeros((N, G), bool)
        np.put_along_axis(allowed, best, True, axis=1)
        s = np.where(np.repeat(allowed, E // G, axis=1), s, -np.inf)
        return np.sort(np.argsort(-s, axis=1)[:, :k], axis=1)
    # Softmax is monotone, and Phi-MoE's sparsemixer picks the best and then the second best logit.
    return np.sort(np.argsort(-logits, axis=1)[:, :k], axis=1)


def _by_request(trace):
    order = np.lexsort((trace.position, trace.request_id))
    return order


# ---- routing ids and weights against an independent computation ------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_recorded_ids_equal_topk_of_router_logits(tf, arch):
    from moesim.traces.record import record_routing
    from moesim.traces.record_routers import find_moe_layers

    model = _model(tf, arch)
    layers = find_moe_layers(model)
    seen: dict[int, list[torch.Tensor]] = {layer.index: [] for layer in layers}
    handles = [layer.router.register_forward_pre_hook(
        lambda mod, inp, i=layer.index: seen[i].append(inp[0].reshape(-1, inp[0].shape[-1]).clone()))
        for layer in layers]
    try:
        trace = record_routing(model, PROMPTS[:2], max_new_tokens=3, batch_size=1)
    finally:
        for h in handles:
            h.remove()
    T = sum(len(p) for p in PROMPTS[:2]) + 2 * 3
    assert trace.experts.shape == (T, len(layers), 2)
    assert trace.gate_weights.shape == (T, len(layers), 2)
    assert trace.predicted is None
    cfg = model.config
    for layer in layers:
        x = torch.cat(seen[layer.index]).double().numpy()  # batch 1: router rows are the trace steps
        W = layer.router.weight.detach().double().numpy()
        logits = x @ W.T
        if isinstance(getattr(layer.router, "bias", None), torch.Tensor):
            logits = logits + layer.router.bias.detach().double().numpy()
        bias = getattr(layer.router, "e_score_correction_bias", None)
        bias = None if bias is None else bias.double().numpy()
        want = _reference_ids(arch, logits, cfg, bias)
        got = np.sort(trace.experts[:, layer.index].astype(np.int64), axis=1)
        np.testing.assert_array_equal(got, want)
        # Weights as the architecture's rule gives them (rule module cross-checked with the router).
        ids, w = apply_rule(logits, rule_for_config(cfg, bias=bias))
        o1, o2 = np.argsort(ids, axis=1), np.argsort(trace.experts[:, layer.index], axis=1)
        np.testing.assert_allclose(np.take_along_axis(trace.gate_weights[:, layer.index], o2, 1),
                                   np.take_along_axis(w, o1, 1), rtol=1e-5, atol=1e-6)
        if arch == "deepseek_v3":
            # The score bias and group limit matter: plain top-k of the logits differs somewhere.
            plain = np.sort(np.argsort(-logits, axis=1)[:, :2], axis=1)
            assert (plain != want).any()


EXPECTED_SUM = {"mixtral": 1.0, "qwen3_moe": 1.0, "gpt_oss": 1.0, "granitemoe": 1.0, "deepseek_v3": 2.5}


@pytest.mark.parametrize("arch", ARCHS)
def test_gate_weights_sum_as_the_architecture_defines(tf, arch):
    from moesim.traces.record import record_routing

    trace = record_routing(_model(tf, arch), PROMPTS[:1], max_new_tokens=2)
    sums = trace.gate_weights.sum(axis=2)
    if arch in EXPECTED_SUM:
        np.testing.assert_allclose(sums, EXPECTED_SUM[arch], rtol=1e-5)
        assert trace.meta.extra["gate_weight_sum"] == f"{EXPECTED_SUM[arch]:g}"
    elif arch == "phimoe":  # two separate softmaxes, each weight in (0, 1]
        assert np.all((trace.gate_weights > 0) & (trace.gate_weights <= 1 + 1e-6))
    else:  # probabilities of the chosen experts, not renormalised (scaling 1 here)
        assert np.all(sums < 1.0) and np.all(sums > 0)
    assert trace.meta.extra["router_output"] == [FORM_INDICES]


# ---- steps, phases, batching ------------------------------------------------------------------

def test_steps_phases_positions_in_processing_order(tf):
    from moesim.traces.record import record_routing

    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9]]
    tr = record_routing(_model(tf, "mixtral"), prompts, max_new_tokens=3, batch_size=2)
    # batch 1: prefill of request 0 then 1, then each decode step for both; batch 2: request 2.
    req = [0, 0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2, 2, 2, 2]
    pos = [0, 1, 2, 3, 0, 1, 4, 2, 5, 3, 6, 4, 0, 1, 2, 3, 4, 5]
    ph = [PREFILL] * 6 + [DECODE] * 6 + [PREFILL] * 3 + [DECODE] * 3
    np.testing.assert_array_equal(tr.request_id, req)
    np.testing.assert_array_equal(tr.position, pos)
    np.testing.assert_array_equal(tr.phase, ph)
    assert tr.meta.source == "recorded" and tr.meta.generator == "traces.record"


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_equals_one_at_a_time(tf, arch):
    """Left padding is masked and positions count real tokens only, so batches change nothing.

    Float32 on a seeded model: the batched matmuls differ from the single ones by ~1e-7, far from
    the gaps between router logits, so the ids are equal exactly (checked), the weights to 1e-5.
    """
    from moesim.traces.record import record_routing

    model = _model(tf, arch)
    one = record_routing(model, PROMPTS, max_new_tokens=3, batch_size=1, record_predictions=True)
    two = record_routing(model, PROMPTS, max_new_tokens=3, batch_size=2, record_predictions=True)
    a, b = _by_request(one), _by_request(two)
    np.testing.assert_array_equal(one.request_id[a], two.request_id[b])
    np.testing.assert_array_equal(one.position[a], two.position[b])
    np.testing.assert_array_equal(np.sort(one.experts[a], axis=2), np.sort(two.experts[b], axis=2))
    np.testing.assert_array_equal(np.sort(one.predicted[a], axis=2), np.sort(two.predicted[b], axis=2))
    np.testing.assert_allclose(np.sort(one.gate_weights[a], axis=2), np.sort(two.gate_weights[b], axis=2),
                               rtol=1e-4, atol=1e-5)


def _greedy(model, prompt, n):
    """Greedy continuation without a cache (a reference for the recorder's loop)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_eos_stops_a_request_after_its_end_token(tf):
    from moesim.traces.record import record_routing

    model = _model(tf, "olmoe")
    free = record_routing(model, PROMPTS[:2], max_new_tokens=4, batch_size=2)
    gen = [_greedy(model, p, 4) for p in PROMPTS[:2]]
    eos = gen[0][1]
    tr = record_routing(model, PROMPTS[:2], max_new_tokens=4, batch_size=2, eos_token_id=eos)
    dec = tr.phase == DECODE
    for r, g in enumerate(gen):
        # Fed tokens up to and including the first end token are recorded.
        want = g.index(eos) + 1 if eos in g else 4
        assert np.count_nonzero(dec & (tr.request_id == r)) == want
    assert np.count_nonzero(dec & (tr.request_id == 0)) <= 2
    # The rows that remain are the same as without the end token.
    stop = {r: len(p) + (g.index(eos) + 1 if eos in g else 4) for r, (p, g) in enumerate(zip(PROMPTS[:2], gen, strict=True))}
    keep = np.array([pos < stop[int(r)] for r, pos in zip(free.request_id, free.position, strict=True)])
    np.testing.assert_array_equal(np.sort(free.experts[keep], 2), np.sort(tr.experts, 2))


# ---- predictions ------------------------------------------------------------------------------

def test_predictions_absent_unless_asked(tf):
    from moesim.traces.record import record_routing

    tr = record_routing(_model(tf, "qwen3_moe"), PROMPTS[:1], max_new_tokens=1)
    assert tr.predicted is None and "predictions" not in tr.meta.extra


@pytest.mark.parametrize("arch", ["mixtral", "deepseek_v3", "qwen2_moe"])
def test_predictions_apply_next_router_to_layer_output(tf, arch):
    from moesim.traces.record import record_routing
    from moesim.traces.record_routers import find_moe_layers

    model = _model(tf, arch)
    layers = find_moe_layers(model)
    prompt = PROMPTS[0]
    tr = record_routing(model, [prompt], max_new_tokens=2, record_predictions=True)
    assert tr.predicted.shape == tr.experts.shape
    assert np.all(tr.predicted[:, 0] == PAD)
    assert np.all(tr.predicted[:, 1:] >= 0)
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([prompt]), output_hidden_states=True).hidden_states
    cfg = model.config
    for layer in layers[:-1]:
        nxt = layers[layer.index + 1]
        h = hs[layer.model_layer + 1][0]  # output of the decoder layer holding MoE layer l
        with torch.no_grad():
            x = model.model.layers[nxt.model_layer].post_attention_layernorm(h).double().numpy()
        logits = x @ nxt.router.weight.detach().double().numpy().T
        bias = getattr(nxt.router, "e_score_correction_bias", None)
        want = _reference_ids(arch, logits, cfg, None if bias is None else bias.double().numpy())
        got = np.sort(tr.predicted[: len(prompt), nxt.index].astype(np.int64), axis=1)
        np.testing.assert_array_equal(got, want)
    assert "residual stream" in tr.meta.extra["predictions"]["input"]


# ---- metadata, dense layers, unsupported models -----------------------------------------------

def test_dense_layers_are_skipped_and_kept_in_metadata(tf):
    from moesim.traces.record import record_routing

    for arch, indices in (("qwen2_moe", [1, 2]), ("deepseek_v3", [1, 2]), ("mixtral", [0, 1, 2])):
        tr = record_routing(_model(tf, arch), PROMPTS[:1], max_new_tokens=1, model_name=f"tiny-{arch}")
        ex = tr.meta.extra
        assert tr.num_layers == len(indices) and ex["moe_layer_indices"] == indices
        assert ex["num_model_layers"] == 3 and ex["model_type"] == arch
        assert tr.meta.model == f"tiny-{arch}" and tr.meta.top_k == 2
        assert ex["transformers_version"] == tf.__version__ and ex["torch_version"] == torch.__version__
        assert tr.meta.created_at
    ds = record_routing(_model(tf, "deepseek_v3"), PROMPTS[:1], max_new_tokens=1).meta.extra
    assert ds["shared_experts"] == 1 and ds["routing_rule"]["rule"] == "deepseek_v3"
    assert ds["routing_rule"]["bias"] is True


def test_unsupported_model_names_the_module_types(tf):
    from moesim.traces.record import record_routing

    cfg = tf.LlamaConfig(**COMMON)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM") as err:
        record_routing(model, PROMPTS[:1], max_new_tokens=1)
    assert "LlamaMLP" in str(err.value) and "LlamaDecoderLayer" in str(err.value)


def test_bad_prompts_name_the_prompt_and_position(tf):
    from moesim.traces.record import RecordError, record_routing

    model = _model(tf, "mixtral")
    with pytest.raises(RecordError, match=r"prompts' at \[1, 2\].*token id 500"):
        record_routing(model, [[1, 2], [3, 4, 500]], max_new_tokens=1)
    with pytest.raises(RecordError, match=r"at \[0\].*empty"):
        record_routing(model, [[]], max_new_tokens=1)
    with pytest.raises(RecordError, match="batch_size"):
        record_routing(model, [[1]], max_new_tokens=1, batch_size=0)


def test_hub_kernels_are_not_taken_from_this_repo(tf):
    # transformers imports Hugging Face's `kernels`; it must never get this repository's folder.
    _model(tf, "mixtral")(input_ids=torch.tensor([[1, 2]]))
    mod = sys.modules.get("kernels")
    assert mod is None or not Path(mod.__file__).resolve().is_relative_to(REPO / "kernels")


# ---- router output forms (transformers 4.x shapes, no model needed) ---------------------------

def _fake_layer(E: int = 6, k: int = 2) -> MoeLayer:
    return MoeLayer(0, 0, torch.nn.Linear(4, E, bias=False), "model.layers.0.mlp.gate", torch.nn.Identity(),
                    None, E, k)


def test_router_output_forms_are_detected():
    torch.manual_seed(0)
    logits = torch.randn(5, 6)
    rule = RoutingRule("softmax_topk", 2, renormalize=True)
    want_ids, want_w = apply_rule(logits.double().numpy(), rule)
    layer = _fake_layer()
    ids, w, form = decode_router_output(logits, layer, rule)  # 4.x nn.Linear gate: logits only
    assert form == FORM_LOGITS
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(w, want_w, rtol=1e-6)
    probs = torch.softmax(logits, -1)
    top_w, top_i = probs.topk(2, dim=-1)
    ids, w, form = decode_router_output((top_i, top_w), layer, None)  # 4.x DeepSeek-V3 order
    assert form == FORM_INDICES
    np.testing.assert_array_equal(ids, top_i.numpy())
    np.testing.assert_allclose(w, top_w.numpy())
    scores = torch.zeros_like(probs).scatter(1, top_i, top_w)
    ids, w, form = decode_router_output((scores, top_i), layer, None)  # 4.x gpt-oss: full score matrix
    assert form == FORM_SCORES
    np.testing.assert_allclose(w, top_w.numpy())
    ids, w, form = decode_router_output((logits, top_w, top_i), layer, None)  # 5.x TopKRouter
    assert form == FORM_INDICES
    np.testing.assert_allclose(w, top_w.numpy())
    with pytest.raises(UnsupportedModelError, match="logits only and no routing rule"):
        decode_router_output(logits, layer, None)
    with pytest.raises(UnsupportedModelError, match="unknown form"):
        decode_router_output((logits, logits), layer, None)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_only_path_agrees_with_the_real_router(tf, arch):
    """The architecture's rule applied to a router's logits picks what the router itself picks."""
    from moesim.traces.record_routers import find_moe_layers, layer_rule

    model = _model(tf, arch)
    torch.manual_seed(7)
    x = torch.randn(40, COMMON["hidden_size"])
    for layer in find_moe_layers(model):
        with torch.no_grad():
            out = layer.router(x)
        rule = layer_rule(model.config, layer)
        ids, w, _ = decode_router_output(out[0], layer, rule)
        ids_r, w_r, _ = decode_router_output(out, layer, rule)
        o, o_r = np.argsort(ids, 1), np.argsort(ids_r, 1)
        np.testing.assert_array_equal(np.take_along_axis(ids, o, 1), np.take_along_axis(ids_r, o_r, 1))
        np.testing.assert_allclose(np.take_along_axis(w, o, 1), np.take_along_axis(w_r, o_r, 1), rtol=1e-5,
                                   atol=1e-6)


def test_router_logits_import_matches_recording(tf):
    from moesim.traces.import_generic import import_router_logits
    from moesim.traces.record import record_routing

    model = _model(tf, "deepseek_v3")
    prompt = PROMPTS[0]
    rec = record_routing(model, [prompt], max_new_tokens=0)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt]), output_router_logits=True).router_logits
    from moesim.traces.record_routers import find_moe_layers

    bias = torch.stack([layer.router.e_score_correction_bias for layer in find_moe_layers(model)])
    imp = import_router_logits(logits, rule="deepseek_v3", top_k=2, bias=bias, n_group=2, topk_group=1,
                               renormalize=True, scaling=2.5)
    np.testing.assert_array_equal(np.sort(imp.experts, 2), np.sort(rec.experts, 2))
    np.testing.assert_allclose(np.sort(imp.gate_weights, 2), np.sort(rec.gate_weights, 2), rtol=1e-5)


# ---- writing in chunks ------------------------------------------------------------------------

def _random_rows(rng, n, L=3, K=2, E=8):
    e = np.array([[rng.choice(E, K, replace=False) for _ in range(L)] for _ in range(n)]).reshape(n, L, K)
    return {"experts": e, "gate_weights": rng.random((n, L, K)), "predicted": e[:, ::-1],
            "request_id": np.repeat(np.arange(n // 2 + 1), 2)[:n], "position": np.arange(n),
            "phase": (np.arange(n) % 2)}


def test_chunked_writer_gives_the_same_file_as_one_shot(tmp_path):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    parts = [_random_rows(rng, n) for n in (3, 1, 7, 0, 5)]
    shapes = {"experts": (3, 2), "gate_weights": (3, 2), "predicted": (3, 2), "request_id": (),
              "position": (), "phase": ()}
    meta = TraceMeta(model="m", num_layers=3, num_experts=8, top_k=2, created_at="2025-01-01T00:00:00+00:00")
    traces = {}
    for chunk in (1, 4, 10_000):
        w = ChunkedTraceWriter(tmp_path / f"c{chunk}.safetensors", shapes, chunk_steps=chunk)
        for p in parts:
            w.append(p)
            assert w._buffered < chunk  # never more than one chunk in memory
        traces[chunk] = w.close(meta)
    blobs = {c: (tmp_path / f"c{c}.safetensors").read_bytes() for c in traces}
    assert blobs[1] == blobs[4] == blobs[10_000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1.safetensors", "c10000.safetensors",
                                                          "c4.safetensors"]  # no scratch left behind
    whole = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    t = traces[4]
    np.testing.assert_array_equal(t.experts, whole["experts"])
    np.testing.assert_array_equal(t.predicted, whole["predicted"])
    np.testing.assert_array_equal(t.phase, whole["phase"])
    np.testing.assert_allclose(t.gate_weights, whole["gate_weights"].astype(np.float32))
    # The stock safetensors reader agrees, and so does the project's one-shot writer.
    st = load_file(str(tmp_path / "c4.safetensors"))
    np.testing.assert_array_equal(st["experts"], whole["experts"])
    save(t, tmp_path / "oneshot.safetensors")
    o = load(tmp_path / "oneshot.safetensors")
    for name in ("experts", "gate_weights", "predicted", "request_id", "position", "phase"):
        np.testing.assert_array_equal(getattr(o, name), getattr(t, name))
    assert o.meta == t.meta


def test_writer_streams_parts_to_disk(tmp_path):
    rng = np.random.default_rng(1)
    w = ChunkedTraceWriter(tmp_path / "t.safetensors", {"experts": (3, 2)}, chunk_steps=4)
    w.append({"experts": _random_rows(rng, 10)["experts"]})
    part = next(p for p in tmp_path.rglob("experts.bin"))
    assert part.stat().st_size == 10 * 3 * 2 * 2  # the full chunk went to disk (int16)
    w.append({"experts": _random_rows(rng, 3)["experts"]})
    assert part.stat().st_size == 10 * 3 * 2 * 2 and w._buffered == 3
    with pytest.raises(TraceError, match="experts"):
        w.append({"experts": np.zeros((2, 3, 5))})
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_recording_to_file_in_chunks_equals_in_memory(tf, tmp_path):
    from moesim.traces.record import record_routing

    model = _model(tf, "gpt_oss")
    mem = record_routing(model, PROMPTS, max_new_tokens=3, batch_size=2, record_predictions=True)
    disk = record_routing(model, PROMPTS, max_new_tokens=3, batch_size=2, record_predictions=True,
                          out=tmp_path / "rec.safetensors", chunk_steps=2)
    assert isinstance(disk.experts, np.memmap)
    for name in ("experts", "gate_weights", "predicted", "request_id", "position", "phase"):
        np.testing.assert_array_equal(getattr(disk, name), getattr(mem, name))
    assert disk.meta.extra == mem.meta.extra


# ---- replay -----------------------------------------------------------------------------------

def _lru_hits(experts: np.ndarray, E: int, capacity: int) -> int:
    """Shared LRU over keys l*E+e in layer-clock order; a row's experts are needed together, so a miss
    evicts the least recent key *not* in the current row (capacity >= top-k)."""
    cache: dict[int, None] = {}  # insertion order = recency order, least recent first
    hits = 0
    for t in range(experts.shape[0]):
        for layer in range(experts.shape[1]):
            row = [layer * E + int(e) for e in experts[t, layer] if e >= 0]
            for key in row:
                if key in cache:
                    hits += 1
                    cache.pop(key)
                elif len(cache) >= capacity:
                    cache.pop(next(k for k in cache if k not in row))
                cache[key] = None
    return hits


def test_recorded_trace_replays_through_the_simulator(tf, tmp_path):
    replay_mod = pytest.importorskip("moesim.sim.replay", reason="moesim.sim.replay is not available")
    if not hasattr(replay_mod, "replay"):
        pytest.skip("sim.replay.replay is not available")
    from moesim.traces.record import record_routing

    tr = record_routing(_model(tf, "olmoe"), PROMPTS, max_new_tokens=4, batch_size=2,
                        out=tmp_path / "r.safetensors")
    res = replay_mod.replay(tr, "lru", 6)
    assert res.accesses == tr.num_accesses() == tr.num_steps * tr.num_layers * 2
    assert res.hits == _lru_hits(np.asarray(tr.experts), tr.num_experts, 6)
    assert set(res.per_phase) == {"prefill", "decode"}


# ---- command line -----------------------------------------------------------------------------

def _word_tokenizer(tf, path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate("the cat sat on a mat dog ran far".split())}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(path))


def test_cli_records_from_a_saved_model(tf, tmp_path, capsys):
    from moesim.traces.record import record_routing
    from moesim.traces.record_cli import main

    model = _model(tf, "qwen3_moe")
    model.save_pretrained(str(tmp_path / "model"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in PROMPTS[:2]) + "\n")
    out = tmp_path / "t.safetensors"
    rc = main([f"model={tmp_path / 'model'}", f"prompts={prompts}", f"out={out}", "max_new_tokens=2",
               "batch_size=2", "predictions=true"])
    assert rc == 0, capsys.readouterr().err
    got = load(out)
    want = record_routing(model, PROMPTS[:2], max_new_tokens=2, batch_size=2, record_predictions=True)
    np.testing.assert_array_equal(got.experts, want.experts)
    np.testing.assert_array_equal(got.predicted, want.predicted)
    assert got.meta.model == "model"

    _word_tokenizer(tf, tmp_path / "tok")
    text = tmp_path / "p.txt"
    text.write_text("the cat sat\n\na dog ran far\n")
    rc = main([f"model={tmp_path / 'model'}", f"prompts={text}", f"out={out}", "max_new_tokens=1",
               f"tokenizer={tmp_path / 'tok'}"])
    assert rc == 0, capsys.readouterr().err
    t = load(out)
    assert t.num_steps == (3 + 1) + (4 + 1)
    np.testing.assert_array_equal(t.request_id, [0, 0, 0, 0, 1, 1, 1, 1, 1])


def test_cli_refuses_hub_names_and_bad_arguments(tf, tmp_path, capsys):
    from moesim.traces.record_cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("[1, 2]\n")
    assert main(["model=some-org/some-moe", f"prompts={prompts}", f"out={tmp_path / 'o.safetensors'}"]) == 2
    assert "not a local directory" in capsys.readouterr().err
    assert main(["model=x", "prompts=y"]) == 2
    assert "missing out" in capsys.readouterr().err
    assert main(["model=x", "prompts=y", "out=z", "colour=red"]) == 2
    assert "unknown key 'colour'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1, 2]\n[1, \"a\"]\n")
    _model(tf, "mixtral").save_pretrained(str(tmp_path / "m"))
    assert main([f"model={tmp_path / 'm'}", f"prompts={bad}", f"out={tmp_path / 'o.safetensors'}"]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "at [2]" in err
    assert not (tmp_path / "o.safetensors").exists()
