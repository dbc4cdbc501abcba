"""Record the expert routing of a Hugging Face MoE model while it decodes prompts.

:func:`record_routing` runs greedy decoding with a KV cache (its own loop, so padding is under
control) and reads the experts each token used from forward hooks on the routers
(:mod:`traces.record_routers`). One trace step per real token:

* batches are formed from consecutive prompts (``batch_size``), left-padded with an attention mask
  and explicit ``position_ids`` (so a padded prompt sees the same positions as alone); the hooks
  drop the rows of padded positions, so padding never reaches the trace;
* within a batch the steps come in the order the model processed them: the prefill rows request by
  request (each in token order, phase ``PREFILL``), then every decode step for each still-running
  request in request order (phase ``DECODE``); batches follow each other in prompt order;
* each request generates ``max_new_tokens`` tokens greedily and *every* generated token is fed back
  through the model and recorded, so a request yields ``len(prompt) + max_new_tokens`` steps (with
  ``eos_token_id`` a request stops after feeding its end-of-sequence token);
* ``request_id`` is the prompt's index, ``position`` the token's position in its request.

Predictions (``record_predictions=True``): after MoE layer ``l`` (model layer ``moe_layer_indices[l]``)
the hook takes that decoder layer's *output hidden state*, i.e. the residual stream after the whole
layer (attention and sparse block, residual adds included) for each real token, applies MoE layer
``l+1``'s pre-MoE norm (its ``post_attention_layernorm``, the norm its router's input passes through)
and then layer ``l+1``'s router, and stores that router's top-k as ``predicted[:, l+1]``;
``predicted[:, 0]`` is ``-1``. The speculative router call is not recorded as routing.

Rows are buffered ``chunk_steps`` at a time and, with ``out``, streamed to a scratch file and
assembled into one safetensors file at the end (:mod:`traces.record_writer`), so memory does not
grow with the number of steps.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import numpy as np
import torch
from moesim.traces.errors import TraceError
from moesim.traces.record_routers import (
    MoeLayer,
    UnsupportedModelError,
    decode_router_output,
    find_moe_layers,
    layer_rule,
)
from moesim.traces.record_writer import DEFAULT_CHUNK_STEPS, ChunkedTraceWriter
from moesim.traces.routing_rules import RoutingRule
from moesim.traces.trace import DECODE, PAD, PREFILL, Trace, TraceMeta, now_iso
from torch import nn

RECORDER_VERSION = "1"
PREDICTION_INPUT = ("output hidden state of the decoder layer holding MoE layer l (residual stream after "
                    "layer l), passed through MoE layer l+1's pre-MoE norm, then MoE layer l+1's router")

__all__ = ["RECORDER_VERSION", "RecordError", "UnsupportedModelError", "record_routing"]


class RecordError(TraceError):
    """Bad input to the recorder (prompts, sizes), or a model that misbehaves while recording."""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _as_prompts(prompts: Sequence[Any], vocab_size: int | None) -> list[torch.Tensor]:
    if isinstance(prompts, torch.Tensor):
        raise RecordError("prompts must be a list of token-id sequences, not one tensor (a 2-D tensor "
                          "would hide padding); pass list(tensor) for equal-length prompts", field="prompts")
    out = []
    for i, p in enumerate(prompts):
        t = p.detach().cpu() if isinstance(p, torch.Tensor) else torch.as_tensor(np.asarray(p))
        if t.ndim != 1:
            raise RecordError(f"prompt must be a 1-D list of token ids, got shape {tuple(t.shape)}",
                              field="prompts", index=i)
        if t.numel() == 0:
            raise RecordError("prompt is empty", field="prompts", index=i)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise RecordError(f"token ids must be integers, got {t.dtype}", field="prompts", index=i)
        t = t.to(torch.int64)
        bad = (t < 0) | (t >= vocab_size) if vocab_size else (t < 0)
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0, 0])
            raise RecordError(f"token id {int(t[j])} outside the vocabulary [0, {vocab_size})",
                              field="prompts", index=(i, j))
        out.append(t)
    if not out:
        raise RecordError("no prompts", field="prompts")
    return out


class _Hooks:
    """Forward hooks on the routers (and, for predictions, on the decoder layers) of one model."""

    def __init__(self, layers: list[MoeLayer], rules: list[RoutingRule | None], width: int,
                 record_predictions: bool) -> None:
        self.layers, self.rules, self.width = layers, rules, width
        self.record_predictions = record_predictions
        self.valid: torch.Tensor | None = None  # flat bool over the rows of the current forward
        self.forms: set[str] = set()
        self._suspended = False
        self._handles: list[Any] = []
        self._reset()

    def _reset(self) -> None:
        L = len(self.layers)
        self.ids: list[np.ndarray | None] = [None] * L
        self.weights: list[np.ndarray | None] = [None] * L
        self.pred: list[np.ndarray | None] = [None] * L

    def install(self) -> None:
        for layer, rule in zip(self.layers, self.rules, strict=True):
            self._handles.append(layer.router.register_forward_hook(self._router_hook(layer, rule)))
        if self.record_predictions:
            for layer in self.layers[:-1]:
                self._handles.append(layer.decoder_layer.register_forward_hook(self._layer_hook(layer)))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextmanager
    def capture(self, valid: torch.Tensor) -> Any:
        self._reset()
        self.valid = valid.reshape(-1).cpu()
        try:
            yield
        finally:
            self.valid = None

    def _decode(self, out: Any, layer: MoeLayer) -> tuple[np.ndarray, np.ndarray]:
        ids, w, form = decode_router_output(out, layer, self.rules[layer.index])
        self.forms.add(form)
        if ids.shape[1] > self.width:
            raise UnsupportedModelError(f"{layer.router_path} chose {ids.shape[1]} experts, more than top_k "
                                        f"{self.width}")
        if ids.shape[1] < self.width:  # narrower layer: pad
            pad = self.width - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=PAD)
            w = np.pad(w, ((0, 0), (0, pad)))
        return ids, w

    def _router_hook(self, layer: MoeLayer, rule: RoutingRule | None) -> Any:
        def hook(module: nn.Module, inputs: Any, out: Any) -> None:
            if self.valid is None or self._suspended:
                return
            ids, w = self._decode(out, layer)
            if ids.shape[0] != self.valid.numel():
                raise RecordError(f"{layer.router_path} routed {ids.shape[0]} tokens, expected "
                                  f"{self.valid.numel()} (batch x sequence)", field="router")
            keep = self.valid.numpy()
            self.ids[layer.index] = ids[keep]
            self.weights[layer.index] = w[keep]
        return hook

    def _layer_hook(self, layer: MoeLayer) -> Any:
        nxt = self.layers[layer.index + 1]

        def hook(module: nn.Module, inputs: Any, out: Any) -> None:
            if self.valid is None or self._suspended:
                return
            h = out[0] if isinstance(out, (tuple, list)) else out
            h = h.reshape(-1, h.shape[-1])[self.valid.to(h.device)]
            self._suspended = True  # the speculative router call must not count as routing
            try:
                x = nxt.pre_norm(h) if nxt.pre_norm is not None else h
                ids, _ = self._decode(nxt.router(x), nxt)
            finally:
                self._suspended = False
            self.pred[nxt.index] = ids
        return hook

    def rows(self) -> dict[str, np.ndarray]:
        n = int(self.valid.sum()) if self.valid is not None else 0
        missing = [self.layers[i].router_path for i, a in enumerate(self.ids) if a is None]
        if missing:
            raise RecordError(f"routers did not run in this forward pass: {', '.join(missing)}",
                              field="router")
        rows = {"experts": np.stack(self.ids, axis=1), "gate_weights": np.stack(self.weights, axis=1)}
        if self.record_predictions:
            pred = np.full((n, len(self.layers), self.width), PAD, np.int16)
            for i, p in enumerate(self.pred):
                if p is not None:
                    pred[:, i] = p
                elif i > 0:
                    raise RecordError(f"no prediction for MoE layer {i}", field="predicted")
            rows["predicted"] = pred
        return rows


def _shared_experts(model: nn.Module, layers: list[MoeLayer]) -> dict[str, Any]:
    config = getattr(model, "config", None)
    n = getattr(config, "n_shared_experts", None)
    block = layers[0].router_path.rsplit(".", 1)[0]
    names = [n_ for n_ in ("shared_experts", "shared_expert", "shared_mlp")
             if hasattr(model.get_submodule(block), n_) or hasattr(layers[0].decoder_layer, n_)]
    if n is None and not names:
        return {}
    out: dict[str, Any] = {"shared_experts": int(n) if n is not None else 1,
                           "shared_experts_note": "always active, not recorded (not routed)"}
    if names:
        out["shared_expert_module"] = names[0]
    return out


def record_routing(model: nn.Module, prompts: Sequence[Any], *, max_new_tokens: int, batch_size: int = 1,
                   record_predictions: bool = False, out: str | os.PathLike[str] | None = None,
                   chunk_steps: int = DEFAULT_CHUNK_STEPS, model_name: str | None = None,
                   eos_token_id: int | None = None) -> Trace:
    """Decode ``prompts`` greedily with ``model`` and return the routing trace (see the module docstring).

    ``prompts``: token-id lists or 1-D tensors. With ``out`` the trace is streamed to that
    safetensors file and returned memory-mapped; otherwise it is built in memory.
    """
    if max_new_tokens < 0:
        raise RecordError(f"max_new_tokens must be >= 0, got {max_new_tokens}", field="max_new_tokens")
    if batch_size < 1:
        raise RecordError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    reqs = _as_prompts(prompts, vocab)
    layers = find_moe_layers(model)
    rules = [layer_rule(config, layer) for layer in layers]
    width = max(layer.top_k for layer in layers)
    num_experts = max(layer.num_experts for layer in layers)
    shapes: dict[str, tuple[int, ...]] = {"experts": (len(layers), width), "gate_weights": (len(layers), width)}
    if record_predictions:
        shapes["predicted"] = (len(layers), width)
    shapes.update(request_id=(), position=(), phase=())
    hooks = _Hooks(layers, rules, width, record_predictions)
    device = next(model.parameters()).device
    pad_id = int(getattr(config, "pad_token_id", None) or 0)
    keep_arg = next((a for a in ("logits_to_keep", "num_logits_to_keep")
                     if a in inspect.signature(model.forward).parameters), None)
    created = now_iso()
    was_training = model.training
    model.eval()  # routers add jitter / sample (Phi-MoE) in training mode
    hooks.install()
    writer = ChunkedTraceWriter(out, shapes, chunk_steps=chunk_steps)
    try:
        with torch.inference_mode():
            for start in range(0, len(reqs), batch_size):
                _run_batch(model, reqs[start:start + batch_size], start, max_new_tokens, eos_token_id, pad_id,
                           device, keep_arg, hooks, writer)
    except BaseException:
        writer.abort()
        raise
    finally:
        hooks.remove()
        model.train(was_training)

    rule = next((r for r in rules if r is not None), None)
    name = model_name or getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or \
        type(model).__name__
    extra: dict[str, Any] = {
        "model_type": getattr(config, "model_type", None),
        "architecture": type(model).__name__,
        "num_model_layers": getattr(config, "num_hidden_layers", None),
        "moe_layer_indices": [layer.model_layer for layer in layers],
        "router_module": sorted({type(layer.router).__name__ for layer in layers}),
        "router_output": sorted(hooks.forms),
        "routing_rule": None if rule is None else rule.describe(),
        "gate_weight_sum": None if rule is None else rule.weight_sum,
        "num_requests": len(reqs),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "eos_token_id": eos_token_id,
        "decoding": "greedy, KV cache; every generated token fed back and recorded",
        "padding": "left padding with attention mask and position_ids; padded positions not recorded",
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "transformers_version": _version("transformers"),
        "torch_version": torch.__version__,
        **_shared_experts(model, layers),
    }
    if record_predictions:
        extra["predictions"] = {
            "input": PREDICTION_INPUT, "layer0": "-1 (no prediction)",
            # None where a layer has no recognised pre-MoE norm: its router then sees the raw stream.
            "pre_norm": [None if layer.pre_norm is None else type(layer.pre_norm).__name__
                         for layer in layers[1:]]}
    meta = TraceMeta(model=str(name), num_layers=len(layers), num_experts=num_experts, top_k=width,
                     source="recorded", generator="traces.record", generator_version=RECORDER_VERSION,
                     created_at=created, notes="recorded with traces.record.record_routing", extra=extra)
    return writer.close(meta)


def _run_batch(model: nn.Module, batch: list[torch.Tensor], first_request: int, max_new_tokens: int,
               eos_token_id: int | None, pad_id: int, device: torch.device, keep_arg: str | None,
               hooks: _Hooks, writer: ChunkedTraceWriter) -> None:
    B = len(batch)
    lens = torch.tensor([len(p) for p in batch])
    S = int(lens.max())
    ids = torch.full((B, S), pad_id, dtype=torch.int64)
    mask = torch.zeros((B, S), dtype=torch.int64)
    for b, p in enumerate(batch):
        ids[b, S - len(p):] = p
        mask[b, S - len(p):] = 1
    # Positions count real tokens only, so a left-padded prompt is positioned as if alone.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = {keep_arg: 1} if keep_arg else {}
    requests = torch.arange(first_request, first_request + B)
    with hooks.capture(mask.bool()):
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                    use_cache=True, **kw)
        rows = hooks.rows()
    n = int(mask.sum())
    writer.append({**rows, "request_id": np.repeat(requests.numpy(), lens.numpy()),
                   "position": pos[mask.bool()].numpy(), "phase": np.full(n, PREFILL, np.int8)})
    past = out.past_key_values
    nxt = out.logits[:, -1, :].argmax(-1).cpu()
    alive = torch.ones(B, dtype=torch.bool)
    cur = lens - 1
    for _ in range(max_new_tokens):
        cur = cur + 1
        mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.int64)], dim=1)
        with hooks.capture(alive):
            out = model(input_ids=nxt[:, None].to(device), attention_mask=mask.to(device),
                        position_ids=cur[:, None].to(device), past_key_values=past, use_cache=True, **kw)
            rows = hooks.rows()
        m = int(alive.sum())
        writer.append({**rows, "request_id": requests[alive].numpy(), "position": cur[alive].numpy(),
                       "phase": np.full(m, DECODE, np.int8)})
        if eos_token_id is not None:
            alive &= nxt != eos_token_id
            if not bool(alive.any()):
                break
        past = out.past_key_values
        nxt = out.logits[:, -1, :].argmax(-1).cpu()
