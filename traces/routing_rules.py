"""Top-k routing rules: from router logits ``[tokens, E]`` to the chosen experts and their weights.

Each Mixture-of-Experts architecture picks its experts with its own rule, and recomputing the
choice with the wrong one gives wrong traces (a DeepSeek-V3 router adds a per-expert score bias and
limits the choice to a few expert groups, so plain top-k of its logits is not what it used). The
rules, as the Hugging Face implementations apply them in inference mode:

* ``softmax_topk``  softmax over all experts, top-k of the probabilities; ``renormalize`` divides
  the k weights by their sum (Mixtral always; Qwen2/3-MoE and OLMoE when ``norm_topk_prob``).
* ``topk_softmax``  top-k of the logits, softmax over those k (gpt-oss, Granite-MoE): the same ids
  as ``softmax_topk``, weights that always sum to 1.
* ``deepseek_v2``   softmax over all experts; ``greedy`` top-k, or ``group_limited_greedy``: keep
  the ``topk_group`` groups with the largest per-group maximum and top-k inside them; weights are
  the probabilities times ``scaling`` (``routed_scaling_factor``), not renormalised.
* ``deepseek_v3``   sigmoid scores; the choice ranks ``sigmoid + bias`` (``e_score_correction_bias``)
  within the ``topk_group`` groups whose two best biased scores sum highest; weights are the
  *unbiased* sigmoid scores of the chosen experts, renormalised when ``renormalize``
  (``norm_topk_prob``), times ``scaling``.
* ``sparsemixer``   Phi-MoE (top-2 only): the best expert, then the best of the rest; each weight is
  a softmax over the logits within a relative distance ``2 * jitter_eps`` of that expert's logit.

Ids come out in rank order (best first); exact ties break towards the lower expert id. Plain
numpy, so importers of logit dumps need no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RULES = ("softmax_topk", "topk_softmax", "deepseek_v2", "deepseek_v3", "sparsemixer")
DEEPSEEK_V2_METHODS = ("greedy", "group_limited_greedy")


class RoutingRuleError(ValueError):
    """A routing rule that cannot be built or applied (unknown name, bad group sizes...)."""


@dataclass(frozen=True)
class RoutingRule:
    """How one architecture turns router logits into ``top_k`` experts (see the module docstring)."""

    name: str
    top_k: int
    renormalize: bool = False
    scaling: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    topk_method: str = "greedy"  # deepseek_v2 only
    jitter_eps: float = 0.01  # sparsemixer only
    bias: np.ndarray | None = field(default=None, compare=False)  # deepseek_v3: [E]

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise RoutingRuleError(f"unknown routing rule {self.name!r} (known: {', '.join(RULES)})")
        if self.top_k < 1:
            raise RoutingRuleError(f"top_k must be >= 1, got {self.top_k}")
        if self.name == "sparsemixer" and self.top_k != 2:
            raise RoutingRuleError(f"sparsemixer routes exactly 2 experts, got top_k={self.top_k}")
        if self.name == "deepseek_v2" and self.topk_method not in DEEPSEEK_V2_METHODS:
            raise RoutingRuleError(f"deepseek_v2 topk_method must be one of {DEEPSEEK_V2_METHODS}, "
                                   f"got {self.topk_method!r}")

    def with_bias(self, bias: Any) -> RoutingRule:
        return RoutingRule(self.name, self.top_k, self.renormalize, self.scaling, self.n_group,
                           self.topk_group, self.topk_method, self.jitter_eps,
                           None if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1))

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (for ``TraceMeta.extra``)."""
        out: dict[str, Any] = {"rule": self.name, "top_k": self.top_k, "renormalize": self.renormalize}
        if self.scaling != 1.0:
            out["scaling"] = self.scaling
        if self.name in ("deepseek_v2", "deepseek_v3"):
            out.update(n_group=self.n_group, topk_group=self.topk_group)
        if self.name == "deepseek_v2":
            out["topk_method"] = self.topk_method
        if self.name == "deepseek_v3":
            out["bias"] = self.bias is not None
        if self.name == "sparsemixer":
            out["jitter_eps"] = self.jitter_eps
        return out

    @property
    def weight_sum(self) -> str:
        """What the k weights of a row add up to, in words (for metadata and docs)."""
        if self.name == "topk_softmax" or (self.name == "softmax_topk" and self.renormalize):
            return "1"
        if self.name == "deepseek_v3" and self.renormalize:
            return f"{self.scaling:g}"
        if self.name == "sparsemixer":
            return "each weight <= 1 (two separate softmaxes)"
        return f"< {self.scaling:g} (probabilities of the chosen experts, not renormalised)"


def _topk_desc(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries per row, best first, ties to the lower index."""
    # A stable sort of the negated scores keeps equal scores in index order.
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def _softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def _group_mask(scores: np.ndarray, n_group: int, topk_group: int, group_score: str) -> np.ndarray:
    """Boolean ``[N, E]``: experts inside the ``topk_group`` best groups of each row."""
    N, E = scores.shape
    if n_group < 1 or E % n_group:
        raise RoutingRuleError(f"{E} experts do not split into n_group={n_group} equal groups")
    if not 1 <= topk_group <= n_group:
        raise RoutingRuleError(f"topk_group={topk_group} must lie in [1, n_group={n_group}]")
    grouped = scores.reshape(N, n_group, E // n_group)
    if group_score == "max":
        gs = grouped.max(axis=-1)
    else:  # "top2sum": DeepSeek-V3 ranks a group by the sum of its two best (biased) scores
        if E // n_group < 2:
            raise RoutingRuleError(f"deepseek_v3 groups need >= 2 experts, got {E // n_group}")
        gs = -np.sort(-grouped, axis=-1)[..., :2].sum(axis=-1)
    keep = _topk_desc(gs, topk_group)
    gmask = np.zeros((N, n_group), dtype=bool)
    np.put_along_axis(gmask, keep, True, axis=-1)
    return np.repeat(gmask, E // n_group, axis=-1)


def _sparsemixer(logits: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(logits.shape[0])

    def pick(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        best = _topk_desc(scores, 1)[:, 0]
        top = scores[rows, best][:, None]
        factor = np.maximum(np.abs(logits), top)
        # Logits farther than 2*eps (relative) below the chosen one leave that expert's softmax.
        far = ((top - logits) / factor) > 2 * eps
        masked = np.where(far, -np.inf, scores)
        return best, _softmax(masked)[rows, best]

    first, w1 = pick(logits)
    rest = logits.copy()
    rest[rows, first] = -np.inf
    second, w2 = pick(rest)
    return np.stack([first, second], axis=1), np.stack([w1, w2], axis=1)


def apply_rule(logits: Any, rule: RoutingRule) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64 [N, k], weights float32 [N, k])`` that ``rule`` picks from ``logits [N, E]``."""
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2:
        raise RoutingRuleError(f"router logits must be 2-D [tokens, experts], got shape {x.shape}")
    N, E = x.shape
    k = rule.top_k
    if k > E:
        raise RoutingRuleError(f"top_k={k} exceeds the {E} experts of the logits")
    if N == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    if rule.name == "softmax_topk":
        p = _softmax(x)
        ids = _topk_desc(p, k)
        w = np.take_along_axis(p, ids, axis=-1)
        if rule.renormalize:
            w = w / w.sum(axis=-1, keepdims=True)
        w = w * rule.scaling
    elif rule.name == "topk_softmax":
        ids = _topk_desc(x, k)
        w = _softmax(np.take_along_axis(x, ids, axis=-1)) * rule.scaling
    elif rule.name == "deepseek_v2":
        p = _softmax(x)
        if rule.topk_method == "group_limited_greedy":
            p = np.where(_group_mask(p, rule.n_group, rule.topk_group, "max"), p, 0.0)
        ids = _topk_desc(p, k)
        w = np.take_along_axis(p, ids, axis=-1) * rule.scaling
    elif rule.name == "deepseek_v3":
        s = 1.0 / (1.0 + np.exp(-x))
        choice = s
        if rule.bias is not None:
            if rule.bias.shape != (E,):
                raise RoutingRuleError(f"bias has shape {rule.bias.shape}, expected ({E},)")
            choice = s + rule.bias
        choice = np.where(_group_mask(choice, rule.n_group, rule.topk_group, "top2sum"), choice, -np.inf)
        ids = _topk_desc(choice, k)
        w = np.take_along_axis(s, ids, axis=-1)
        if rule.renormalize:
            w = w / (w.sum(axis=-1, keepdims=True) + 1e-20)
        w = w * rule.scaling
    else:  # sparsemixer
        ids, w = _sparsemixer(x, rule.jitter_eps)
        w = w * rule.scaling
    return ids.astype(np.int64), w.astype(np.float32)


# ---- rules of known architectures ------------------------------------------------------------

_SOFTMAX_RENORM_ALWAYS = ("mixtral", "minimax", "jamba")
_SOFTMAX_RENORM_FLAG = ("qwen2_moe", "qwen3_moe", "olmoe", "flex_olmo", "qwen3_vl_moe", "qwen3_omni_moe")
_TOPK_SOFTMAX = ("gpt_oss", "granitemoe", "granitemoeshared", "granitemoehybrid", "granitemoe_swa")


def _cfg(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = config.get(n) if isinstance(config, Mapping) else getattr(config, n, None)
        if v is not None:
            return v
    return default


def rule_for_config(config: Any, *, model_type: str | None = None, bias: Any = None) -> RoutingRule:
    """The routing rule of a Hugging Face config (object or dict); ``bias`` for DeepSeek-V3 layers."""
    mt = model_type or _cfg(config, "model_type", default="")
    top_k = _cfg(config, "num_experts_per_tok", "moe_topk", "top_k")
    if top_k is None:
        raise RoutingRuleError(f"config of model_type {mt!r} has no num_experts_per_tok")
    top_k = int(top_k)
    if mt in _SOFTMAX_RENORM_ALWAYS:
        return RoutingRule("softmax_topk", top_k, renormalize=True)
    if mt in _SOFTMAX_RENORM_FLAG:
        return RoutingRule("softmax_topk", top_k, renormalize=bool(_cfg(config, "norm_topk_prob", default=False)))
    if mt in _TOPK_SOFTMAX:
        return RoutingRule("topk_softmax", top_k)
    if mt == "deepseek_v2":
        return RoutingRule("deepseek_v2", top_k, scaling=float(_cfg(config, "routed_scaling_factor", default=1.0)),
                           n_group=int(_cfg(config, "n_group", default=1)),
                           topk_group=int(_cfg(config, "topk_group", default=1)),
                           topk_method=str(_cfg(config, "topk_method", default="greedy")))
    if mt in ("deepseek_v3", "glm4_moe", "dots1"):
        return RoutingRule("deepseek_v3", top_k, renormalize=bool(_cfg(config, "norm_topk_prob", default=True)),
                           scaling=float(_cfg(config, "routed_scaling_factor", default=1.0)),
                           n_group=int(_cfg(config, "n_group", default=1)),
                           topk_group=int(_cfg(config, "topk_group", default=1))).with_bias(bias)
    if mt == "phimoe":
        return RoutingRule("sparsemixer", top_k, jitter_eps=float(_cfg(config, "router_jitter_noise", default=0.01)))
    raise RoutingRuleError(f"no routing rule known for model_type {mt!r}; name one of {', '.join(RULES)}")


def rule_from_name(name: str, top_k: int, **options: Any) -> RoutingRule:
    """A rule by name with options (``renormalize``, ``scaling``, ``n_group``, ``topk_group``,
    ``topk_method``, ``jitter_eps``, ``bias``); also accepts a known ``model_type`` as the name.

    ``deepseek_v2`` / ``deepseek_v3`` name both a rule and a model type: they take the model's
    defaults (DeepSeek-V3 renormalises unless ``renormalize=False``)."""
    if name in RULES and name not in ("deepseek_v2", "deepseek_v3"):
        bias = options.pop("bias", None)
        unknown = set(options) - {"renormalize", "scaling", "n_group", "topk_group", "topk_method", "jitter_eps"}
        if unknown:
            raise RoutingRuleError(f"unknown rule options {sorted(unknown)}")
        return RoutingRule(name, int(top_k), **options).with_bias(bias)
    unknown = set(options) - {"renormalize", "scaling", "n_group", "topk_group", "topk_method", "jitter_eps",
                              "bias"}
    if unknown:
        raise RoutingRuleError(f"unknown rule options {sorted(unknown)}")
    cfg = {"num_experts_per_tok": top_k, **{k: v for k, v in options.items() if k != "bias"}}
    if "jitter_eps" in cfg:
        cfg["router_jitter_noise"] = cfg.pop("jitter_eps")
    if "renormalize" in cfg:
        cfg["norm_topk_prob"] = cfg.pop("renormalize")
    if "scaling" in cfg:
        cfg["routed_scaling_factor"] = cfg.pop("scaling")
    return rule_for_config(cfg, model_type=name, bias=options.get("bias"))
