"""The unquantized baselines: fp32, fp16 and bf16 (one value per weight, no scales).

bf16 encoding rounds float32 to nearest-even (numpy keeps the uint16 bit pattern); fp16 uses
numpy's / torch's IEEE half conversion (nearest-even, overflow to Inf). No block size applies, so
any shape is accepted. Both backends are the same numpy code: there is nothing to accelerate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from moesim.kernels.formats.base import (
    BFLOAT16,
    as_float32,
    bf16_bits_to_f32,
    check_backend,
    check_out_torch,
    deliver,
    f32_to_bf16_bits,
    require,
    resolve_dtype,
    shape_array,
)

_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DenseFormat:
    name: str
    bits: int

    def bits_per_weight(self, shape: tuple[int, ...]) -> float:
        return float(self.bits)

    def encode(self, x: np.ndarray, *, backend: str = "numba") -> dict[str, np.ndarray]:
        check_backend(backend, self.name)
        x32 = as_float32(x, self.name)
        if self.name == "fp32":
            values = x32.copy()
        elif self.name == "fp16":
            values = x32.astype(np.float16)
        else:
            values = f32_to_bf16_bits(x32)
        return {"values": values, "shape": shape_array(x32.shape)}

    def decode(self, enc: Mapping[str, np.ndarray], *, dtype: Any = np.float32,
               backend: str = "numba", out: Any = None) -> Any:
        check_backend(backend, self.name)
        require(enc, ("values",), self.name)
        v = np.asarray(enc["values"])
        f32 = bf16_bits_to_f32(v) if self.name == "bf16" else v.astype(np.float32)
        result = f32_to_bf16_bits(f32) if resolve_dtype(dtype) == BFLOAT16 else f32
        return deliver(result, out, dtype, self.name, v)

    def encode_torch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"values": x.to(_TORCH[self.name])}

    def decode_torch(self, enc: Mapping[str, torch.Tensor], *, dtype: Any = torch.float32,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        values = enc["values"]
        if out is None:
            return values.to(torch.float32).to(dtype)
        want = torch.float32 if resolve_dtype(dtype) != BFLOAT16 else torch.bfloat16
        check_out_torch(out, tuple(values.shape), want, values.device, self.name)
        out.copy_(values.to(torch.float32))
        return out


FORMATS = {f.name: f for f in (DenseFormat("fp32", 32), DenseFormat("fp16", 16), DenseFormat("bf16", 16))}
