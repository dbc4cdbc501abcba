"""The routing trace: which experts every token used at every MoE layer.

A trace of T steps (tokens, or batched decode steps) over L MoE layers stores

* ``experts``       int16 ``[T, L, K]``; ``-1`` pads rows narrower than K (batch unions, dropped
                    tokens); K is top-k, or the union width of a batched trace;
* ``gate_weights``  optional float32 ``[T, L, K]`` (the router's weight for each chosen expert,
                    0 at pads);
* ``request_id``    optional int64 ``[T]``: which request (sequence) the step belongs to;
* ``position``      optional int32 ``[T]``: token position inside its request;
* ``phase``         optional int8 ``[T]``: ``PREFILL`` (0) or ``DECODE`` (1);
* ``domain``        optional int16 ``[T]``: a dataset / topic label per step (names in metadata);
* ``predicted``     optional int16 ``[T, L, K']``: the experts a *speculative* router predicted for
                    layer ``l`` from layer ``l-1``'s hidden state (``-1`` where no prediction, e.g.
                    layer 0); replayed by the pre-gated prefetcher.

plus :class:`TraceMeta`. The replay order of the simulator is the *layer clock*: global step
``t * L + l`` serves layer ``l`` of token ``t``.

Arrays may be ``np.memmap`` views of a file (see :mod:`traces.io`); nothing here copies them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from moesim.traces.errors import (
    DuplicateExpertError,
    ExpertIdRangeError,
    GateWeightError,
    MissingMetadataError,
    ShapeMismatchError,
)

PAD = -1
PREFILL = 0
DECODE = 1
PHASE_NAMES = {PREFILL: "prefill", DECODE: "decode"}

EXPERT_DTYPE = np.int16
GATE_DTYPE = np.float32
STEP_FIELDS = {"request_id": np.int64, "position": np.int32, "phase": np.int8, "domain": np.int16}
# Validation walks big (memory-mapped) traces in chunks of this many steps to bound memory.
VALIDATE_CHUNK_STEPS = 1 << 16

FORMAT_NAME = "moesim.trace"
FORMAT_VERSION = "1"
# A cache key is ``l * E + e`` and the simulators keep tables of every key; this many keys (a 128 MiB
# int64 table) is far beyond any real model (DeepSeek-V3: 61 x 256) and stops a small file from
# claiming billions of layers and so allocations it never pays for.
MAX_KEYS = 1 << 24
_COUNT = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class TraceMeta:
    """What a trace is about. Required: model, num_layers, num_experts, top_k."""

    model: str
    num_layers: int
    num_experts: int
    top_k: int
    source: str = "unknown"  # "synthetic", "recorded", "imported:<format>"
    generator: str = ""  # the generator, recorder or importer that wrote it
    generator_version: str = ""
    created_at: str = ""
    notes: str = ""
    # Free-form extras (all values JSON-serialisable): domain names, shared experts, knobs...
    extra: Mapping[str, Any] = field(default_factory=dict)

    REQUIRED = ("model", "num_layers", "num_experts", "top_k")

    def with_updates(self, **changes: Any) -> TraceMeta:
        return dataclasses.replace(self, **changes)

    def to_strings(self) -> dict[str, str]:
        """Flat string metadata (safetensors allows only str -> str)."""
        out = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "num_layers": str(int(self.num_layers)),
            "num_experts": str(int(self.num_experts)),
            "top_k": str(int(self.top_k)),
            "source": self.source,
            "generator": self.generator,
            "generator_version": self.generator_version,
            "created_at": self.created_at,
            "notes": self.notes,
            "extra": json.dumps(dict(self.extra), sort_keys=True),
        }
        return out

    @classmethod
    def from_strings(cls, meta: Mapping[str, str] | None, *, file: str | None = None) -> TraceMeta:
        """Parse the flat string metadata exactly: every value a string, the counts plain decimal
        integers (no sign, spaces or '_'), ``extra`` a JSON object; anything else is refused."""
        from moesim.traces.strict import loads

        if meta is None:
            meta = {}
        if not isinstance(meta, Mapping):
            raise MissingMetadataError(f"metadata must be a mapping of strings, got {type(meta).__name__}",
                                       file=file, field="__metadata__")
        meta = dict(meta)
        for key, value in meta.items():
            if type(key) is not str or type(value) is not str:
                raise MissingMetadataError(f"metadata values must be strings, got {type(value).__name__} "
                                           f"{value!r:.40}", file=file, field=str(key))
        for key in cls.REQUIRED:
            if key not in meta or meta[key] == "":
                raise MissingMetadataError(f"required metadata key '{key}' is missing", file=file,
                                           field=key)
        fmt = meta.get("format", FORMAT_NAME)
        if fmt != FORMAT_NAME:
            raise MissingMetadataError(f"format {fmt!r} is not {FORMAT_NAME!r}", file=file, field="format")
        version = meta.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise MissingMetadataError(f"format_version {version!r} is not {FORMAT_VERSION!r}, the version this "
                                       "reader knows", file=file, field="format_version")
        ints = {}
        for key in ("num_layers", "num_experts", "top_k"):
            if not _COUNT.fullmatch(meta[key]):
                raise MissingMetadataError(f"metadata '{key}' is not an integer: {meta[key]!r:.40}",
                                           file=file, field=key)
            ints[key] = int(meta[key])
        extra = loads(meta.get("extra", "") or "{}", file=file, field="extra", error=MissingMetadataError)
        if type(extra) is not dict:
            raise MissingMetadataError(f"metadata 'extra' must be a JSON object, got {type(extra).__name__}",
                                       file=file, field="extra")
        return cls(model=meta["model"], source=meta.get("source", "unknown"),
                   generator=meta.get("generator", ""), generator_version=meta.get("generator_version", ""),
                   created_at=meta.get("created_at", ""), notes=meta.get("notes", ""), extra=extra, **ints)


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True, eq=False)
class Trace:
    """A validated routing trace. Build with :func:`make_trace` or read with :mod:`traces.io`."""

    experts: np.ndarray
    meta: TraceMeta
    gate_weights: np.ndarray | None = None
    request_id: np.ndarray | None = None
    position: np.ndarray | None = None
    phase: np.ndarray | None = None
    domain: np.ndarray | None = None
    predicted: np.ndarray | None = None
    file: str | None = None  # where it was read from (for error messages); None in memory

    # ---- shape -------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def width(self) -> int:
        """K: the row width (top-k, or the union width of a batched trace)."""
        return int(self.experts.shape[2])

    @property
    def num_experts(self) -> int:
        return int(self.meta.num_experts)

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        opt = [n for n in ("gate_weights", "request_id", "position", "phase", "domain", "predicted")
               if getattr(self, n) is not None]
        return (f"Trace(model={self.meta.model!r}, steps={self.num_steps}, layers={self.num_layers}, "
                f"experts={self.num_experts}, width={self.width}, optional={opt})")

    def optional_fields(self) -> dict[str, np.ndarray]:
        names = ("gate_weights", "request_id", "position", "phase", "domain", "predicted")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def num_accesses(self) -> int:
        """Expert requests in the trace (non-pad entries)."""
        return int(sum(int(np.count_nonzero(c.experts >= 0)) for c in self.iter_chunks()))

    # ---- streaming ---------------------------------------------------------------------------
    def iter_chunks(self, steps: int = VALIDATE_CHUNK_STEPS) -> Iterator[Trace]:
        """Consecutive step slices; on a memory-mapped trace only one chunk is paged in at a time."""
        for start in range(0, self.num_steps, steps):
            yield self.slice_steps(start, min(start + steps, self.num_steps))

    def slice_steps(self, start: int, stop: int) -> Trace:
        """Steps ``[start, stop)`` as a view (no copy); not re-validated."""
        sl = slice(start, stop)
        kw = {n: a[sl] for n, a in self.optional_fields().items()}
        return Trace(experts=self.experts[sl], meta=self.meta, file=self.file, **kw)

    def with_arrays(self, **changes: Any) -> Trace:
        """A validated copy with some arrays or the metadata replaced."""
        fields = {"experts": self.experts, "meta": self.meta, **self.optional_fields(), **changes}
        return make_trace(**fields)

    def phase_names(self) -> list[str]:
        return [PHASE_NAMES[int(p)] for p in np.unique(self.phase)] if self.phase is not None else []

    def request_bounds(self) -> np.ndarray:
        """Start indices of requests (a step where request_id changes), plus T at the end."""
        if self.request_id is None:
            return np.array([0, self.num_steps], dtype=np.int64)
        rid = np.asarray(self.request_id)
        starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]]) if len(rid) else np.zeros(0, np.int64)
        return np.r_[starts, self.num_steps].astype(np.int64)


def make_trace(experts: Any, meta: TraceMeta, *, gate_weights: Any = None, request_id: Any = None,
               position: Any = None, phase: Any = None, domain: Any = None, predicted: Any = None,
               file: str | None = None, validate: bool = True) -> Trace:
    """Build a :class:`Trace`, casting arrays to the canonical dtypes and validating everything."""
    experts = _as_int_array(experts, "experts", EXPERT_DTYPE, file)
    gate_weights = None if gate_weights is None else _as_float_array(gate_weights, "gate_weights", file)
    predicted = None if predicted is None else _as_int_array(predicted, "predicted", EXPERT_DTYPE, file)
    steps = {}
    for name, value in (("request_id", request_id), ("position", position), ("phase", phase),
                        ("domain", domain)):
        steps[name] = None if value is None else _as_int_array(value, name, STEP_FIELDS[name], file)
    trace = Trace(experts=experts, meta=meta, gate_weights=gate_weights, predicted=predicted, file=file,
                  **steps)
    if validate:
        validate_trace(trace)
    return trace


def _as_int_array(value: Any, name: str, dtype: Any, file: str | None) -> np.ndarray:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype == dtype:
        return arr
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            pass  # integral floats (from JSON/CSV) are accepted
        else:
            raise ShapeMismatchError(f"must hold integers, got dtype {arr.dtype}", file=file, field=name)
    info = np.iinfo(dtype)
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            bad = np.argwhere((arr < info.min) | (arr > info.max))[0]
            raise ShapeMismatchError(f"value {arr[tuple(bad)]} does not fit {np.dtype(dtype).name}",
                                     file=file, field=name, index=tuple(bad))
    return arr.astype(dtype)


def _as_float_array(value: Any, name: str, file: str | None) -> np.ndarray:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.size and not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ShapeMismatchError(f"must hold floats, got dtype {arr.dtype}", file=file, field=name)
    return arr if arr.dtype == GATE_DTYPE else arr.astype(GATE_DTYPE)


# ---- validation ------------------------------------------------------------------------------

def validate_trace(trace: Trace, chunk_steps: int = VALIDATE_CHUNK_STEPS) -> None:
    """Check every rule of the format; raise the first violation with file, field and position."""
    file, meta = trace.file, trace.meta
    validate_meta(meta, file)
    e = trace.experts
    if e.ndim != 3:
        raise ShapeMismatchError(f"must be 3-D [steps, layers, width], got shape {e.shape}", file=file,
                                 field="experts")
    if e.dtype != EXPERT_DTYPE:
        raise ShapeMismatchError(f"dtype must be int16, got {e.dtype}", file=file, field="experts")
    T, L, K = e.shape
    if L != meta.num_layers:
        raise ShapeMismatchError(f"has {L} layers but metadata num_layers={meta.num_layers}", file=file,
                                 field="experts")
    if K < 1:
        raise ShapeMismatchError("width (last axis) must be at least 1", file=file, field="experts")
    if K < meta.top_k:
        raise ShapeMismatchError(f"width {K} is smaller than metadata top_k={meta.top_k}", file=file,
                                 field="experts")
    # A row holds distinct experts, so a slot beyond num_experts could only ever be padding.
    if K > meta.num_experts:
        raise ShapeMismatchError(f"width {K} exceeds num_experts={meta.num_experts}", file=file,
                                 field="experts")
    if trace.gate_weights is not None and trace.gate_weights.shape != e.shape:
        raise ShapeMismatchError(f"shape {trace.gate_weights.shape} differs from experts {e.shape}",
                                 file=file, field="gate_weights")
    if trace.predicted is not None and (trace.predicted.ndim != 3 or trace.predicted.shape[:2] != (T, L)
                                        or trace.predicted.shape[2] > meta.num_experts):
        raise ShapeMismatchError(f"shape {trace.predicted.shape} must be [{T}, {L}, k] with k <= num_experts="
                                 f"{meta.num_experts}", file=file, field="predicted")
    if trace.predicted is not None and trace.predicted.dtype != EXPERT_DTYPE:
        raise ShapeMismatchError(f"dtype must be int16, got {trace.predicted.dtype}", file=file,
                                 field="predicted")
    for name in STEP_FIELDS:
        arr = getattr(trace, name)
        if arr is not None and arr.shape != (T,):
            raise ShapeMismatchError(f"shape {arr.shape} must be [{T}] (one value per step)", file=file,
                                     field=name)
    for start in range(0, T, chunk_steps):
        stop = min(start + chunk_steps, T)
        _validate_ids(np.asarray(e[start:stop]), "experts", meta.num_experts, start, file)
        if trace.predicted is not None:
            _validate_ids(np.asarray(trace.predicted[start:stop]), "predicted", meta.num_experts, start,
                          file)
        if trace.gate_weights is not None:
            _validate_gates(np.asarray(trace.gate_weights[start:stop]), start, file)
    if trace.phase is not None and trace.phase.size:
        bad = np.flatnonzero((trace.phase != PREFILL) & (trace.phase != DECODE))
        if bad.size:
            raise ShapeMismatchError(f"phase must be 0 (prefill) or 1 (decode), got {trace.phase[bad[0]]}",
                                     file=file, field="phase", index=int(bad[0]))


def validate_meta(meta: TraceMeta, file: str | None) -> None:
    """The metadata's own rules (positive counts within the id and key ranges, string fields)."""
    for key in ("num_layers", "num_experts", "top_k"):
        value = getattr(meta, key)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise MissingMetadataError(f"metadata '{key}' must be a positive integer, got {value!r}",
                                       file=file, field=key)
    if meta.num_experts > np.iinfo(EXPERT_DTYPE).max:
        raise MissingMetadataError(f"num_experts={meta.num_experts} exceeds the int16 id range",
                                   file=file, field="num_experts")
    if int(meta.num_layers) * int(meta.num_experts) > MAX_KEYS:  # Python integers: numpy's would wrap
        raise MissingMetadataError(f"num_layers={meta.num_layers} x num_experts={meta.num_experts} exceeds the "
                                   f"{MAX_KEYS} cache keys any model needs", file=file, field="num_layers")
    if meta.top_k > meta.num_experts:
        raise MissingMetadataError(f"top_k={meta.top_k} exceeds num_experts={meta.num_experts}", file=file,
                                   field="top_k")
    if not meta.model:
        raise MissingMetadataError("metadata 'model' is empty", file=file, field="model")
    for key in ("model", "source", "generator", "generator_version", "created_at", "notes"):
        if type(getattr(meta, key)) is not str:
            raise MissingMetadataError(f"metadata '{key}' must be a string, got {getattr(meta, key)!r:.40}",
                                       file=file, field=key)
    try:  # the metadata is stored as JSON: refuse now what could not be written later
        json.dumps(dict(meta.extra), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise MissingMetadataError(f"metadata 'extra' is not a JSON object ({exc})", file=file,
                                   field="extra") from None


def _validate_ids(ids: np.ndarray, name: str, num_experts: int, offset: int, file: str | None) -> None:
    from moesim.traces.validate_kernel import first_duplicate_row, first_out_of_range

    ids = np.ascontiguousarray(ids)
    i = first_out_of_range(ids.reshape(-1), num_experts)
    if i >= 0:
        pos = np.unravel_index(i, ids.shape)
        raise ExpertIdRangeError(
            f"expert id {ids[pos]} is outside [0, {num_experts}) and is not the pad -1",
            file=file, field=name, index=(int(pos[0]) + offset, int(pos[1]), int(pos[2])))
    if ids.shape[-1] < 2 or ids.size == 0:
        return
    r = first_duplicate_row(ids.reshape(-1, ids.shape[-1]), num_experts)
    if r >= 0:
        t, layer = divmod(r, ids.shape[1])
        row = ids[t, layer]
        values, counts = np.unique(row[row != PAD], return_counts=True)
        expert = int(values[counts > 1][0])
        raise DuplicateExpertError(f"expert {expert} appears twice in row {row.tolist()}", file=file,
                                   field=name, index=(t + offset, layer))


def _validate_gates(gates: np.ndarray, offset: int, file: str | None) -> None:
    bad = ~np.isfinite(gates) | (gates < 0)
    if bad.any():
        pos = np.argwhere(bad)[0]
        value = gates[tuple(pos)]
        why = "is not finite" if not np.isfinite(value) else "is negative"
        raise GateWeightError(f"gate weight {value} {why}", file=file, field="gate_weights",
                              index=(pos[0] + offset, pos[1], pos[2]))
