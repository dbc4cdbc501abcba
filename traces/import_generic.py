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
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from moesim.traces import strict
from moesim.traces.errors import ImportFormatError
from moesim.traces.routing_rules import RoutingRule, RoutingRuleError, apply_rule, rule_from_name
from moesim.traces.trace import EXPERT_DTYPE, GATE_DTYPE, MAX_KEYS, PAD, Trace, TraceMeta, make_trace, now_iso

IMPORTER_VERSION = "1"
_LAYER_KEY = re.compile(r"^(?:.*?[^0-9])?([0-9]+)$")
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_ORDER_COLUMNS = ("token", "step", "token_idx", "token_index", "t")
_IGNORED_COLUMNS = ("request_id", "position", "phase", "domain", "sequence_id")

PathLike = str | os.PathLike[str]


# ---- reading one source into arrays -----------------------------------------------------------

def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _pad_ragged(rows: Sequence[Any], file: str, field: str, dtype: Any, fill: Any) -> np.ndarray:
    """A list of rows (lists of numbers already checked by :func:`_check_nested` or parsed from
    cells) as a 2-D array, short rows padded with ``fill``."""
    width = 0
    for i, r in enumerate(rows):
        if not isinstance(r, (list, tuple)):
            raise ImportFormatError(f"row is {type(r).__name__}, expected a list of numbers", file=file,
                                    field=field, index=i)
        width = max(width, len(r))
    out = np.full((len(rows), width), fill, dtype=np.float64 if dtype == GATE_DTYPE else np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _check_nested(obj: Any, file: str, field: str, ints: bool) -> None:
    """Nested JSON lists of at most three levels whose leaves are all at one depth and are JSON
    integers (ids, within int64) or finite JSON numbers (weights, logits); nothing is coerced."""
    stack: list[tuple[Any, tuple[int, ...]]] = [(obj, ())]
    leaf_depth: int | None = None
    while stack:
        node, pos = stack.pop()
        if type(node) is list:
            if len(pos) == 3:
                raise ImportFormatError("lists nested deeper than [tokens, layers, k]", file=file, field=field,
                                        index=pos)
            stack.extend((v, (*pos, j)) for j, v in enumerate(node))
            continue
        if leaf_depth is None:
            leaf_depth = len(pos)
        elif len(pos) != leaf_depth:
            raise ImportFormatError(f"a number at depth {len(pos)} where others are at depth {leaf_depth}",
                                    file=file, field=field, index=pos)
        if ints:
            strict.json_int(node, file=file, field=field, index=pos, lo=-(1 << 63), hi=(1 << 63) - 1)
        else:
            strict.json_number(node, file=file, field=field, index=pos)


def _from_nested(obj: Any, file: str, field: str, dtype: Any, fill: Any) -> np.ndarray:
    """Nested JSON lists: rectangular -> array as is; ragged innermost rows -> padded."""
    ints = dtype != GATE_DTYPE
    _check_nested(obj, file, field, ints)
    if type(obj) is not list or not obj:
        raise ImportFormatError("expected nested lists of numbers", file=file, field=field)
    try:
        return np.asarray(obj, dtype=np.int64 if ints else np.float64)
    except ValueError:  # ragged: handled below
        pass
    if all(type(r) is list and (not r or type(r[0]) is not list) for r in obj):
        return _pad_ragged(obj, file, field, dtype, fill)
    if all(type(r) is list for r in obj):
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
    """Integer ids as int64. A float array is accepted only where every value is an exact integer
    (many tools dump ids as floats; nothing is rounded); booleans and other kinds are refused."""
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (np.abs(arr) >= 2.0 ** 62)
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ImportFormatError(f"expert id {arr[pos]!r} is not an integer", file=file, field=field,
                                    index=pos)
    elif arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        pos = tuple(int(i) for i in np.argwhere(arr > np.iinfo(np.int64).max)[0])
        raise ImportFormatError(f"expert id {arr[pos]} does not fit int64", file=file, field=field, index=pos)
    elif arr.dtype.kind not in "iu":
        raise ImportFormatError(f"expert ids must be integers, got dtype {arr.dtype}", file=file, field=field)
    return arr.astype(np.int64)


def _check_numeric(arr: np.ndarray, file: str, field: str) -> np.ndarray:
    """Weights or logits as float64; strings, booleans and objects are refused, not converted."""
    if arr.dtype.kind not in "iuf":
        raise ImportFormatError(f"must hold numbers, got dtype {arr.dtype}", file=file, field=field)
    return arr.astype(np.float64)


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


def _csv_rows(path: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the non-blank rows of a UTF-8 CSV file."""
    reader = csv.reader(text for _, text in strict.lines(path))
    rows = []
    while True:
        try:
            r = next(reader, None)
        except csv.Error as exc:
            raise ImportFormatError(f"not CSV ({exc})", file=path, field="row", index=reader.line_num) from None
        if r is None:
            return rows
        if r and any(c.strip() for c in r):
            rows.append((reader.line_num, r))


def _cell(c: str, dtype: Any, path: str, field: str, lineno: int) -> int | float:
    c = c.strip()
    if dtype == GATE_DTYPE:
        return strict.float_cell(c, file=path, field=field, index=lineno)
    return strict.int_cell(c, file=path, field=field, index=lineno)


def _read_csv(path: str, dtype: Any, fill: Any) -> tuple[np.ndarray | list[np.ndarray], bool]:
    rows = _csv_rows(path)
    if not rows:
        raise ImportFormatError("no rows", file=path)
    head = [c.strip().lower() for c in rows[0][1]]

    def numeric(c: str) -> bool:
        c = c.strip()
        return c == "" or _NUMBER.fullmatch(c) is not None

    has_header = not all(numeric(c) for c in rows[0][1])
    body = rows[1:] if has_header else rows
    if has_header and "layer" in head:
        return _read_long_csv(path, head, body, dtype, fill), True
    if has_header and "experts" in head and len(head) == 1:
        body = [(n, r[0].split()) for n, r in body]  # one space-separated column
    parsed = [[_cell(c, dtype, path, "row", lineno) for c in r if c.strip() != ""] for lineno, r in body]
    return _pad_ragged(parsed, path, "row", dtype, fill), False


def _read_long_csv(path: str, head: list[str], body: list[tuple[int, list[str]]], dtype: Any,
                   fill: Any) -> list[np.ndarray]:
    li = head.index("layer")
    order = next((head.index(c) for c in _ORDER_COLUMNS if c in head), None)
    id_cols = [j for j, c in enumerate(head) if j not in (li, order) and c not in _IGNORED_COLUMNS]
    if not id_cols:
        raise ImportFormatError("no column holds the ids (a header with 'layer' needs id columns or an "
                                "'experts' column)", file=path, field="columns", index=1)
    per_layer: dict[int, list[tuple[int, list[Any]]]] = {}
    for lineno, r in body:
        if len(r) != len(head):
            raise ImportFormatError(f"{len(r)} cells for {len(head)} columns", file=path, field="row",
                                    index=lineno)
        layer = strict.int_cell(r[li].strip(), file=path, field="layer", index=lineno, lo=0, hi=MAX_KEYS)
        if order is not None:
            tok = strict.int_cell(r[order].strip(), file=path, field=head[order], index=lineno, lo=0)
        else:
            tok = len(per_layer.get(layer, []))
        if len(id_cols) == 1:
            cells = r[id_cols[0]].split()
        else:
            cells = [r[j] for j in id_cols if r[j].strip() != ""]
        vals = [_cell(c, dtype, path, head[id_cols[0]] if len(id_cols) == 1 else "row", lineno) for c in cells]
        per_layer.setdefault(layer, []).append((tok, vals))
    layers = sorted(per_layer)
    if layers != list(range(len(layers))):
        raise ImportFormatError(f"layers {layers[:10]} are not 0..{len(layers) - 1}", file=path, field="layer")
    out = []
    for layer in layers:
        rows = sorted(per_layer[layer], key=lambda x: x[0])
        toks = [t for t, _ in rows]
        dup = next((a for a, b in itertools.pairwise(toks) if a == b), None)
        if dup is not None:
            raise ImportFormatError(f"token {dup} appears twice in layer {layer}", file=path, field="token",
                                    index=dup)
        out.append(_pad_ragged([v for _, v in rows], path, f"layer {layer}", dtype, fill))
    return out


def _read_file(path: PathLike, key: str | None, dtype: Any, fill: Any) -> tuple[Any, bool]:
    """(array or list of per-layer arrays, is_per_layer_list) from one file."""
    name = str(path)
    ext = Path(name).suffix.lower()
    strict.check_file(name)
    if ext == ".npy":
        return strict.load_npy(name, field="array"), False
    if ext == ".npz":
        with strict.NpzMembers(name) as members:
            return _per_layer_mapping({n: None for n in members.names}, name, key, members.read)
    if ext == ".json":
        obj = strict.loads(strict.read_text(name), file=name, field="json")
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
    for arg, value in (("num_experts", num_experts), ("top_k", top_k)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ImportFormatError(f"{arg} must be a positive integer, got {value!r}", field=arg)
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
    E = int(experts.max(initial=PAD)) + 1 if inferred else num_experts
    E = max(E, 1)
    if E > np.iinfo(EXPERT_DTYPE).max:
        raise ImportFormatError(f"expert id {E - 1} is beyond the int16 id range", file=names[0], field="experts")
    K = top_k if top_k is not None else int((experts != PAD).sum(axis=2).max(initial=1))
    kw: dict[str, Any] = {}
    if weights is not None:
        warr, wnames = _as_layers(weights, key=weights_key, layer_axis=layer_axis, dtype=GATE_DTYPE, fill=0.0,
                                  what="gate_weights")
        if len(warr) != experts.shape[1] or warr[0].shape[0] != experts.shape[0]:
            raise ImportFormatError(f"weights cover {len(warr)} layers x {warr[0].shape[0]} tokens, the ids "
                                    f"{experts.shape[1]} x {experts.shape[0]}", file=wnames[0], field="gate_weights")
        g = _widen([_check_numeric(np.asarray(w), n, f"gate_weights layer {i}")
                    for i, (w, n) in enumerate(zip(warr, wnames, strict=True))], 0.0, np.float64)
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
    return make_trace(experts, meta, request_id=request_id, position=position, phase=phase,
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
    return [_check_numeric(np.asarray(a), n, "router_logits") for a, n in zip(arrays, names, strict=True)], names


def _flat(a: np.ndarray, file: str, layer: int) -> np.ndarray:
    """A layer's logits as ``[tokens, E]`` (``[batch, seq, E]`` is flattened batch-major)."""
    if a.ndim == 3:
        a = a.reshape(-1, a.shape[-1])
    if a.ndim != 2:
        raise ImportFormatError(f"layer {layer} logits have shape {a.shape}, expected [tokens, experts]",
                                file=file, field="router_logits", index=layer)
    return _check_numeric(a, file, f"router_logits layer {layer}")


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
        b = _check_numeric(np.asarray(_to_numpy(bias)), "<memory>", "bias")
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
