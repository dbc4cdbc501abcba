"""``moesim-record``: record the routing of a locally saved Hugging Face MoE model.

Usage (key=value arguments)::

    moesim-record model=PATH prompts=FILE out=trace.safetensors \
        [max_new_tokens=32] [batch_size=1] [predictions=false] [tokenizer=PATH] \
        [dtype=float32] [chunk_steps=4096] [eos_token_id=N] [model_name=NAME] [device=cpu]

``model`` is a directory written by ``save_pretrained`` (nothing is downloaded: a hub name is
refused). ``prompts`` is either JSONL, one prompt per line as a list of token ids (or an object with
``input_ids`` / ``tokens``), or plain text, one prompt per non-empty line, tokenized with the
tokenizer at ``tokenizer`` (default: the model directory).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moesim.traces.errors import TraceError

# Hub kernels would replace layers with downloaded code; this project also has its own top-level
# package named `kernels`, which transformers must never take for Hugging Face's. Nothing is fetched.
os.environ.setdefault("USE_HUB_KERNELS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

USAGE = ("usage: moesim-record model=PATH prompts=FILE out=trace.safetensors [max_new_tokens=N] "
         "[batch_size=B] [predictions=true|false] [tokenizer=PATH] [dtype=float32|bfloat16|float16] "
         "[chunk_steps=N] [eos_token_id=N] [model_name=NAME] [device=cpu|cuda]")
REQUIRED = ("model", "prompts", "out")
DEFAULTS: dict[str, str] = {"max_new_tokens": "32", "batch_size": "1", "predictions": "false", "tokenizer": "",
                            "dtype": "float32", "chunk_steps": "4096", "eos_token_id": "", "model_name": "",
                            "device": "cpu"}


class CliError(TraceError):
    """A bad command line or input file."""


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    args = dict(DEFAULTS)
    for i, a in enumerate(argv):
        key, sep, value = a.partition("=")
        key = key.lstrip("+")  # Hydra's "+key=value" spelling is accepted too
        if not sep or not key:
            raise CliError(f"argument {a!r} is not key=value", field="argv", index=i)
        if key not in REQUIRED and key not in DEFAULTS:
            raise CliError(f"unknown key {key!r} (known: {', '.join((*REQUIRED, *DEFAULTS))})", field=key)
        args[key] = value
    missing = [k for k in REQUIRED if not args.get(k)]
    if missing:
        raise CliError(f"missing {', '.join(missing)}", field=missing[0])
    return args


def _int(args: dict[str, str], key: str) -> int:
    try:
        return int(args[key])
    except ValueError:
        raise CliError(f"{key}={args[key]!r} is not an integer", field=key) from None


def _bool(args: dict[str, str], key: str) -> bool:
    v = args[key].strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise CliError(f"{key}={args[key]!r} is not true/false", field=key)


def _local_dir(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise CliError(f"{what} {path!r} is not a local directory; recording loads models saved locally with "
                       "save_pretrained only (no downloads): fetch it to a folder first and pass that path",
                       field=what)
    return p


def read_prompts(path: str, tokenizer_dir: Path | None) -> list[list[int]]:
    """Token-id prompts from JSONL (lists of ids) or from text lines (tokenized)."""
    p = Path(path)
    if not p.is_file():
        raise CliError("no such prompts file", file=path, field="prompts")
    lines = p.read_text().splitlines()
    if p.suffix.lower() == ".jsonl":
        out = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CliError(f"not JSON ({exc.msg})", file=path, field="line", index=lineno) from None
            if isinstance(obj, dict):
                obj = obj.get("input_ids", obj.get("tokens"))
            if not isinstance(obj, list) or not obj or not all(isinstance(t, int) and not isinstance(t, bool)
                                                               for t in obj):
                raise CliError("expected a non-empty list of integer token ids (or {\"input_ids\": [...]})",
                               file=path, field="line", index=lineno)
            out.append(obj)
        if not out:
            raise CliError("no prompts", file=path, field="prompts")
        return out
    if tokenizer_dir is None:
        raise CliError("text prompts need a tokenizer: pass tokenizer=PATH", file=path, field="tokenizer")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot load a tokenizer from {tokenizer_dir} ({exc})", field="tokenizer") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        ids = tok(line)["input_ids"]
        if not ids:
            raise CliError("line tokenizes to no tokens", file=path, field="line", index=lineno)
        out.append([int(t) for t in ids])
    if not out:
        raise CliError("no prompts", file=path, field="prompts")
    return out


def run(args: dict[str, str]) -> Any:
    import torch
    from moesim.traces.record import record_routing
    from transformers import AutoModelForCausalLM

    model_dir = _local_dir(args["model"], "model")
    tok_dir = _local_dir(args["tokenizer"], "tokenizer") if args["tokenizer"] else model_dir
    prompts = read_prompts(args["prompts"], tok_dir)
    dtype = getattr(torch, args["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise CliError(f"dtype={args['dtype']!r} is not a torch dtype", field="dtype")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot load a causal LM from {model_dir} ({exc})", field="model") from None
    model.to(args["device"])
    return record_routing(
        model, prompts, max_new_tokens=_int(args, "max_new_tokens"), batch_size=_int(args, "batch_size"),
        record_predictions=_bool(args, "predictions"), out=args["out"], chunk_steps=_int(args, "chunk_steps"),
        model_name=args["model_name"] or model_dir.name,
        eos_token_id=_int(args, "eos_token_id") if args["eos_token_id"] else None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    try:
        trace = run(parse_args(argv))
    except (TraceError, ValueError) as exc:
        print(f"moesim-record: error: {exc}", file=sys.stderr)
        return 2
    print(f"moesim-record: wrote {trace.num_steps} steps x {trace.num_layers} MoE layers "
          f"(top-{trace.meta.top_k} of {trace.num_experts}) to {trace.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
