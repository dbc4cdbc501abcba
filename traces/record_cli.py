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

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moesim.traces import strict
from moesim.traces.errors import TraceError, internal_error, one_line

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
    """A bad input file or model (exit status 1)."""


class UsageError(CliError):
    """A bad command line: syntax, an unknown or missing key, a value of the wrong form (exit status 2)."""


# The integer keys and their smallest value; eos_token_id may also be left empty (the model's own).
_INT_KEYS = {"max_new_tokens": 1, "batch_size": 1, "chunk_steps": 1, "eos_token_id": 0}
_INT_TEXT = re.compile(r"-?[0-9]{1,18}")


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    args = dict(DEFAULTS)
    for i, a in enumerate(argv):
        key, sep, value = a.partition("=")
        key = key.lstrip("+")  # Hydra's "+key=value" spelling is accepted too
        if not sep or not key:
            raise UsageError(f"argument {a!r} is not key=value", field="argv", index=i)
        if key not in REQUIRED and key not in DEFAULTS:
            raise UsageError(f"unknown key {key!r} (known: {', '.join((*REQUIRED, *DEFAULTS))})", field=key)
        args[key] = value
    missing = [k for k in REQUIRED if not args.get(k)]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}", field=missing[0])
    for key, lo in _INT_KEYS.items():  # checked now, not after minutes of loading the model
        if args[key] != "":
            _int(args, key, lo)
    _bool(args, "predictions")
    return args


def _int(args: dict[str, str], key: str, lo: int | None = None) -> int:
    text = args[key]
    lo = _INT_KEYS.get(key, lo)
    if not _INT_TEXT.fullmatch(text):  # int() would take " 5", "+5" and "5_0"
        raise UsageError(f"{key}={text!r} is not an integer", field=key)
    value = int(text)
    if lo is not None and value < lo:
        raise UsageError(f"{key}={value} must be at least {lo}", field=key)
    return value


def _bool(args: dict[str, str], key: str) -> bool:
    v = args[key].strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise UsageError(f"{key}={args[key]!r} is not true/false", field=key)


def _local_dir(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UsageError(f"{what} {path!r} is not a local directory; recording loads models saved locally with "
                       "save_pretrained only (no downloads): fetch it to a folder first and pass that path",
                       field=what)
    return p


def read_prompts(path: str, tokenizer_dir: Path | None) -> list[list[int]]:
    """Token-id prompts from JSONL (lists of ids) or from text lines (tokenized)."""
    p = Path(path)
    strict.check_file(path, error=CliError)
    lines = [text.rstrip("\r\n") for _, text in strict.lines(path)]
    if p.suffix.lower() == ".jsonl":
        out = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            obj = strict.loads(line, file=path, field="line", index=lineno, error=CliError)
            if isinstance(obj, dict):
                obj = obj.get("input_ids", obj.get("tokens"))
            if not isinstance(obj, list) or not obj or not all(type(t) is int and 0 <= t < 1 << 62 for t in obj):
                raise CliError("expected a non-empty list of non-negative integer token ids (or "
                               "{\"input_ids\": [...]})", file=path, field="line", index=lineno)
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
        raise UsageError(f"dtype={args['dtype']!r} is not a torch dtype", field="dtype")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot load a causal LM from {model_dir} ({exc})", field="model") from None
    vocab = getattr(model.config, "vocab_size", None)
    for i, ids in enumerate(prompts):
        if isinstance(vocab, int) and max(ids) >= vocab:  # the embedding would fail with an IndexError
            raise CliError(f"token id {max(ids)} is outside the model's vocabulary of {vocab}",
                           file=args["prompts"], field="prompts", index=i)
    try:
        model.to(args["device"])
    except (RuntimeError, ValueError, AssertionError) as exc:  # an unknown device or one without a driver
        raise UsageError(f"device={args['device']!r} cannot be used ({one_line(exc)})", field="device") from None
    return record_routing(
        model, prompts, max_new_tokens=_int(args, "max_new_tokens"), batch_size=_int(args, "batch_size"),
        record_predictions=_bool(args, "predictions"), out=args["out"], chunk_steps=_int(args, "chunk_steps"),
        model_name=args["model_name"] or model_dir.name,
        eos_token_id=_int(args, "eos_token_id") if args["eos_token_id"] else None)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 recorded, 1 a bad input file or model or a failed recording, 2 bad usage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    try:
        trace = run(parse_args(argv))
    except UsageError as exc:
        print(f"moesim-record: error: {one_line(exc)}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    except (TraceError, ValueError, OSError) as exc:
        print(f"moesim-record: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"moesim-record: error: recording needs the 'record' extra (transformers): {one_line(exc)}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("moesim-record: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a failure inside the model or the recorder: one line, not a traceback
        print(f"moesim-record: error: {internal_error(exc)}", file=sys.stderr)
        return 1
    print(f"moesim-record: wrote {trace.num_steps} steps x {trace.num_layers} MoE layers "
          f"(top-{trace.meta.top_k} of {trace.num_experts}) to {trace.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
