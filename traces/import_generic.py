"""Generic importers: expert-id arrays and router-logit dumps as other tools and datasets ship them.

:func:`import_expert_ids` reads the experts each token used, per MoE layer:

* one file per layer (a sequence of paths, in layer order), each ``[tokens, k]``; or one file for
  all layers, ``[tokens, layers, k]`` (``layer_axis=1``, the default) or ``[layers, tokens, k]``
  (``layer_axis=0``);
* ``.npy``; ``.npz`` (one member, the member ``key``, or one member per layer named with the layer
  number: ``layer_0``, ``layer1``, ``l2``, ``3``...); ``.json`` (nested lists, or an object with
  per-layer keys like the npz members, or ``key``); ``.csv`` (rows of ids, one token per row, an
  optional header; or a long form whose header has a ``layer`` column, an optional ``token`` /
  ``step`` column giving the order, and the ids in the remaining columns or one space-separated
  ``experts`` column);
* rows narrower than ``k`` (ragged JSON/CSV) are padded with ``-1``; ``weights`` reads gate weights
  in the same form.

:func:`import_router_logits` turns router logits (the ``router_logits`` a Hugging Face MoE model
returns with ``output_router_logits=True``: one ``[tokens, E]`` tensor per MoE layer) into top-k
with the architecture's own rule (:mod:`traces.routing_rules`): softmax then top-k with or without
renormalisation, top-k then softmax, DeepSeek-V2 group-limited greedy, DeepSeek-V3 sigmoid + score
bias + group-limited choice (pass the ``e_score_correction_bias`` of each layer as ``bias``), or
Phi-MoE's sparsemixer. ``valid`` drops padded rows (the flattened attention mask of the batch).

Every error names the file, the field (array member, layer, column) and the first bad position.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from moesim.traces.errors import ImportFormatError
from moesim.traces.routing_rules import RoutingRule, RoutingRuleError, apply_rule, rule_from_name
from moesim.traces.trace import EXPERT_DTYPE, GATE_DTYPE, PAD, Trace, TraceMeta, make_trace, now_iso

IMPORTER_VERSION = "1"
_LAYER_KEY = re.compile(r"^(?:.*?[^0-9])?(\d+)$")
_ORDER_COLUMNS = ("token", "step", "token_idx", "token_index", "t")
_IGNORED_COLUMNS = ("request_id", "position", "phase", "domain", "sequence_id")

PathLike = str | os.PathLike[str]


# ---- reading one source into arrays -----------------------------------------------------------

def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _pad_ragged(rows: Sequence[Any], file: str, field: str, dtype: Any, fill: Any) -> np.ndarray:
    """A list of rows (lists of numbers) as a 2-D array, short rows padded with ``fill``."""
    width = 0
    for i, r in enumerate(rows):
        if not isinstance(r, (list, tuple)):
            raise ImportFormatError(f"row is {type(r).__name__}, expected a list of numbers", file=file,
                                    field=field, index=i)
        width = max(width, len(r))
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        try:
            out[i, :len(r)] = np.asarray(r, dtype=np.float64) if dtype == GATE_DTYPE else _ints(r, file, field, i)
        except (TypeError, ValueError):
            raise ImportFormatError(f"row {r!r} holds a non-number", file=file, field=field, index=i) from None
    return out


def _ints(values: Sequence[Any], file: str, field: str, row: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size and arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            j = int(np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))[0])
            raise ImportFormatError(f"expert id {arr.flat[j]!r} is not an integer", file=file, field=field,
                                    index=(row, j))
    elif arr.size and arr.dtype.kind not in "iub":
        raise ImportFormatError(f"expert ids must be integers, got {arr.dtype}", file=file, field=field,
                                index=row)
    return arr.astype(np.int64)


def _from_nested(obj: Any, file: str, field: str, dtype: Any, fill: Any) -> np.ndarray:
    """Nested JSON lists: rectangular -> array as is; ragged innermost rows -> padded."""
    try:
        arr = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is not None:
        if dtype != GATE_DTYPE:
            return _check_integral(arr, file, field)
        return arr
    if isinstance(obj, list) and obj and all(isinstance(r, list) and (not r or not isinstance(r[0], list))
                                             for r in obj):
        return _pad_ragged(obj, file, field, dtype, fill)
    if isinstance(obj, list) and obj and all(isinstance(r, list) for r in obj):
        # [tokens][layers][k] with ragged k: pad every [layers][k] block to the widest k.
        blocks = [_pad_ragged(r, file, f"{field}[{i}]", dtype, fill) for i, r in enumerate(obj)]
        L = {b.shape[0] for b in blocks}
        if len(L) != 1:
            raise ImportFormatError(f"tokens have different numbers of layers {sorted(L)}", file=file,
                                    field=field)
        K = max(b.shape[1] for b in blocks)
        return np.stack([np.pad(b, ((0, 0), (0, K - b.shape[1])), constant_values=fill) for b in blocks])
    raise ImportFormatError("expected nested lists of numbers", file=file, field=field)


def _check_integral(arr: np.ndarray, file: str, field: str) -> np.ndarray:
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ImportFormatError(f"expert id {arr[pos]!r} is not an integer", file=file, field=field,
                                    index=pos)
    elif arr.dtype.kind not in "iub":
        raise ImportFormatError(f"expert ids must be integers, got dtype {arr.dtype}", file=file, field=field)
    return arr.astype(np.int64)


def _layer_members(names: Sequence[str]) -> list[tuple[int, str]] | None:
    """Member names that each end in a layer number, sorted by it (None if any does not)."""
    out = []
    for n in names:
        m = _LAYER_KEY.match(n)
        if m is None:
            return None
        out.append((int(m.group(1)), n))
    out.sort()
    return out


def _per_layer_mapping(members: Mapping[str, Any], file: str, key: str | None, load: Any
                       ) -> tuple[np.ndarray | list[np.ndarray], bool]:
    """(array, False) for one member, or (list of per-layer arrays, True)."""
    names = list(members)
    if key is not None:
        if key not in members:
            raise ImportFormatError(f"member '{key}' is missing (members: {names})", file=file, field=key)
        return load(key), False
    if len(names) == 1:
        return load(names[0]), False
    layered = _layer_members(names)
    if layered is None:
        raise ImportFormatError(f"several members {names} and none chosen: pass key=..., or name them "
                                "per layer (layer_0, layer_1, ...)", file=file, field="key")
    nums = [n for n, _ in layered]
    if nums != list(range(nums[0], nums[0] + len(nums))):
        raise ImportFormatError(f"per-layer members are not consecutive layers: {nums}", file=file,
                                field=layered[0][1])
    return [load(name) for _, name in layered], True


def _read_csv(path: str, dtype: Any, fill: Any) -> tuple[np.ndarray | list[np.ndarray], bool]:
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        raise ImportFormatError("no rows", file=path)
    head = [c.strip().lower() for c in rows[0]]

    def numeric(c: str) -> bool:
        try:
            float(c)
            return True
        except ValueError:
            return c.strip() == ""

    has_header = not all(numeric(c) for c in rows[0])
    body = rows[1:] if has_header else rows
    first = 2 if has_header else 1
    if has_header and "layer" in head:
        return _read_long_csv(path, head, body, first, dtype, fill), True
    parsed = []
    for i, r in enumerate(body):
        vals = [c.strip() for c in r if c.strip() != ""]
        try:
            parsed.append([float(v) if dtype == GATE_DTYPE else _int_cell(v) for v in vals])
        except ValueError:
            raise ImportFormatError(f"row {r!r} holds a non-number", file=path, field="row",
                                    index=first + i) from None
    return _pad_ragged(parsed, path, "row", dtype, fill), False


def _int_cell(v: str) -> int:
    f = float(v)
    if f != int(f):
        raise ValueError(v)
    return int(f)


def _read_long_csv(path: str, head: list[str], body: list[list[str]], first: int, dtype: Any,
                   fill: Any) -> list[np.ndarray]:
    li = head.index("layer")
    order = next((head.index(c) for c in _ORDER_COLUMNS if c in head), None)
    id_cols = [j for j, c in enumerate(head) if j not in (li, order) and c not in _IGNORED_COLUMNS]
    per_layer: dict[int, list[tuple[int, list[Any]]]] = {}
    for i, r in enumerate(body):
        lineno = first + i
        try:
            layer = int(r[li])
            tok = int(r[order]) if order is not None else len(per_layer.get(layer, []))
            if len(id_cols) == 1:
                cells = r[id_cols[0]].split()
            else:
                cells = [r[j] for j in id_cols if j < len(r) and r[j].strip() != ""]
            vals = [float(c) if dtype == GATE_DTYPE else _int_cell(c) for c in cells]
        except (ValueError, IndexError):
            raise ImportFormatError(f"row {r!r} is not 'layer[, token], ids...'", file=path, field="row",
                                    index=lineno) from None
        per_layer.setdefault(layer, []).append((tok, vals))
    layers = sorted(per_layer)
    if layers != list(range(len(layers))):
        raise ImportFormatError(f"layers {layers} are not 0..{len(layers) - 1}", file=path, field="layer")
    out = []
    for layer in layers:
        rows = sorted(per_layer[layer], key=lambda x: x[0])
        toks = [t for t, _ in rows]
        if len(set(toks)) != len(toks):
            dup = next(t for t in toks if toks.count(t) > 1)
            raise ImportFormatError(f"token {dup} appears twice in layer {layer}", file=path, field="token",
                                    index=dup)
        out.append(_pad_ragged([v for _, v in rows], path, f"layer {layer}", dtype, fill))
    return out


def _read_file(path: PathLike, key: str | None, dtype: Any, fill: Any) -> tuple[Any, bool]:
    """(array or list of per-layer arrays, is_per_layer_list) from one file."""
    name = str(path)
    ext = Path(name).suffix.lower()
    if not Path(name).exists():
        raise ImportFormatError("no such file", file=name)
    if ext == ".npy":
        try:
            return np.load(name, allow_pickle=False), False
        except (OSError, ValueError) as exc:
            raise ImportFormatError(f"cannot read npy ({exc})", file=name) from None
    if ext == ".npz":
        try:
            data = np.load(name, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ImportFormatError(f"cannot read npz ({exc})", file=name) from None
        with data:
            return _per_layer_mapping({n: None for n in data.files}, name, key, lambda n: data[n])
    if ext == ".json":
        try:
            obj = json.loads(Path(name).read_text())
        except json.JSONDecodeError as exc:
            raise ImportFormatError(f"not JSON ({exc.msg})", file=name, field="line", index=exc.lineno) from None
        if isinstance(obj, dict):
            return _per_layer_mapping(obj, name, key, lambda n: _from_nested(obj[n], name, n, dtype, fill))
        if key is not None:
            raise ImportFormatError(f"key '{key}' given but the JSON is a list", file=name, field=key)
        return _from_nested(obj, name, "root", dtype, fill), False
    if ext == ".csv":
        return _read_csv(name, dtype, fill)
    raise ImportFormatError(f"unknown extension '{ext}' (use .npy, .npz, .json or .csv)", file=name)


def _as_layers(source: Any, *, key: str | None, layer_axis: int, dtype: Any, fill: Any, what: str
               ) -> tuple[list[np.ndarray], list[str]]:
    """Per-layer 2-D arrays ``[tokens, k]`` and, per layer, the file (for messages)."""
    if _is_path(source):
        data, per_layer = _read_file(source, key, dtype, fill)
        files = str(source)
        if per_layer:
            arrays = [np.asarray(a) for a in data]
            names = [files] * len(arrays)
        else:
            arrays, names = _split_layers(np.asarray(data), files, layer_axis, what)
    elif isinstance(source, np.ndarray):
        arrays, names = _split_layers(source, "<memory>", layer_axis, what)
    elif isinstance(source, Sequence) and source and all(_is_path(s) for s in source):
        arrays, names = [], []
        for layer, p in enumerate(source):
            data, per_layer = _read_file(p, key, dtype, fill)
            if per_layer:
                raise ImportFormatError(f"file {layer} of a per-layer list holds several layers", file=str(p))
            arr = np.asarray(data)
            if arr.ndim != 2:
                raise ImportFormatError(f"a per-layer file must hold a 2-D [tokens, k] array, got shape "
                                        f"{arr.shape}", file=str(p), field=what)
            arrays.append(arr)
            names.append(str(p))
    elif isinstance(source, Sequence):
        arrays = [np.asarray(a) for a in source]
        names = [f"<memory layer {i}>" for i in range(len(arrays))]
    else:
        raise ImportFormatError(f"cannot read {type(source).__name__}: give a path, a list of paths (one per "
                                "layer), an array or a list of per-layer arrays", field=what)
    if not arrays:
        raise ImportFormatError("no layers", field=what)
    for layer, (a, n) in enumerate(zip(arrays, names, strict=True)):
        if a.ndim != 2:
            raise ImportFormatError(f"layer {layer} has shape {a.shape}, expected [tokens, k]", file=n,
                                    field=what, index=layer)
    T = {a.shape[0] for a in arrays}
    if len(T) != 1:
        counts = [a.shape[0] for a in arrays]
        bad = next(i for i, c in enumerate(counts) if c != counts[0])
        raise ImportFormatError(f"layer {bad} has {counts[bad]} tokens, layer 0 has {counts[0]}",
                                file=names[bad], field=what, index=bad)
    return arrays, names


def _split_layers(arr: np.ndarray, file: str, layer_axis: int, what: str) -> tuple[list[np.ndarray], list[str]]:
    if arr.ndim != 3:
        raise ImportFormatError(f"a file holding all layers needs a 3-D array, got shape {arr.shape} (a per-"
                                "layer array needs a list of files)", file=file, field=what)
    if layer_axis not in (0, 1):
        raise ImportFormatError(f"layer_axis must be 0 or 1, got {layer_axis}", file=file, field="layer_axis")
    arrays = [arr[:, i] if layer_axis == 1 else arr[i] for i in range(arr.shape[layer_axis])]
    return arrays, [file] * len(arrays)


def _widen(arrays: list[np.ndarray], fill: Any, dtype: Any) -> np.ndarray:
    K = max(a.shape[1] for a in arrays)
    out = np.full((arrays[0].shape[0], len(arrays), K), fill, dtype=dtype)
    for layer, a in enumerate(arrays):
        out[:, layer, :a.shape[1]] = a
    return out


# ---- expert ids -------------------------------------------------------------------------------

def import_expert_ids(source: Any, *, num_experts: int | None = None, top_k: int | None = None,
                      key: str | None = None, layer_axis: int = 1, weights: Any = None,
                      weights_key: str | None = None, model: str = "unknown", request_id: Any = None,
                      position: Any = None, phase: Any = None) -> Trace:
    """Expert ids per layer (see the module docstring) as a trace; ``num_experts`` defaults to the
    largest id + 1 and ``top_k`` to the widest row."""
    arrays, names = _as_layers(source, key=key, layer_axis=layer_axis, dtype=np.int64, fill=PAD,
                               what="experts")
    ints = []
    for layer, (a, n) in enumerate(zip(arrays, names, strict=True)):
        a = _check_integral(np.asarray(a), n, f"experts layer {layer}")
        ints.append(a)
        bad = np.argwhere((a < PAD) | ((a >= num_experts) if num_experts is not None else False))
        if bad.size:
            t, j = (int(i) for i in bad[0])
            raise ImportFormatError(f"expert id {a[t, j]} is outside [0, {num_experts}) and not the pad -1",
                                    file=n, field=f"experts layer {layer}", index=(t, j))
        # Duplicate ids in a row break the format; report them against the source file.
        srt = np.sort(a, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] != PAD)
        if dup.any():
            t = int(np.argwhere(dup)[0, 0])
            raise ImportFormatError(f"row {a[t].tolist()} names an expert twice", file=n,
                                    field=f"experts layer {layer}", index=t)
    experts = _widen(ints, PAD, np.int64)
    inferred = num_experts is None
    E = int(experts.max()) + 1 if inferred else int(num_experts)
    E = max(E, 1)
    K = int(top_k) if top_k is not None else int((experts != PAD).sum(axis=2).max(initial=1))
    kw: dict[str, Any] = {}
    if weights is not None:
        warr, wnames = _as_layers(weights, key=weights_key, layer_axis=layer_axis, dtype=GATE_DTYPE, fill=0.0,
                                  what="gate_weights")
        if len(warr) != experts.shape[1] or warr[0].shape[0] != experts.shape[0]:
            raise ImportFormatError(f"weights cover {len(warr)} layers x {warr[0].shape[0]} tokens, the ids "
                                    f"{experts.shape[1]} x {experts.shape[0]}", file=wnames[0], field="gate_weights")
        g = _widen([np.asarray(w, dtype=np.float64) for w in warr], 0.0, np.float64)
        if g.shape[2] > experts.shape[2]:
            raise ImportFormatError(f"weights are {g.shape[2]} wide, ids {experts.shape[2]}", file=wnames[0],
                                    field="gate_weights")
        g = np.pad(g, ((0, 0), (0, 0), (0, experts.shape[2] - g.shape[2])))
        kw["gate_weights"] = np.where(experts == PAD, 0.0, g).astype(GATE_DTYPE)
    files = sorted(set(names))
    meta = TraceMeta(
        model=model, num_layers=experts.shape[1], num_experts=E, top_k=K, source="imported:expert-ids",
        generator="traces.import_generic.import_expert_ids", generator_version=IMPORTER_VERSION,
        created_at=now_iso(),
        notes="num_experts inferred from the largest id" if inferred else "",
        extra={"files": [Path(f).name for f in files]})
    return make_trace(experts.astype(EXPERT_DTYPE), meta, request_id=request_id, position=position, phase=phase,
                      **kw)


# ---- router logits ----------------------------------------------------------------------------

def _load_torch(path: str) -> Any:
    import torch  # only .pt dumps need torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ImportFormatError(f"cannot read torch file ({type(exc).__name__}: {exc})", file=path) from None


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (bf16 has no numpy dtype: go through float32)
        x = x.detach().cpu()
        if not x.is_floating_point():
            return x.numpy()
        return x.float().numpy()
    return np.asarray(x)


def _logit_layers(source: Any, key: str | None, layer_axis: int) -> tuple[list[np.ndarray], list[str]]:
    if _is_path(source) and Path(str(source)).suffix.lower() in (".pt", ".pth", ".bin"):
        name = str(source)
        if not Path(name).exists():
            raise ImportFormatError("no such file", file=name)
        obj = _load_torch(name)
        if isinstance(obj, Mapping):
            k = key or "router_logits"
            if k not in obj:
                raise ImportFormatError(f"key '{k}' is missing (keys: {list(obj)})", file=name, field=k)
            obj = obj[k]
        if isinstance(obj, (list, tuple)):
            return [_flat(_to_numpy(t), name, i) for i, t in enumerate(obj)], [name] * len(obj)
        arrays, names = _split_layers(_to_numpy(obj), name, layer_axis, "router_logits")
        return arrays, names
    if isinstance(source, (list, tuple)) and source and not all(_is_path(s) for s in source):
        arrays = [_flat(_to_numpy(t), "<memory>", i) for i, t in enumerate(source)]
        return arrays, [f"<memory layer {i}>" for i in range(len(arrays))]
    if hasattr(source, "detach"):
        source = _to_numpy(source)
    arrays, names = _as_layers(source, key=key, layer_axis=layer_axis, dtype=GATE_DTYPE, fill=-np.inf,
                               what="router_logits")
    return [np.asarray(a, dtype=np.float64) for a in arrays], names


def _flat(a: np.ndarray, file: str, layer: int) -> np.ndarray:
    """A layer's logits as ``[tokens, E]`` (``[batch, seq, E]`` is flattened batch-major)."""
    if a.ndim == 3:
        a = a.reshape(-1, a.shape[-1])
    if a.ndim != 2:
        raise ImportFormatError(f"layer {layer} logits have shape {a.shape}, expected [tokens, experts]",
                                file=file, field="router_logits", index=layer)
    return a.astype(np.float64)


def import_router_logits(source: Any, *, rule: RoutingRule | str, top_k: int | None = None,
                         bias: Any = None, valid: Any = None, key: str | None = None, layer_axis: int = 0,
                         model: str = "unknown", request_id: Any = None, position: Any = None,
                         phase: Any = None, **rule_options: Any) -> Trace:
    """Router logits per MoE layer -> trace of the experts ``rule`` picks (see the module docstring).

    ``source``: the ``router_logits`` tuple (tensors or arrays ``[tokens, E]``), an array
    ``[layers, tokens, E]`` (``layer_axis=0``) or ``[tokens, layers, E]`` (``layer_axis=1``), a
    ``.npy`` / ``.npz`` / ``.pt`` file of those, or a list of per-layer files. ``rule``: a
    :class:`RoutingRule`, or a rule name / ``model_type`` plus ``top_k`` and ``rule_options``.
    ``bias``: DeepSeek-V3 score-correction bias, ``[E]`` for every layer or ``[layers, E]``.
    ``valid``: boolean ``[tokens]``; rows where it is False (padding) are dropped.
    """
    layers, names = _logit_layers(source, key, layer_axis)
    if isinstance(rule, str):
        if top_k is None:
            raise ImportFormatError(f"rule {rule!r} given by name needs top_k", field="top_k")
        try:
            rule = rule_from_name(rule, int(top_k), **rule_options)
        except RoutingRuleError as exc:
            raise ImportFormatError(str(exc), field="rule") from None
    elif rule_options or (top_k is not None and top_k != rule.top_k):
        raise ImportFormatError("with a RoutingRule object, give no top_k / rule options", field="rule")
    E = layers[0].shape[1]
    T = layers[0].shape[0]
    for i, (a, n) in enumerate(zip(layers, names, strict=True)):
        if a.shape != (T, E):
            raise ImportFormatError(f"layer {i} logits have shape {a.shape}, layer 0 has {(T, E)}", file=n,
                                    field="router_logits", index=i)
        bad = np.argwhere(np.isnan(a))
        if bad.size:
            raise ImportFormatError("NaN logit", file=n, field=f"router_logits layer {i}",
                                    index=tuple(int(x) for x in bad[0]))
    biases: list[Any] = [None] * len(layers)
    if bias is not None:
        b = np.asarray(_to_numpy(bias), dtype=np.float64)
        if b.shape == (E,):
            biases = [b] * len(layers)
        elif b.shape == (len(layers), E):
            biases = list(b)
        else:
            raise ImportFormatError(f"bias has shape {b.shape}, expected ({E},) or ({len(layers)}, {E})",
                                    field="bias")
        if rule.name != "deepseek_v3":
            raise ImportFormatError(f"bias applies to the deepseek_v3 rule only, not {rule.name}", field="bias")
    keep = None
    if valid is not None:
        keep = np.asarray(_to_numpy(valid)).reshape(-1).astype(bool)
        if keep.shape != (T,):
            raise ImportFormatError(f"valid has {keep.size} entries, the logits {T} tokens", field="valid")
    ids_out, w_out = [], []
    for i, a in enumerate(layers):
        r = rule.with_bias(biases[i]) if biases[i] is not None else rule
        x = a if keep is None else a[keep]
        try:
            ids, w = apply_rule(x, r)
        except RoutingRuleError as exc:
            raise ImportFormatError(str(exc), file=names[i], field=f"router_logits layer {i}") from None
        ids_out.append(ids)
        w_out.append(w)
    experts = np.stack(ids_out, axis=1)
    gates = np.stack(w_out, axis=1)
    desc = rule.describe()
    meta = TraceMeta(
        model=model, num_layers=len(layers), num_experts=E, top_k=rule.top_k, source="imported:router-logits",
        generator="traces.import_generic.import_router_logits", generator_version=IMPORTER_VERSION,
        created_at=now_iso(), notes=f"top-k recomputed from router logits with rule {rule.name}",
        extra={"routing_rule": desc, "gate_weight_sum": rule.weight_sum,
               "files": sorted({Path(n).name for n in names if not n.startswith("<")})})
    return make_trace(experts.astype(EXPERT_DTYPE), meta, gate_weights=gates, request_id=request_id,
                      position=position, phase=phase)
