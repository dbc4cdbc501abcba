"""``moesim-trace``: inspect, validate, convert, import, generate, fit and summarise routing traces,
and draw their hit-rate (miss-ratio) curves.

Every subcommand returns an exit status (0 success, 1 a bad trace or input, 2 bad usage) instead
of raising, so ``main([...])`` is usable from tests and notebooks as well as from the shell. An
error is one line on stderr that names the file (and, from the readers, the field and position).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from moesim.kernels.messages import internal_error, one_line
from moesim.traces import oracle_general
from moesim.traces.errors import TraceError
from moesim.traces.importers import import_mixtral_jsonl, import_olmoe_npz
from moesim.traces.io import load_any, save_any
from moesim.traces.plots import plot_all
from moesim.traces.stats import WINDOW_DEFAULT, compute_stats, describe, summary_table
from moesim.traces.trace import Trace

# Errors a bad file or argument can raise; anything else is a bug, still reported on one line.
_INPUT_ERRORS = (TraceError, OSError, ValueError)
DEMO_PRESET = "default"
TRACE_NAME = "trace.safetensors"
TABLE_NAME = "stats"  # write_data picks .parquet or .csv


class SynthUnavailableError(RuntimeError):
    """The synthetic generator (:mod:`traces.synth`) cannot be imported."""


def _synth() -> ModuleType:
    try:
        return importlib.import_module("moesim.traces.synth")
    except ImportError as exc:
        raise SynthUnavailableError(
            f"the synthetic generator traces.synth is not available ({exc}); `generate` and `demo` "
            "need it") from None


def _generate(preset: str, seed: int, requests: int | None) -> Trace:
    synth = _synth()
    try:
        return synth.generate_preset(preset, seed=seed, num_requests=requests)
    except FileNotFoundError as exc:
        raise SynthUnavailableError(f"preset {preset!r} cannot be built: {exc}") from None


# ---- printing --------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as aligned plain text (one line per row)."""
    if not rows:
        return ""
    cols = list(rows[0])
    cells = [cols] + [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells)


def _print_summary(trace: Trace, stats: Any) -> None:
    info = describe(trace, stats)
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in info.items()},
                     indent=2))
    print(format_table(summary_table(stats)))


# ---- subcommands -----------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    trace = load_any(args.path)
    print(f"# {trace!r}")
    print(json.dumps(trace.meta.to_strings(), indent=2))
    _print_summary(trace, compute_stats(trace, window=args.window))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.paths:
        try:
            load_any(path)
        except _INPUT_ERRORS as exc:
            msg = one_line(exc)
            print(f"{path}: invalid: {msg}" if path in msg else f"{path}: invalid: {path}: {msg}", file=sys.stderr)
            status = 1
        else:
            print(f"{path}: ok")
    return status


def cmd_convert(args: argparse.Namespace) -> int:
    if oracle_general.is_oracle_general(args.dst):
        return convert_to_libcachesim(args)
    out = save_any(load_any(args.src), args.dst)
    print(f"wrote {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    if args.format == "olmoe":
        if len(args.src) != 1:
            raise TraceError(f"the OLMoE importer reads one npz file, got {len(args.src)}", field="SRC")
        trace = import_olmoe_npz(args.src[0])
    else:
        trace = import_mixtral_jsonl(args.src)
    out = save_any(trace, args.out)
    print(f"wrote {out}: {trace!r}")
    return 0


def _write_stats(trace: Trace, out_dir: Path, window: int) -> None:
    # pandas takes 0.5 s to import: only the commands that write a table pay it
    from moesim.kernels.tables import write_data

    stats = compute_stats(trace, window=window)
    _print_summary(trace, stats)
    table = write_data(summary_table(stats), out_dir / TABLE_NAME)
    print(f"wrote {table}")
    for path in plot_all(trace, out_dir, stats=stats):
        print(f"wrote {path}")


def cmd_stats(args: argparse.Namespace) -> int:
    _write_stats(load_any(args.path), Path(args.out), args.window)
    return 0


def _preset_config(path: str) -> Any:
    """The SynthConfig of a preset file (``moesim-trace fit`` writes one)."""
    synth = _synth()
    return synth.config_from_preset(synth.read_preset_file(path), where=path)


def cmd_generate(args: argparse.Namespace) -> int:
    if (args.name is None) == (args.preset is None):
        raise ValueError("name one preset: a built-in name, or --preset NAME_OR_FILE")
    name = args.name if args.name is not None else args.preset
    is_file = args.preset is not None and (name.endswith(".json") or Path(name).is_file())
    if args.steps is not None and args.requests is not None:
        raise ValueError("--steps and --requests exclude each other")
    if is_file or args.steps is not None:
        synth = _synth()
        config = _preset_config(name) if is_file else synth.preset(name)
        if args.steps is not None:
            trace = synth.generate_steps(config, args.steps, seed=args.seed)
        else:
            changes = {"num_requests": args.requests} if args.requests is not None else {}
            trace = synth.generate(config.replace(**changes), seed=args.seed)
    else:
        trace = _generate(name, args.seed, args.requests)
    out = save_any(trace, args.out)
    print(f"wrote {out}: {trace!r}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit the generator to a recording and write a preset file ``generate --preset`` reads."""
    try:
        fitmod = importlib.import_module("moesim.traces.fit")
    except ImportError as exc:
        raise SynthUnavailableError(f"the fitter traces.fit is not available ({exc})") from None
    trace = load_any(args.path)
    path = fitmod.fit_to_file(trace, args.out, seed=args.seed, echo=True)
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The default synthetic trace, its statistics, table and plots (what ``make run`` calls)."""
    out_dir = Path(args.out)
    trace = _generate(DEMO_PRESET, args.seed, args.requests)
    path = save_any(trace, out_dir / TRACE_NAME)
    print(f"wrote {path}: {trace!r}")
    _write_stats(trace, out_dir, args.window)
    return 0


def convert_to_libcachesim(args: argparse.Namespace) -> int:
    """``convert SRC DST.oracleGeneral`` (or ``DST.lcs.csv``): libCacheSim's request stream."""
    trace = load_any(args.src)
    out = oracle_general.write(trace, args.dst)
    n = int(np.count_nonzero(np.asarray(trace.experts) >= 0))
    print(f"wrote {out}: {n} requests of {trace.num_layers * trace.num_experts} objects (size 1), libCacheSim "
          f"{'CSV' if out.name.lower().endswith('.csv') else 'oracleGeneral'} format")
    return 0


def cmd_mrc(args: argparse.Namespace) -> int:
    """Hit-rate curves of ``--policies`` (OPT added as the bound): CSV, PNG and SVG in ``--out``."""
    from moesim.bench.mrc import write_curves
    from moesim.sim.policies import list_policies
    from moesim.traces.transforms import decode_only

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in list_policies()]
    if unknown or not policies:
        print(f"moesim-trace mrc: error: unknown policy {unknown[0] if unknown else '(none given)'!r} "
              f"(known: {', '.join(list_policies())})", file=sys.stderr)
        return 2
    trace = load_any(args.path)
    if args.decode_only:
        trace = decode_only(trace)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    for path in write_curves(trace, policies, args.out, sizes=sizes, points=args.points,
                             organisation=args.organisation):
        print(f"wrote {path}")
    return 0


def _add_mrc(sub: Any) -> None:
    sp = sub.add_parser("mrc", help="hit-rate (miss-ratio) curves of policies at many cache sizes: CSV, PNG, SVG")
    sp.add_argument("path")
    sp.add_argument("--policies", default="lru,s3fifo,arc",
                    help="comma-separated policies (default lru,s3fifo,arc); opt is always added as the bound")
    sp.add_argument("--out", required=True, help="output folder (mrc.csv, mrc.png, mrc.svg)")
    sp.add_argument("--points", type=_count(2), default=96,
                    help="cache sizes per replayed curve (default 96; LRU takes every size in one pass)")
    sp.add_argument("--sizes", default=None, type=_sizes, help="exact sizes in experts, comma-separated")
    sp.add_argument("--organisation", choices=["shared", "per_layer"], default="shared",
                    help="one cache for all layers or one per layer (default shared)")
    sp.add_argument("--decode-only", action="store_true", help="leave out the prefill steps (as the timing model)")
    sp.set_defaults(func=cmd_mrc)


def _sizes(text: str) -> str:
    if not re.fullmatch(r"[0-9]{1,9}(,[0-9]{1,9})*", text) or any(int(s) < 1 for s in text.split(",")):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return text


# ---- argument parsing --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moesim-trace", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def window(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--window", type=_count(1), default=WINDOW_DEFAULT,
                        help=f"working-set window in tokens (default {WINDOW_DEFAULT})")

    sp = sub.add_parser("info", help="print metadata and summary statistics")
    sp.add_argument("path")
    window(sp)
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("validate", help="check traces; exit 1 if any is bad")
    sp.add_argument("paths", nargs="+")
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("convert", help="rewrite a trace in another format (by extension); .oracleGeneral "
                        "or .lcs.csv writes libCacheSim's request stream")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp.set_defaults(func=cmd_convert)

    sp = sub.add_parser("import", help="import a trace recorded by another tool")
    sp.add_argument("format", choices=["olmoe", "mixtral"])
    sp.add_argument("src", nargs="+")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_import)

    sp = sub.add_parser("stats", help="write the statistics table and plots")
    sp.add_argument("path")
    sp.add_argument("--out", required=True, help="output folder")
    window(sp)
    sp.set_defaults(func=cmd_stats)

    sp = sub.add_parser("generate", help="write a synthetic trace from a preset")
    sp.add_argument("name", nargs="?", default=None, help="a built-in preset (e.g. gpt-oss-20b, default)")
    sp.add_argument("--preset", default=None, metavar="NAME_OR_FILE",
                    help="a built-in preset, or a preset file written by `moesim-trace fit`")
    sp.add_argument("--seed", type=_count(0), default=0)
    sp.add_argument("--out", required=True)
    sp.add_argument("--requests", type=_count(1), default=None, help="number of requests (preset default)")
    sp.add_argument("--steps", type=_count(1), default=None,
                    help="exactly this many steps (whole requests, the last one cut short)")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("fit", help="fit the synthetic generator to a recorded trace; write a preset file")
    sp.add_argument("path", help="the recorded trace (any format `convert` reads)")
    sp.add_argument("--out", required=True, help="the preset file to write (JSON)")
    sp.add_argument("--seed", type=_count(0), default=12345, help="calibration seed (the same seed, the same fit)")
    sp.set_defaults(func=cmd_fit)

    sp = sub.add_parser("demo", help="generate the default trace and write its statistics and plots")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--seed", type=_count(0), default=0)
    sp.add_argument("--requests", type=_count(1), default=None)
    window(sp)
    sp.set_defaults(func=cmd_demo)
    _add_mrc(sub)
    return p


def _count(lo: int) -> Any:
    """An argparse type: a plain decimal integer >= ``lo`` (a bad one is a usage error, status 2)."""
    def parse(text: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,18}", text) or int(text) < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return int(text)
    parse.__name__ = f"integer >= {lo}"
    return parse


def _inputs(args: argparse.Namespace) -> list[str]:
    """The files a command reads (to name in an error whose message does not)."""
    out: list[str] = []
    for key in ("path", "src", "paths"):
        value = getattr(args, key, None)
        out.extend([value] if isinstance(value, str) else list(value or ()))
    return out


def _error_line(args: argparse.Namespace, exc: BaseException) -> str:
    msg = one_line(exc) if isinstance(exc, _INPUT_ERRORS) else internal_error(exc)
    files = _inputs(args)
    if files and not any(f in msg for f in files):
        msg = f"{', '.join(files)}: {msg}"
    return f"moesim-trace {args.command}: error: {msg}"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad usage (2): a status, not an exception
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        return int(args.func(args))
    except (SynthUnavailableError, *_INPUT_ERRORS) as exc:
        print(_error_line(args, exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"moesim-trace {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # no check anticipated it: still one line, and a failure status
        print(_error_line(args, exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
