"""``moesim-replay``: replay one trace file through one policy and print the result as JSON.

Example::

    moesim-replay trace.safetensors --policy lru --capacity 256
    moesim-replay trace.safetensors --policy lru --capacity 256 --pin 32 --profile other.safetensors
    moesim-replay trace.safetensors --policy static --capacity 256 --profile other.safetensors
    moesim-replay trace.safetensors --policy s3fifo --capacity-bytes 8e9 --bytes-per-expert 2.5e7 \\
        --organisation per_layer --param small_ratio=0.1

Pinned experts and a static cache's contents are chosen from ``--profile`` (another trace: choosing
them from the replayed trace would score the cache on the future it was tuned on).

Exit status: 0 replayed, 1 a trace or output file that cannot be read or written, 2 bad usage (an
unknown option, policy or parameter, a cache size that cannot be built). Errors are one line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from moesim.kernels.files import atomic_write_text
from moesim.kernels.messages import internal_error, one_line
from moesim.sim.errors import ConfigError
from moesim.sim.pinning import choose_pinned
from moesim.sim.policies import list_policies
from moesim.sim.replay import replay, resolve_capacity
from moesim.traces.errors import TraceError
from moesim.traces.io import load_any


def _parse_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string
    except (RecursionError, ValueError):  # nested too deeply, or an integer of thousands of digits
        raise argparse.ArgumentTypeError(f"--param {key.strip()}: value is not usable JSON") from None
    return key.strip(), value


def _int_list(text: str) -> list[int]:
    parts = [x.strip() for x in text.split(",") if x.strip()]
    if not all(re.fullmatch(r"-?[0-9]{1,18}", x) for x in parts):  # int() would take "1_0" and "+1"
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return [int(x) for x in parts]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="moesim-replay", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", help="trace file (.safetensors, .npz, .jsonl, .csv)")
    ap.add_argument("--policy", required=True, help=f"one of: {', '.join(list_policies())}")
    size = ap.add_mutually_exclusive_group(required=True)
    size.add_argument("--capacity", type=int, help="cache size in experts (all layers together)")
    size.add_argument("--capacity-bytes", type=float, help="cache size in bytes (with --bytes-per-expert)")
    size.add_argument("--per-layer-capacity", type=_int_list, help="per-layer sizes, comma-separated")
    ap.add_argument("--bytes-per-expert", type=float, help="bytes of one expert in the chosen format")
    ap.add_argument("--organisation", choices=("shared", "per_layer"), default="shared")
    ap.add_argument("--pin", type=int, default=0,
                    help="pin the N hottest experts of --profile (per layer with --organisation per_layer)")
    ap.add_argument("--pinned-keys", type=_int_list, help="pin these keys (layer * E + expert), comma-separated")
    ap.add_argument("--profile", help="profiling trace for --pin and for the static policy's contents")
    ap.add_argument("--param", action="append", default=[], type=_parse_param, metavar="KEY=VALUE",
                    help="policy parameter (value parsed as JSON, else a string); repeatable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--cold-start", action="store_true", help="restart the cache at every request")
    ap.add_argument("--tie-break", choices=("row", "reverse", "expert_id"), default="row")
    ap.add_argument("--output", help="also write the JSON to this file")
    return ap


def run(args: argparse.Namespace) -> dict[str, Any]:
    trace = load_any(args.trace)
    profile = load_any(args.profile) if args.profile else None
    params = dict(args.param)
    pinned: list[int] | None = args.pinned_keys
    if args.pin:
        if profile is None:
            raise ConfigError("--pin needs --profile (a trace other than the replayed one)")
        if pinned is not None:
            raise ConfigError("give --pin or --pinned-keys, not both")
        pinned = choose_pinned(profile, args.pin, args.organisation)
    if args.policy == "static" and "keys" not in params:
        if profile is None:
            raise ConfigError("policy 'static' needs --profile (or --param keys=[...])")
        if pinned:
            raise ConfigError("policy 'static' already holds a fixed set: do not pin experts as well")
        total, caps = resolve_capacity(trace.num_layers, args.capacity, args.capacity_bytes, args.bytes_per_expert,
                                       args.organisation, args.per_layer_capacity)
        L, E = trace.num_layers, trace.num_experts
        # per layer: the same number in every layer
        n = min(total, L * E) if caps is None else min(min(caps), E)
        params["keys"] = choose_pinned(profile, n, args.organisation)
    result = replay(trace, args.policy, args.capacity, capacity_bytes=args.capacity_bytes,
                    bytes_per_expert=args.bytes_per_expert, organisation=args.organisation,
                    per_layer_capacity=args.per_layer_capacity, pinned=pinned, params=params,
                    seed=args.seed, warmup_steps=args.warmup_steps, cold_start_per_request=args.cold_start,
                    tie_break=args.tie_break)
    out = result.to_dict()
    out["trace"] = args.trace
    return out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad usage (2): a status, not an exception
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        out = run(args)
        text = json.dumps(out, indent=2)
        if args.output:
            atomic_write_text(args.output, text + "\n")
    except ConfigError as exc:
        print(f"moesim-replay: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (TraceError, OSError) as exc:
        print(f"moesim-replay: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("moesim-replay: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # no check anticipated it: still one line, and a failure status
        print(f"moesim-replay: error: {args.trace}: {internal_error(exc)}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
