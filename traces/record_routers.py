"""Finding the routers of a Hugging Face MoE model and reading what they return.

A decoder layer ``model.layers.{i}`` holds a sparse block under ``mlp`` (Mixtral, Qwen2/3-MoE,
OLMoE, DeepSeek-V2/V3, Phi-MoE, gpt-oss), ``block_sparse_moe`` (Granite-MoE), ``moe`` or
``feed_forward``; the block's router is its ``gate`` (``router`` for gpt-oss, Phi-MoE and
Granite-MoE). Dense layers (DeepSeek's ``first_k_dense_replace``, Qwen2-MoE's ``mlp_only_layers``)
have no router there and are skipped, so MoE layer ``l`` of a trace is model layer
``moe_layer_indices[l]``.

What a router returns depends on the transformers release, so it is *detected* on each call:

* transformers 5.x: ``*TopKRouter`` modules return ``(router_logits, top_k_weights, top_k_index)``:
  the index tensor is exactly what the experts received (bias and group limits included);
* some 4.x routers returned two tensors: the indices and either the k weights (DeepSeek-V3:
  ``(topk_indices, topk_weights)``) or a full ``[N, E]`` score matrix (gpt-oss: ``(router_scores,
  router_indices)``), from which the k weights are gathered;
* older 4.x gates were plain ``nn.Linear`` layers returning logits only: then the architecture's
  own rule (:mod:`traces.routing_rules`) picks the experts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from moesim.traces.routing_rules import RoutingRule, RoutingRuleError, apply_rule, rule_for_config
from torch import nn

BLOCK_NAMES = ("mlp", "block_sparse_moe", "moe", "feed_forward")
ROUTER_NAMES = ("gate", "router")
# The norm a decoder layer applies to the residual stream right before its sparse block.
PRE_MOE_NORM_NAMES = ("post_attention_layernorm", "pre_feedforward_layernorm", "ffn_norm")
_ROUTER_PATH = re.compile(r"(?:^|\.)layers\.(\d+)\.(" + "|".join(BLOCK_NAMES) + r")\.(" + "|".join(ROUTER_NAMES)
                          + r")$")

FORM_INDICES = "indices"  # the router returned the chosen indices (and weights)
FORM_SCORES = "indices+scores"  # indices and a full [N, E] score matrix
FORM_LOGITS = "logits"  # logits only; experts picked with the architecture's rule


class UnsupportedModelError(ValueError):
    """The model has no router where the recorder looks, or one that returns an unknown form."""


@dataclass
class MoeLayer:
    """One MoE layer: its router and the decoder layer around it."""

    index: int  # trace layer (0..L-1)
    model_layer: int  # index in model.layers
    router: nn.Module
    router_path: str
    decoder_layer: nn.Module
    pre_norm: nn.Module | None  # the norm feeding the sparse block (used for predictions)
    num_experts: int
    top_k: int


def _router_shape(router: nn.Module) -> tuple[int, int] | None:
    w = getattr(router, "weight", None)
    if isinstance(w, torch.Tensor) and w.ndim == 2:
        return int(w.shape[0]), int(w.shape[1])
    return None


def _decoder_layer(model: nn.Module, path: str) -> nn.Module:
    # "model.layers.3.mlp.gate" -> the module at "model.layers.3"
    parent = path.rsplit(".", 2)[0]
    return model.get_submodule(parent)


def find_moe_layers(model: nn.Module) -> list[MoeLayer]:
    """The MoE layers of ``model`` in model order, or :class:`UnsupportedModelError` naming what was seen."""
    config = getattr(model, "config", None)
    found: dict[int, tuple[str, nn.Module]] = {}
    for name, module in model.named_modules():
        m = _ROUTER_PATH.search(name)
        if m is None or _router_shape(module) is None:
            continue
        layer = int(m.group(1))
        if layer in found:
            raise UnsupportedModelError(f"two routers in model layer {layer}: {found[layer][0]} and {name}")
        found[layer] = (name, module)
    if not found:
        types = sorted({type(m).__name__ for m in model.modules()})
        raise UnsupportedModelError(
            f"no MoE router found in {type(model).__name__} (model_type "
            f"{getattr(config, 'model_type', '?')!r}): looked for modules named "
            f"layers.<i>.<{'|'.join(BLOCK_NAMES)}>.<{'|'.join(ROUTER_NAMES)}> with a 2-D weight "
            f"[experts, hidden]; module types in the model: {', '.join(types)}")
    layers = []
    for idx, model_layer in enumerate(sorted(found)):
        path, router = found[model_layer]
        num_experts, _ = _router_shape(router) or (0, 0)
        decoder = _decoder_layer(model, path)
        norm = next((getattr(decoder, n) for n in PRE_MOE_NORM_NAMES if isinstance(getattr(decoder, n, None),
                                                                                    nn.Module)), None)
        top_k = getattr(router, "top_k", None) or getattr(config, "num_experts_per_tok", None)
        if top_k is None:
            raise UnsupportedModelError(f"cannot tell top_k of {path} ({type(router).__name__}): neither the "
                                        "router nor the config (num_experts_per_tok) says")
        layers.append(MoeLayer(idx, model_layer, router, path, decoder, norm, num_experts, int(top_k)))
    return layers


def layer_rule(config: Any, layer: MoeLayer) -> RoutingRule | None:
    """The architecture's rule for ``layer`` (DeepSeek-V3's bias read from the router), if known."""
    bias = getattr(layer.router, "e_score_correction_bias", None)
    try:
        return rule_for_config(config, bias=None if bias is None else bias.detach().cpu().double().numpy())
    except RoutingRuleError:
        return None


def _is_int(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex()


def decode_router_output(out: Any, layer: MoeLayer, rule: RoutingRule | None
                         ) -> tuple[np.ndarray, np.ndarray, str]:
    """``(ids int64 [N, k], weights float32 [N, k], form)`` from whatever the router returned."""
    if isinstance(out, torch.Tensor):
        tensors: Sequence[Any] = (out,)
    elif isinstance(out, (tuple, list)):
        tensors = [t for t in out if isinstance(t, torch.Tensor)]
    else:
        raise UnsupportedModelError(f"{layer.router_path} ({type(layer.router).__name__}) returned "
                                    f"{type(out).__name__}, expected tensors")
    ints = [t for t in tensors if _is_int(t)]
    floats = [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if len(ints) == 1:
        idx = ints[0].reshape(-1, ints[0].shape[-1])
        k = idx.shape[-1]
        # The k weights: the float tensor of width k; otherwise a full [N, E] score matrix (gathered).
        narrow = [f for f in floats if f.shape[-1] == k and f.numel() == idx.numel()]
        if narrow:
            w = narrow[-1].reshape(-1, k)
            form = FORM_INDICES
        else:
            wide = [f for f in floats if f.shape[-1] == layer.num_experts]
            if not wide:
                raise UnsupportedModelError(f"{layer.router_path} returned indices without weights of width "
                                            f"{k} or {layer.num_experts}")
            # (logits, scores) of 4.x and (logits, weights, ids) differ: take the last wide tensor, the
            # scores, since logits come first when both are present.
            w = torch.gather(wide[-1].reshape(-1, layer.num_experts), 1, idx)
            form = FORM_SCORES
        return (idx.detach().to("cpu", torch.int64).numpy(),
                w.detach().to("cpu", torch.float32).numpy(), form)
    if not ints and len(floats) == 1 and floats[0].shape[-1] == layer.num_experts:
        if rule is None:
            raise UnsupportedModelError(
                f"{layer.router_path} ({type(layer.router).__name__}) returns router logits only and no "
                "routing rule is known for this architecture")
        logits = floats[0].reshape(-1, layer.num_experts).detach().to("cpu", torch.float64).numpy()
        ids, w = apply_rule(logits, rule)
        return ids, w, FORM_LOGITS
    shapes = [(tuple(t.shape), str(t.dtype)) for t in tensors]
    raise UnsupportedModelError(f"{layer.router_path} ({type(layer.router).__name__}) returned an unknown "
                                f"form {shapes}: expected (logits, weights, indices), two tensors with "
                                "indices, or logits [tokens, experts]")
