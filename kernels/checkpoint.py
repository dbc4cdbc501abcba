"""Stream expert weight matrices out of safetensors checkpoints, one expert slice at a time.

A checkpoint is one ``*.safetensors`` file or a folder of them; when the folder holds
``model.safetensors.index.json`` its ``weight_map`` names the files to read (and each tensor's file),
otherwise every ``*.safetensors`` file in the folder is read, in sorted order. Files are opened with
``safetensors.safe_open`` (memory-mapped) and tensors are read through ``get_slice`` one expert at a
time, so the model is never loaded whole.

Tensor names are matched by :class:`NameRule` s: a regular expression with the named groups ``layer``
(required), ``expert`` (per-expert tensors) and ``proj`` (which projection), plus how to turn the
tensor into expert matrices. Three kinds of tensor are understood:

* ``"expert"``: one 2-D matrix per tensor (Mixtral ``...experts.{e}.w1.weight``, Qwen-MoE / OLMoE
  ``...experts.{e}.gate_proj.weight``), in bf16, fp16, fp32 or fp64.
* ``"fused"``: one tensor ``[E, ...]`` holding every expert of a layer (``mlp.experts.gate_up_proj``);
  slice ``e`` of the leading axis is expert ``e``.
* ``"gptoss_mxfp4"``: the gpt-oss ``original/`` layout, ``block.{i}.mlp.mlp1_weight.blocks`` uint8
  ``[E, rows, G, 16]`` with its companion ``.scales`` ``[E, rows, G]``; each expert slice is
  dequantized with :func:`kernels.formats.gptoss.decode_gptoss` (exact, float32).

A rule may split a matrix in two (``split``: raw proj name -> the two new names), along
``split_axis`` of the matrix as stored, either in ``"halves"`` (first half, second half) or
``"interleaved"`` (even, odd; gpt-oss ``mlp1`` rows are gate, up, gate, up, ...). A length that does
not split evenly is a :class:`CheckpointError` when ``strict``; otherwise a warning is recorded and
the matrix is kept whole under its raw proj name.

Every matrix is returned as float32 in the ``nn.Linear`` orientation ``[out, in]`` (rules with
``layout="in_out"`` are transposed), so formats quantize along the input dimension (the last axis).
bf16 cannot go through safetensors' numpy path (numpy has no bfloat16): tensors are read with the
``"pt"`` framework and widened to float32 per slice, which is exact for bf16 / fp16.

Tensors that no rule matches are listed in :attr:`Checkpoint.unmatched` and in the inventory, never
dropped silently; gpt-oss ``.scales`` read alongside their ``.blocks`` are listed as companions.
When several rules match a name, the first one wins.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from moesim.kernels.formats.gptoss import decode_gptoss, deinterleave_rows
from safetensors import safe_open

INDEX_NAME = "model.safetensors.index.json"
KINDS = ("expert", "fused", "gptoss_mxfp4")
SPLIT_MODES = ("halves", "interleaved")
LAYOUTS = ("out_in", "in_out")
# safetensors dtype strings that widen exactly (or, for F64, by rounding) to float32.
FLOAT_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
_GPTOSS_SCALES_SUFFIX = ".scales"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as configured (layout, names, shapes or dtypes)."""


@dataclass(frozen=True)
class NameRule:
    """How tensor names map to (layer, expert, proj) and how a tensor becomes expert matrices.

    Plain fields only, so a config file can describe a rule as a mapping (see :func:`resolve_rules`).
    """

    name: str
    pattern: str
    kind: str = "expert"
    proj: str = ""  # fixed proj name for patterns without a ``proj`` group
    proj_map: Mapping[str, str] = field(default_factory=dict)  # raw proj -> canonical name
    split: Mapping[str, Sequence[str]] = field(default_factory=dict)  # raw proj -> (first, second)
    split_axis: int = 0  # axis of one expert's matrix as stored (before any transpose)
    split_mode: str = "halves"
    layout: str = "out_in"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CheckpointError(f"rule {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.split_mode not in SPLIT_MODES:
            raise CheckpointError(f"rule {self.name!r}: unknown split_mode {self.split_mode!r}; "
                                  f"expected one of {SPLIT_MODES}")
        if self.layout not in LAYOUTS:
            raise CheckpointError(f"rule {self.name!r}: unknown layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.split_axis not in (0, 1, -1, -2):
            raise CheckpointError(f"rule {self.name!r}: split_axis {self.split_axis} is not an axis of a matrix")
        for raw, names in self.split.items():
            if len(tuple(names)) != 2:
                raise CheckpointError(f"rule {self.name!r}: split of {raw!r} must name two parts, got {names!r}")
        try:
            groups = re.compile(self.pattern).groupindex
        except re.error as exc:
            raise CheckpointError(f"rule {self.name!r}: bad pattern {self.pattern!r} ({exc})") from None
        if "layer" not in groups:
            raise CheckpointError(f"rule {self.name!r}: pattern {self.pattern!r} lacks the named group 'layer'")
        if self.kind == "expert" and "expert" not in groups:
            raise CheckpointError(f"rule {self.name!r}: an 'expert' rule needs the named group 'expert'")
        if "proj" not in groups and not self.proj:
            raise CheckpointError(f"rule {self.name!r}: give a 'proj' group in the pattern or a fixed proj")

    def canonical(self, raw: str) -> str:
        return self.proj_map.get(raw, raw)


_MIXTRAL = NameRule(
    name="mixtral",
    pattern=r"^model\.layers\.(?P<layer>\d+)\.block_sparse_moe\.experts\.(?P<expert>\d+)\.(?P<proj>w[123])\.weight$",
    proj_map={"w1": "gate", "w3": "up", "w2": "down"},
)
_QWEN = NameRule(
    name="qwen_moe",
    pattern=r"^model\.layers\.(?P<layer>\d+)\.mlp\.experts\.(?P<expert>\d+)\."
            r"(?P<proj>gate_proj|up_proj|down_proj)\.weight$",
    proj_map={"gate_proj": "gate", "up_proj": "up", "down_proj": "down"},
)
# transformers' fused experts: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I].
_FUSED = NameRule(
    name="fused",
    pattern=r"^model\.layers\.(?P<layer>\d+)\.mlp\.experts\.(?P<proj>gate_up_proj|down_proj)(?:\.weight)?$",
    kind="fused",
    proj_map={"down_proj": "down"},
    split={"gate_up_proj": ("gate", "up")},
    split_axis=0,
    split_mode="halves",
)
# gpt-oss in transformers' layout (bf16): gate_up_proj [E, H, 2I] with gate/up interleaved in the
# columns, down_proj [E, I, H]; both stored [in, out]. Not in "auto": its names collide with "fused".
_GPTOSS_HF = NameRule(
    name="gptoss_hf",
    pattern=r"^model\.layers\.(?P<layer>\d+)\.mlp\.experts\.(?P<proj>gate_up_proj|down_proj)$",
    kind="fused",
    proj_map={"down_proj": "down"},
    split={"gate_up_proj": ("gate", "up")},
    split_axis=1,
    split_mode="interleaved",
    layout="in_out",
)
_GPTOSS = NameRule(
    name="gptoss",
    pattern=r"^block\.(?P<layer>\d+)\.mlp\.(?P<proj>mlp1|mlp2)_weight\.blocks$",
    kind="gptoss_mxfp4",
    proj_map={"mlp2": "down"},
    split={"mlp1": ("gate", "up")},
    split_axis=0,
    split_mode="interleaved",
)

PRESETS: dict[str, tuple[NameRule, ...]] = {
    "gptoss": (_GPTOSS,),
    "gptoss_hf": (_GPTOSS_HF,),
    "mixtral": (_MIXTRAL,),
    "qwen_moe": (_QWEN,),
    "olmoe": (_QWEN,),
    "fused": (_FUSED,),
    "auto": (_GPTOSS, _MIXTRAL, _QWEN, _FUSED),
}

RuleSpec = str | NameRule | Mapping[str, Any]


def resolve_rules(rules: RuleSpec | Sequence[RuleSpec] | None) -> tuple[NameRule, ...]:
    """Rules from a preset name, a comma-separated list of names, a :class:`NameRule`, a mapping of
    its fields, or a sequence of any of these; ``None`` means ``"auto"`` (every preset but
    ``gptoss_hf``)."""
    if rules is None:
        return PRESETS["auto"]
    if isinstance(rules, (str, NameRule, Mapping)):
        rules = [rules]
    out: list[NameRule] = []
    for spec in rules:
        if isinstance(spec, NameRule):
            out.append(spec)
        elif isinstance(spec, str):
            for name in (s.strip() for s in spec.split(",") if s.strip()):
                if name not in PRESETS:
                    raise CheckpointError(f"unknown rule preset {name!r}; known presets: {', '.join(PRESETS)}")
                out.extend(PRESETS[name])
        elif isinstance(spec, Mapping):
            fields = dict(spec)
            fields["split"] = {k: tuple(v) for k, v in dict(fields.get("split") or {}).items()}
            fields["proj_map"] = dict(fields.get("proj_map") or {})
            try:
                out.append(NameRule(**fields))
            except TypeError as exc:
                raise CheckpointError(f"bad rule mapping {spec!r}: {exc}") from None
        else:
            raise CheckpointError(f"cannot read a name rule from {spec!r}")
    if not out:
        raise CheckpointError("no name rules given")
    return tuple(out)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str  # safetensors' dtype string: BF16, F32, U8, ...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ReadUnit:
    """One read: a whole per-expert tensor, or expert ``expert`` of a fused / gpt-oss tensor."""

    tensor: str
    rule: NameRule
    layer: int
    expert: int
    raw_proj: str
    companion: str = ""  # gpt-oss scales
    whole: bool = False  # a split that did not divide evenly: the matrix is kept whole (lenient mode)

    def parts(self) -> tuple[str, ...]:
        """The proj names this unit yields: the split's two, or the canonical name of the whole."""
        if self.raw_proj in self.rule.split and not self.whole:
            return tuple(self.rule.split[self.raw_proj])
        return (self.rule.canonical(self.raw_proj) if not self.whole else self.raw_proj,)


@dataclass(frozen=True)
class ExpertMatrix:
    """One expert's weight matrix, float32 ``[out, in]``."""

    layer: int
    expert: int
    proj: str
    weight: np.ndarray
    source_dtype: str  # "bfloat16", "float32", "mxfp4", ...
    tensor: str


def checkpoint_files(path: str | os.PathLike[str]) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a checkpoint, and the index's ``weight_map`` when there is one."""
    p = Path(path)
    if p.is_file():
        return [p], None
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such file or folder")
    index = p / INDEX_NAME
    if index.is_file():
        try:
            weight_map = dict(json.loads(index.read_text())["weight_map"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({exc})") from None
        files = [p / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: names file(s) that do not exist: {missing}")
        return files, weight_map
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{p}: folder holds no *.safetensors files")
    return files, None


def _split(w: np.ndarray, axis: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "interleaved":
        return deinterleave_rows(w, axis=axis)
    first, second = np.split(w, [w.shape[axis] // 2], axis=axis)
    return first, second


class Checkpoint:
    """The index of a checkpoint's tensors and the plan of expert reads; :meth:`matrices` streams them.

    Layout problems found while planning (wrong ndim, a missing gpt-oss scales tensor, a non-float
    dtype, a split that does not divide) raise :class:`CheckpointError` when ``strict``; otherwise
    they are recorded in :attr:`warnings` and the tensor is skipped (or, for a split, kept whole).
    """

    def __init__(self, path: str | os.PathLike[str], *, rules: Any = None, strict: bool = True) -> None:
        self.path = Path(path)
        self.rules = resolve_rules(rules)
        self.strict = strict
        self.warnings: list[dict[str, Any]] = []
        self.files, self.weight_map = checkpoint_files(self.path)
        self.tensors = self._index()
        self.status: dict[str, tuple[str, str]] = {}  # name -> (status, rule name)
        self.units: list[ReadUnit] = []
        self._plan()

    # ---- indexing and planning -------------------------------------------------------------------

    def _warn(self, code: str, message: str, *, tensor: str = "", layer: int = -1, expert: int = -1,
              proj: str = "") -> None:
        self.warnings.append({"code": code, "tensor": tensor, "layer": layer, "expert": expert, "proj": proj,
                              "format": "", "message": message})

    def _problem(self, code: str, message: str, **where: Any) -> None:
        if self.strict:
            raise CheckpointError(f"{self.path}: {message}")
        self._warn(code, message, **where)

    def _index(self) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        for file in self.files:
            with safe_open(str(file), framework="pt") as fh:
                for name in fh.keys():
                    sl = fh.get_slice(name)
                    info = TensorInfo(name, file, str(sl.get_dtype()), tuple(int(s) for s in sl.get_shape()))
                    if name in tensors:
                        self._problem("duplicate_tensor", f"tensor {name!r} is in both {tensors[name].file.name} "
                                      f"and {file.name}; the first is used", tensor=name)
                        continue
                    tensors[name] = info
        if self.weight_map is not None:
            for name, fname in self.weight_map.items():
                if name not in tensors:
                    self._problem("index_mismatch", f"index lists {name!r} in {fname} but no file holds it",
                                  tensor=name)
                elif tensors[name].file.name != Path(fname).name:
                    self._problem("index_mismatch", f"index puts {name!r} in {fname} but it is in "
                                  f"{tensors[name].file.name}", tensor=name)
        return tensors

    def _match(self, name: str) -> tuple[NameRule, re.Match[str]] | None:
        for rule in self.rules:
            m = re.match(rule.pattern, name)
            if m is not None:
                return rule, m
        return None

    def _plan(self) -> None:
        companions: dict[str, str] = {}  # gpt-oss scales -> the rule that reads them
        for name in sorted(self.tensors):
            hit = self._match(name)
            if hit is None:
                continue
            rule, m = hit
            groups = m.groupdict()
            layer = int(groups["layer"])
            raw = groups.get("proj") or rule.proj
            info = self.tensors[name]
            where = {"tensor": name, "layer": layer, "proj": rule.canonical(raw)}
            units = self._plan_tensor(info, rule, layer, raw, groups.get("expert"), where)
            if units is None:
                self.status[name] = ("skipped", rule.name)
                continue
            self.status[name] = ("matched", rule.name)
            self.units.extend(units)
            companions.update((u.companion, rule.name) for u in units if u.companion)
        for name, rule_name in companions.items():
            self.status[name] = ("companion", rule_name)
        self.units.sort(key=lambda u: (u.layer, u.expert, u.raw_proj, u.tensor))
        if not self.units:  # most likely rules that do not fit this checkpoint's naming
            sample = ", ".join(self.unmatched[:5])
            self._problem("no_expert_tensors", f"no tensor matched the rules {[r.name for r in self.rules]} "
                          f"({len(self.tensors)} tensors, e.g. {sample})")

    def _plan_tensor(self, info: TensorInfo, rule: NameRule, layer: int, raw: str, expert: str | None,
                     where: dict[str, Any]) -> list[ReadUnit] | None:
        shape = info.shape
        if rule.kind == "gptoss_mxfp4":
            scales = info.name[: -len(".blocks")] + _GPTOSS_SCALES_SUFFIX
            sinfo = self.tensors.get(scales)
            if sinfo is None:
                self._problem("missing_scales", f"{info.name} has no companion {scales}", **where)
                return None
            if len(shape) != 4 or shape[-1] != 16 or info.dtype != "U8" or sinfo.shape != shape[:-1] \
                    or sinfo.dtype != "U8":
                self._problem("bad_shape", f"{info.name} {info.dtype} {list(shape)} with scales {sinfo.dtype} "
                              f"{list(sinfo.shape)} is not the gpt-oss layout uint8 [E, rows, G, 16] / [E, rows, G]",
                              **where)
                return None
            rows, cols = shape[1], shape[2] * 32
            ok = self._check_split(rule, raw, (rows, cols), where)
            return [ReadUnit(info.name, rule, layer, e, raw, scales, whole=not ok) for e in range(shape[0])]
        if info.dtype not in FLOAT_DTYPES:
            self._problem("bad_dtype", f"{info.name} has dtype {info.dtype}; expert weights must be one of "
                          f"{sorted(FLOAT_DTYPES)}", **where)
            return None
        want = 2 if rule.kind == "expert" else 3
        if len(shape) != want:
            self._problem("bad_shape", f"{info.name} has shape {list(shape)}; a {rule.kind!r} tensor must be "
                          f"{want}-D", **where)
            return None
        whole = not self._check_split(rule, raw, shape[-2:], where)
        if rule.kind == "expert":
            return [ReadUnit(info.name, rule, layer, int(expert or 0), raw, whole=whole)]
        return [ReadUnit(info.name, rule, layer, e, raw, whole=whole) for e in range(shape[0])]

    def _check_split(self, rule: NameRule, raw: str, shape: tuple[int, ...], where: dict[str, Any]) -> bool:
        if raw not in rule.split:
            return True
        n = shape[rule.split_axis]
        if n % 2 == 0:
            return True
        self._problem("uneven_split", f"{where['tensor']}: axis {rule.split_axis} of the per-expert shape "
                      f"{list(shape)} has length {n}, which does not split in two; kept whole as {raw!r}",
                      **where)
        return False

    # ---- reading ---------------------------------------------------------------------------------

    @property
    def unmatched(self) -> list[str]:
        """Names of the tensors no rule matched (attention, norms, routers, embeddings, ...)."""
        return [n for n in sorted(self.tensors) if n not in self.status]

    def inventory(self) -> list[dict[str, Any]]:
        """One row per tensor in the checkpoint: where it is, what it is and what became of it."""
        rows = []
        experts: dict[str, int] = {}
        for u in self.units:
            experts[u.tensor] = experts.get(u.tensor, 0) + 1
        for name in sorted(self.tensors):
            info = self.tensors[name]
            status, rule = self.status.get(name, ("unmatched", ""))
            numel = int(np.prod(info.shape, dtype=np.int64)) if info.shape else 1
            rows.append({"tensor": name, "file": info.file.name, "dtype": info.dtype,
                         "shape": "x".join(str(s) for s in info.shape), "numel": numel, "status": status,
                         "rule": rule, "experts": experts.get(name, 0)})
        return rows

    def matrices(self, units: Iterable[ReadUnit] | None = None) -> Iterator[list[ExpertMatrix]]:
        """For each read unit (in plan order), the one or two matrices it yields. Files stay open
        (memory-mapped) for the iteration only; each yields its expert slice, nothing more."""
        with ExitStack() as stack:
            handles: dict[Path, Any] = {}

            def handle(name: str) -> Any:
                file = self.tensors[name].file
                if file not in handles:
                    handles[file] = stack.enter_context(safe_open(str(file), framework="pt"))
                return handles[file]

            for u in self.units if units is None else units:
                yield self._read(u, handle)

    def _read(self, u: ReadUnit, handle: Any) -> list[ExpertMatrix]:
        info = self.tensors[u.tensor]
        if u.rule.kind == "gptoss_mxfp4":
            blocks = handle(u.tensor).get_slice(u.tensor)[u.expert].numpy()
            scales = handle(u.companion).get_slice(u.companion)[u.expert].numpy()
            w = decode_gptoss(np.ascontiguousarray(blocks), np.ascontiguousarray(scales))
            source = "mxfp4"
        else:
            sl = handle(u.tensor).get_slice(u.tensor)
            t = sl[:] if u.rule.kind == "expert" else sl[u.expert]
            w = t.to(torch.float32).numpy()
            source = FLOAT_DTYPES[info.dtype]
        names = u.parts()
        parts = _split(w, u.rule.split_axis, u.rule.split_mode) if len(names) == 2 else (w,)
        named = list(zip(names, parts, strict=True))
        out = []
        for proj, m in named:
            m = m.T if u.rule.layout == "in_out" else m
            out.append(ExpertMatrix(u.layer, u.expert, proj, np.ascontiguousarray(m, dtype=np.float32), source,
                                    u.tensor))
        return out

    def matrix_shapes(self, u: ReadUnit) -> list[tuple[str, tuple[int, int]]]:
        """(proj, [out, in]) of the matrices a read unit yields, from the header alone."""
        shape = self.tensors[u.tensor].shape
        if u.rule.kind == "gptoss_mxfp4":
            rows, cols = shape[1], shape[2] * 32
        else:
            rows, cols = shape[-2], shape[-1]
        names = u.parts()
        if len(names) == 2:
            part = (rows // 2, cols) if u.rule.split_axis in (0, -2) else (rows, cols // 2)
            named = [(names[0], part), (names[1], part)]
        else:
            named = [(names[0], (rows, cols))]
        return [(p, (s[1], s[0]) if u.rule.layout == "in_out" else s) for p, s in named]
