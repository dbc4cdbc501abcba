"""Expert weights on disk for the executor: a seeded synthetic checkpoint, and reading one expert's
stored bytes past the page cache.

:func:`write_synthetic_checkpoint` writes every routed expert of a model profile (its exact matrix
shapes, gated: gate, up, down) encoded in one weight format (any ``kernels`` registry name) as a
safetensors file, with the dense stand-in weights the executor needs kept out of it (they are
resident and cheap to make from the seed). The layout serves one read per expert:

* every expert's encoded tensors lie back to back in one block, in the order (gate, up, down) x
  the format's fields; each block starts on a 4 KiB boundary and is padded to a multiple of 4 KiB,
  so that ``O_DIRECT`` can read it in one aligned call. The gaps are filled by uint8 tensors named
  ``__pad__.<n>`` (safetensors requires the tensors to tile the data, as the project's reader
  checks) and the header is padded with spaces so that the data starts on a 4 KiB boundary;
* the string metadata records the model profile, the format, the seed and every matrix's shape.

The stored size of an expert is checked against :meth:`sim.profiles.ModelProfile.expert_bytes`
(the format registry's size model) when the file is written, so the executor's bytes moved and the
simulator's can be compared one for one.

:class:`ExpertFile` reads a block into a page-aligned buffer. With ``O_DIRECT`` (the default where
the file system allows it) the read goes to the device; elsewhere (tmpfs, some network file
systems) it is a buffered read followed by ``posix_fadvise(DONTNEED)`` on the range, so that the
next read of the same expert is not served from the page cache; :attr:`ExpertFile.mode` says which.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from moesim.kernels.files import atomic_path
from moesim.kernels.formats import get_format
from moesim.sim.errors import ConfigError
from moesim.sim.profiles import ModelProfile
from moesim.traces.io import read_header

ALIGN = 4096
MATRICES = ("gate", "up", "down")
# safetensors dtype names; uint16 (bfloat16 bit patterns) is written as I16, which the project's
# reader knows, and viewed back as uint16 through the "dtypes" metadata.
_DTYPE_NAMES = {np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8", np.dtype(np.uint16): "I16",
                np.dtype(np.int16): "I16", np.dtype(np.float16): "F16", np.dtype(np.float32): "F32",
                np.dtype(np.int32): "I32", np.dtype(np.int64): "I64", np.dtype(np.float64): "F64"}
MODE_DIRECT = "O_DIRECT"
MODE_FADVISE = "posix_fadvise(DONTNEED)"


def _round_up(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def expert_matrices(model: ModelProfile, layer: int, expert: int, seed: int) -> list[np.ndarray]:
    """The float32 matrices (gate, up, down: ``[I, H]``, ``[I, H]``, ``[H, I]``) of one synthetic
    expert: normal, scaled by ``1 / sqrt(fan-in)`` so that a token's activations stay of order one,
    seeded by ``(seed, layer, expert)``."""
    if model.matrices_per_expert != 3:
        raise ConfigError(f"model profile '{model.name}': the executor runs gated experts (3 matrices), "
                          f"not {model.matrices_per_expert}")
    rng = np.random.default_rng([seed, layer, expert])
    out = []
    for rows, cols in model.expert_matrix_shapes():
        m = rng.standard_normal((rows, cols), dtype=np.float32)
        m *= np.float32(1.0 / np.sqrt(cols))
        out.append(m)
    return out


def _encoded_fields(enc: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    return [(name, np.ascontiguousarray(arr)) for name, arr in enc.items() if name != "shape"]


def write_synthetic_checkpoint(path: str | os.PathLike[str], model: ModelProfile, weight_format: str, *,
                               seed: int = 0) -> Path:
    """Write every routed expert of ``model`` in ``weight_format`` (see the module docstring); atomic."""
    fmt = get_format(weight_format)
    shapes = model.expert_matrix_shapes()
    want = model.expert_bytes(weight_format)
    # The header first needs every offset, so one expert is encoded to learn the block's layout.
    probe = [_encoded_fields(fmt.encode(m)) for m in expert_matrices(model, 0, 0, seed)]
    layout = [(name, arr.dtype, arr.shape, arr.nbytes) for fields in probe for name, arr in fields]
    stored = sum(n for *_, n in layout)
    if stored != want:
        raise ConfigError(f"format {weight_format!r} stores {stored} bytes per expert of '{model.name}' but the "
                          f"size model says {want}: the executor's and the simulator's bytes would differ")
    block = _round_up(stored)
    header: dict[str, Any] = {}
    L, E = model.num_moe_layers, model.num_experts
    offset = 0
    pad = 0
    for layer in range(L):
        for e in range(E):
            at = offset
            for m, fields in zip(MATRICES, probe, strict=True):
                for name, arr in fields:
                    header[f"layers.{layer}.experts.{e}.{m}.{name}"] = {
                        "dtype": _DTYPE_NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [at, at + arr.nbytes]}
                    at += arr.nbytes
            if block > stored:
                header[f"__pad__.{pad}"] = {"dtype": "U8", "shape": [block - stored], "data_offsets": [at, offset + block]}
                pad += 1
            offset += block
    header["__metadata__"] = {
        "format": weight_format, "seed": str(seed), "model": json.dumps(model.to_dict(), sort_keys=True),
        "matrix_shapes": json.dumps([list(s) for s in shapes]), "block_bytes": str(block),
        "expert_bytes": str(stored), "writer": "moesim.sim.executor_weights",
        "dtypes": json.dumps({f"{m}.{name}": arr.dtype.str for m, fields in zip(MATRICES, probe, strict=True)
                              for name, arr in fields})}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (_round_up(8 + len(raw)) - 8 - len(raw))  # the data starts on a 4 KiB boundary
    zeros = bytes(block - stored)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for layer in range(L):
            for e in range(E):
                mats = probe if (layer, e) == (0, 0) else [_encoded_fields(fmt.encode(m))
                                                           for m in expert_matrices(model, layer, e, seed)]
                for fields in mats:
                    for _, arr in fields:
                        fh.write(arr.tobytes())
                fh.write(zeros)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


@dataclass(frozen=True)
class Field:
    """One encoded array of one matrix inside an expert's block."""

    matrix: int  # 0 gate, 1 up, 2 down
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # from the block's start
    nbytes: int


class ExpertFile:
    """A checkpoint written by :func:`write_synthetic_checkpoint`: each expert's stored bytes, read
    in one call past the page cache (:attr:`mode`), and views of them as the format's encoded dicts."""

    def __init__(self, path: str | os.PathLike[str], *, direct: bool = True) -> None:
        self.path = str(path)
        header, meta, data_start = read_header(self.path)
        if meta.get("writer") != "moesim.sim.executor_weights":
            raise ConfigError(f"{self.path}: not an executor checkpoint (write one with "
                              "sim.executor_weights.write_synthetic_checkpoint)")
        self.format = meta["format"]
        self.model = ModelProfile(**json.loads(meta["model"]))
        self.seed = int(meta["seed"])
        self.block_bytes = int(meta["block_bytes"])
        self.expert_bytes = int(meta["expert_bytes"])
        self.shapes = [tuple(s) for s in json.loads(meta["matrix_shapes"])]
        self.data_start = data_start
        self.num_layers, self.num_experts = self.model.num_moe_layers, self.model.num_experts
        dtypes = json.loads(meta["dtypes"])
        first = {k: v for k, v in header.items() if k.startswith("layers.0.experts.0.")}
        base = min(v["data_offsets"][0] for v in first.values())
        fields = []
        for key, v in first.items():
            m, name = key.split(".")[-2:]
            fields.append(Field(MATRICES.index(m), name, np.dtype(dtypes[f"{m}.{name}"]), tuple(v["shape"]),
                                v["data_offsets"][0] - base, v["data_offsets"][1] - v["data_offsets"][0]))
        self.fields = sorted(fields, key=lambda f: f.offset)
        self._fmt = get_format(self.format)
        self.mode = MODE_FADVISE
        self._fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
                self.mode = MODE_DIRECT
                probe = new_buffers(1, self.block_bytes)
                os.preadv(self._fd, [probe[0]], self.data_start)  # some file systems refuse only here
            except OSError:
                if self._fd >= 0:
                    os.close(self._fd)
                self._fd = -1
                self.mode = MODE_FADVISE
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDONLY)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ExpertFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def offset(self, key: int) -> int:
        """Byte offset of expert ``key`` (``layer * E + e``) in the file."""
        return self.data_start + int(key) * self.block_bytes

    def read(self, key: int, buf: np.ndarray) -> int:
        """Read expert ``key``'s block into ``buf`` (uint8, ``block_bytes`` long, page-aligned);
        return the bytes read."""
        off = self.offset(key)
        n = os.preadv(self._fd, [buf], off)
        if n != self.block_bytes:
            raise OSError(f"{self.path}: short read of expert {key} ({n} of {self.block_bytes} bytes)")
        if self.mode == MODE_FADVISE:
            os.posix_fadvise(self._fd, off, self.block_bytes, os.POSIX_FADV_DONTNEED)
        return n

    def drop_cache(self) -> None:
        """Ask the kernel to drop the file's cached pages (needed before buffered reads only)."""
        if hasattr(os, "posix_fadvise"):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def encoded(self, buf: np.ndarray) -> list[dict[str, Any]]:
        """The three matrices' encoded dicts as views into a block ``buf`` (no copy)."""
        out: list[dict[str, Any]] = [{"shape": np.asarray(s, np.int64)} for s in self.shapes]
        for f in self.fields:
            out[f.matrix][f.name] = buf[f.offset:f.offset + f.nbytes].view(f.dtype).reshape(f.shape)
        return out

    def decode(self, buf: np.ndarray, out: Sequence[Any]) -> None:
        """Decode the block in ``buf`` into the three float32 buffers ``out`` (the format's own
        ``decode(enc, out=...)``)."""
        for enc, target in zip(self.encoded(buf), out, strict=True):
            self._fmt.decode(enc, out=target)


def new_buffers(count: int, nbytes: int) -> list[np.ndarray]:
    """``count`` page-aligned uint8 buffers of ``nbytes`` each (one anonymous mapping; ``O_DIRECT``
    needs aligned memory), the pages touched so that the first read does not fault them in."""
    size = max(1, count) * nbytes
    area = mmap.mmap(-1, size)
    arr = np.frombuffer(area, np.uint8)
    arr[::mmap.PAGESIZE] = 0
    return [arr[i * nbytes:(i + 1) * nbytes] for i in range(count)]


__all__ = ["ALIGN", "MODE_DIRECT", "MODE_FADVISE", "ExpertFile", "expert_matrices", "new_buffers",
           "write_synthetic_checkpoint"]
