"""Importers for routing traces recorded by other tools.

* :func:`import_olmoe_npz`   the per-event npz of OLMoE-1B-7B decode traces (one row per generated
  token and layer, with sequence / domain ids);
* :func:`import_mixtral_jsonl` the per-row JSONL of Mixtral-8x7B traces (one object per token and
  layer, several files = several datasets).

Both keep request (sequence) boundaries as ``request_id``, the token position as ``position``, the
dataset as ``domain`` (names in ``meta.extra['domains']``) and mark every step as decode, since
neither source recorded prefill.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from moesim.traces import strict
from moesim.traces.errors import ImportFormatError
from moesim.traces.trace import (
    DECODE,
    EXPERT_DTYPE,
    GATE_DTYPE,
    MAX_KEYS,
    Trace,
    TraceMeta,
    make_trace,
    now_iso,
)

IMPORTER_VERSION = "1"
OLMOE_DOMAINS = ["wikitext-103", "mbpp", "gsm8k", "arc-challenge"]
_MIXTRAL_FIELDS = ("dataset", "problem_id", "layer", "token_idx", "experts", "gating_probs")
_OLMOE_FIELDS = ("sequence_id", "domain_id", "generated_token_index", "layer_index",
                 "requested_expert_ids", "router_weights")


def import_olmoe_npz(path: str | os.PathLike[str], *, num_experts: int = 64,
                     model: str = "OLMoE-1B-7B-0924") -> Trace:
    """Read the OLMoE per-event npz into a ``[tokens, 16, 8]`` trace (requests in file order)."""
    name = str(path)
    _check_counts(1, num_experts)
    with strict.NpzMembers(name) as members:
        missing = [f for f in _OLMOE_FIELDS if f not in members.names]
        if missing:
            raise ImportFormatError(f"missing arrays {missing}", file=name, field=missing[0])
        raw = {f: members.read(f) for f in _OLMOE_FIELDS}
    for f in _OLMOE_FIELDS:
        want = "f" if f == "router_weights" else "iu"
        if raw[f].dtype.kind not in want:
            raise ImportFormatError(f"dtype {raw[f].dtype} is not {'a float' if want == 'f' else 'an integer'} "
                                    "dtype", file=name, field=f)
    for f, lo, hi in (("sequence_id", -(1 << 62), 1 << 62), ("generated_token_index", 0, 1 << 31),
                      ("layer_index", 0, 1 << 24), ("domain_id", 0, len(OLMOE_DOMAINS) - 1)):
        arr = raw[f]
        bad = np.flatnonzero((arr < lo) | (arr > hi)) if arr.size else np.zeros(0, np.int64)
        if bad.size:
            raise ImportFormatError(f"value {arr[bad[0]]} is outside [{lo}, {hi}]", file=name, field=f,
                                    index=int(bad[0]))
    seq = raw["sequence_id"].astype(np.int64)
    dom = raw["domain_id"].astype(np.int16)
    tok = raw["generated_token_index"].astype(np.int64)
    layer = raw["layer_index"].astype(np.int64)
    ids = raw["requested_expert_ids"]
    weights = raw["router_weights"]
    if layer.size == 0:
        raise ImportFormatError("no events", file=name, field="layer_index")
    n = len(layer)
    for field, arr in (("sequence_id", seq), ("domain_id", dom), ("generated_token_index", tok)):
        if arr.shape != (n,):
            raise ImportFormatError(f"shape {arr.shape} differs from layer_index ({n},)", file=name,
                                    field=field)
    if ids.ndim != 2 or ids.shape[0] != n or weights.shape != ids.shape or not 1 <= ids.shape[1] <= num_experts:
        raise ImportFormatError(f"requested_expert_ids {ids.shape} and router_weights {weights.shape} "
                                f"must both be [{n}, top_k] with 1 <= top_k <= {num_experts}", file=name,
                                field="requested_expert_ids")
    # Checked in file order so the error names the event (row) of the file, not a trace index.
    _check_rows(ids, weights, num_experts, name, ("requested_expert_ids", "router_weights"))
    n_layers = int(layer.max()) + 1
    top_k = ids.shape[1]
    # Events are (sequence, token, layer) in file order; sort defensively by that key.
    order = np.lexsort((layer, tok, seq))
    seq, dom, tok, layer, ids, weights = seq[order], dom[order], tok[order], layer[order], ids[order], \
        weights[order]
    if len(seq) % n_layers:
        raise ImportFormatError(f"{len(seq)} events are not a multiple of {n_layers} layers", file=name,
                                field="layer_index")
    T = len(seq) // n_layers
    expect = np.tile(np.arange(n_layers), T)
    bad = np.flatnonzero(layer != expect)
    if bad.size:
        raise ImportFormatError(f"token at event {order[bad[0]]} lacks layer {expect[bad[0]]}", file=name,
                                field="layer_index", index=int(order[bad[0]]))
    step_seq = seq[::n_layers]
    if np.any(seq.reshape(T, n_layers) != step_seq[:, None]):
        raise ImportFormatError("a token's layers span two sequences", file=name, field="sequence_id")
    meta = TraceMeta(
        model=model, num_layers=n_layers, num_experts=num_experts, top_k=top_k,
        source="imported:olmoe-npz", generator="traces.importers.import_olmoe_npz",
        generator_version=IMPORTER_VERSION, created_at=now_iso(),
        notes=f"from {Path(name).name}; decode only; router weights are softmax over all experts",
        extra={"domains": OLMOE_DOMAINS, "gate_normalisation": "softmax-all-experts"})
    return make_trace(ids.reshape(T, n_layers, top_k).astype(EXPERT_DTYPE), meta,
                      gate_weights=weights.reshape(T, n_layers, top_k).astype(GATE_DTYPE),
                      request_id=step_seq, position=tok[::n_layers], phase=np.full(T, DECODE, np.int8),
                      domain=dom[::n_layers], file=name)


def _check_counts(num_layers: int, num_experts: int) -> None:
    """The caller's layer and expert counts, checked before they size anything."""
    for key, value in (("num_layers", num_layers), ("num_experts", num_experts)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImportFormatError(f"{key} must be a positive integer, got {value!r}", field=key)
    if num_experts > np.iinfo(EXPERT_DTYPE).max or num_layers * num_experts > MAX_KEYS:
        raise ImportFormatError(f"num_layers={num_layers} x num_experts={num_experts} is beyond any model",
                                field="num_layers")


def _check_rows(ids: np.ndarray, weights: np.ndarray, num_experts: int, file: str,
                fields: tuple[str, str]) -> None:
    """Expert ids in range and distinct per row, weights finite and >= 0; errors name the row."""
    ids = np.asarray(ids, np.int64)
    bad_ids = ((ids < 0) | (ids >= num_experts)).any(axis=1)
    srt = np.sort(ids, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    bad_w = (~np.isfinite(weights) | (weights < 0)).any(axis=1)
    for bad, field, why in ((bad_ids, fields[0], f"outside [0, {num_experts})"),
                            (dup, fields[0], "repeat an expert"), (bad_w, fields[1], "must be finite and >= 0")):
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            values = (ids if field == fields[0] else weights)[r].tolist()
            raise ImportFormatError(f"{values} {why}", file=file, field=field, index=r)


def _check_row(experts: list[int], probs: list[float], num_experts: int, file: str, line: int) -> None:
    """The same checks for one JSONL row (plain Python: numpy per row would dominate the import)."""
    if any(not 0 <= e < num_experts for e in experts):
        raise ImportFormatError(f"expert ids {experts} outside [0, {num_experts})", file=file, field="experts",
                                index=line)
    if len(set(experts)) != len(experts):
        raise ImportFormatError(f"expert ids {experts} repeat an expert", file=file, field="experts",
                                index=line)
    if any(not math.isfinite(p) or p < 0 for p in probs):
        raise ImportFormatError(f"gating_probs {probs} must be finite and >= 0", file=file,
                                field="gating_probs", index=line)


def import_mixtral_jsonl(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *,
                         num_layers: int = 32, num_experts: int = 8,
                         model: str = "Mixtral-8x7B-Instruct") -> Trace:
    """Read one or more Mixtral per-row JSONL files into one trace.

    Each (dataset, problem_id) becomes a request. The collector dropped rows whose two weights were
    exactly 0.5 and renumbered tokens per layer, so layers of one request can differ by a few rows;
    rows are aligned per layer by ``token_idx`` and each request is cut to its shortest layer (the
    number of tokens dropped is kept in ``meta.extra['dropped_rows']``).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    _check_counts(num_layers, num_experts)
    per_request: dict[tuple[str, int], dict[int, dict[int, tuple[list[int], list[float]]]]] = {}
    domains: list[str] = []
    origin: dict[tuple[str, int], str] = {}  # the file that first named each request
    top_k = 0
    for path in sorted(str(p) for p in paths):
        for lineno, line in strict.lines(path):
            if not line.strip():
                continue
            row = strict.json_object(strict.loads(line, file=path, field="line", index=lineno), file=path,
                                     field="line", index=lineno)
            missing = [k for k in _MIXTRAL_FIELDS if k not in row]
            if missing:
                raise ImportFormatError(f"row has no {missing[0]!r}", file=path, field="row", index=lineno)
            key = (strict.json_str(row["dataset"], file=path, field="dataset", index=lineno),
                   strict.json_int(row["problem_id"], file=path, field="problem_id", index=lineno))
            layer = strict.json_int(row["layer"], file=path, field="layer", index=lineno, lo=0, hi=num_layers - 1)
            tok = strict.json_int(row["token_idx"], file=path, field="token_idx", index=lineno, lo=0)
            experts = strict.json_int_list(row["experts"], file=path, field="experts", index=lineno,
                                           max_len=num_experts)
            probs = strict.json_number_list(row["gating_probs"], file=path, field="gating_probs", index=lineno)
            if len(experts) != len(probs):
                raise ImportFormatError("experts and gating_probs differ in length", file=path,
                                        field="gating_probs", index=lineno)
            _check_row(experts, probs, num_experts, path, lineno)
            top_k = max(top_k, len(experts))
            if key[0] not in domains:
                domains.append(key[0])
            origin.setdefault(key, path)
            rows = per_request.setdefault(key, defaultdict(dict))[layer]
            if tok in rows:  # keeping either silently would pick one of two routings
                raise ImportFormatError(f"request {key[0]}/{key[1]} layer {layer} token {tok} appears twice",
                                        file=path, field="token_idx", index=lineno)
            rows[tok] = (experts, probs)
    experts_out, gates_out, req_out, pos_out, dom_out = [], [], [], [], []
    dropped = 0
    for rid, key in enumerate(sorted(per_request)):
        layers = per_request[key]
        counts = [len(layers.get(layer, {})) for layer in range(num_layers)]
        if min(counts) == 0:
            raise ImportFormatError(f"request {key[0]}/{key[1]} has no rows for layer {counts.index(0)}",
                                    file=origin[key], field="layer")
        n_tok = min(counts)
        dropped += sum(counts) - n_tok * num_layers
        e = np.full((n_tok, num_layers, top_k), -1, EXPERT_DTYPE)
        g = np.zeros((n_tok, num_layers, top_k), GATE_DTYPE)
        for layer in range(num_layers):
            rows = layers[layer]
            for i, tok in enumerate(sorted(rows)[:n_tok]):
                ids, probs = rows[tok]
                e[i, layer, :len(ids)] = ids
                g[i, layer, :len(probs)] = probs
        experts_out.append(e)
        gates_out.append(g)
        req_out.append(np.full(n_tok, rid, np.int64))
        pos_out.append(np.arange(n_tok))
        dom_out.append(np.full(n_tok, domains.index(key[0]), np.int16))
    if not experts_out:
        raise ImportFormatError("no rows found", file=",".join(str(p) for p in paths))
    meta = TraceMeta(
        model=model, num_layers=num_layers, num_experts=num_experts, top_k=top_k,
        source="imported:mixtral-jsonl", generator="traces.importers.import_mixtral_jsonl",
        generator_version=IMPORTER_VERSION, created_at=now_iso(),
        notes="decode only; gating probabilities renormalised over the top-k",
        extra={"domains": domains, "requests": [f"{d}/{p}" for d, p in sorted(per_request)],
               "dropped_rows": int(dropped), "gate_normalisation": "softmax-top-k"})
    T = sum(len(r) for r in req_out)
    return make_trace(np.concatenate(experts_out), meta, gate_weights=np.concatenate(gates_out),
                      request_id=np.concatenate(req_out), position=np.concatenate(pos_out),
                      phase=np.full(T, DECODE, np.int8), domain=np.concatenate(dom_out))


def shared_data_dir() -> Path | None:
    """The ``../shared/data`` folder beside the repository (or ``$MOESIM_SHARED_DATA``), if present."""
    env = os.environ.get("MOESIM_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None
