"""``moesim-record``: record the routing of a locally saved Hugging Face MoE model.

Usage::

    moesim-record --model PATH --prompts FILE --out trace.safetensors [--max-new-tokens 32]
        [--batch-size 1] [--predictions] [--tokenizer PATH] [--dtype float32] [--chunk-steps 4096]
        [--eos-token-id N] [--model-name NAME] [--device cpu]

The same options also read as ``key=value`` (``model=PATH prompts=FILE out=trace.safetensors
max_new_tokens=64 predictions=true``), the spelling of the Hydra apps (``moesim``,
``moesim-analyze``). ``model`` is a directory written by ``save_pretrained`` (nothing is
downloaded: a hub name is refused). ``prompts`` is either JSONL, one prompt per line as a list of
token ids (or an object with ``input_ids`` / ``tokens``), or plain text, one prompt per non-empty
line, tokenized with the tokenizer at ``tokenizer`` (default: the model directory).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moesim.kernels.messages import internal_error, one_line
from moesim.traces import strict
from moesim.traces.errors import TraceError

# Hub kernels would replace layers with downloaded code; this project also has its own top-level
# package named `kernels`, which transformers must never take for Hugging Face's. Nothing is fetched.
os.environ.setdefault("USE_HUB_KERNELS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REQUIRED = ("model", "prompts", "out")


class CliError(TraceError):
    """A bad input file or model (exit status 1)."""


class UsageError(CliError):
    """A bad command line: syntax, an unknown or missing key, a value of the wrong form (exit status 2)."""


_INT_TEXT = re.compile(r"-?[0-9]{1,18}")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _count(lo: int) -> Any:
    """An argparse type: a plain decimal integer >= ``lo`` (``int()`` would take " 5", "+5", "5_0")."""
    def parse(text: str) -> int:
        if not _INT_TEXT.fullmatch(text) or int(text) < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return int(text)
    parse.__name__ = f"integer >= {lo}"
    return parse


def _flag(text: str) -> bool:
    v = text.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line and status 2 through main, never sys.exit here
        raise UsageError(message, field="argv")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="moesim-record",
                description="Record the expert routing of a locally saved Hugging Face MoE model into a trace.",
                epilog="Every option also reads as key=value (model=PATH max_new_tokens=64 predictions=true). "
                       "Exit status: 0 recorded, 1 a bad input file or model or a failed recording, 2 bad usage.")
    p.add_argument("--model", help="a folder written by save_pretrained (required; no downloads)")
    p.add_argument("--prompts", help="JSONL of token-id lists, or text with one prompt per line (required)")
    p.add_argument("--out", help="the trace to write (.safetensors, .npz, .jsonl or .csv) (required)")
    p.add_argument("--max-new-tokens", type=_count(1), default=32, help="decode steps per prompt (default 32)")
    p.add_argument("--batch-size", type=_count(1), default=1, help="prompts run together (default 1)")
    p.add_argument("--predictions", type=_flag, nargs="?", const=True, default=False,
                   help="also record the next layer's router applied to this layer's output (default false)")
    p.add_argument("--tokenizer", default="", help="tokenizer folder for text prompts (default: the model's)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="the model's dtype (default float32)")
    p.add_argument("--chunk-steps", type=_count(1), default=4096, help="steps per chunk written (default 4096)")
    p.add_argument("--eos-token-id", type=_count(0), default=None, help="end-of-sequence id (default: the model's)")
    p.add_argument("--model-name", default="", help="the trace's model name (default: the folder's name)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    return p


def _options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``key`` (as in key=value) -> its option string."""
    return {opt[2:].replace("-", "_"): opt for opt in parser._option_string_actions if opt.startswith("--")
            and opt != "--help"}


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """The options as a dict (typed); ``key=value`` words are read as ``--key=value``."""
    parser = build_parser()
    known = _options(parser)
    takes_value = {opt for opt, action in parser._option_string_actions.items() if action.nargs is None}
    words: list[str] = []
    for a in argv:
        waiting = bool(words) and words[-1] in takes_value  # this word is the previous option's value
        if a.startswith("-") or waiting or "=" not in a:
            words.append(a)
            continue
        key, _, value = a.partition("=")
        key = key.lstrip("+")  # Hydra's "+key=value" spelling is accepted too
        if key not in known:
            raise UsageError(f"unknown key {key!r} (known: {', '.join(known)})", field=key)
        words.append(f"{known[key]}={value}")
    args = vars(parser.parse_args(words))
    missing = [k for k in REQUIRED if not args.get(k)]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}", field=missing[0])
    return args


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
    dtype = getattr(torch, str(args["dtype"]), None)
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
        model, prompts, max_new_tokens=args["max_new_tokens"], batch_size=args["batch_size"],
        record_predictions=args["predictions"], out=args["out"], chunk_steps=args["chunk_steps"],
        model_name=args["model_name"] or model_dir.name, eos_token_id=args["eos_token_id"])


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 recorded, 1 a bad input file or model or a failed recording, 2 bad usage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        (build_parser().print_help if argv else build_parser().print_usage)(sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        trace = run(parse_args(argv))
    except UsageError as exc:
        print(f"moesim-record: error: {one_line(exc)} (moesim-record --help lists the options)", file=sys.stderr)
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
