"""Every ``moesim-trace`` subcommand through ``main([...])``: exit codes, printed output, files."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from moesim.kernels.tables import read_data
from moesim.traces import io
from moesim.traces.cli import main
from moesim.traces.plots import PLOT_NAMES
from moesim.traces.stats import table_columns
from moesim.traces.trace import PAD, Trace, TraceMeta, make_trace

REPO = Path(__file__).resolve().parents[1]


def small_trace(seed: int = 0, steps: int = 40) -> Trace:
    rng = np.random.default_rng(seed)
    L, E, K = 3, 8, 2
    e = np.stack([[rng.choice(E, K, replace=False) for _ in range(L)] for _ in range(steps)]).astype(np.int16)
    return make_trace(e, TraceMeta("cli-toy", L, E, K, source="synthetic"),
                      request_id=np.arange(steps) // 10, gate_weights=np.full((steps, L, K), 0.5))


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    return io.save(small_trace(), tmp_path / "toy.safetensors")


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    e = np.asarray(small_trace().experts).copy()
    e[3, 2, 1] = 99
    bad = make_trace(e, TraceMeta("cli-toy", 3, 8, 2), validate=False)
    return io.save(bad, tmp_path / "bad.safetensors")


# ---- info / validate / convert ---------------------------------------------------------------

def test_info_prints_metadata_and_summary(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(trace_file)]) == 0
    out = capsys.readouterr().out
    assert "cli-toy" in out and '"num_layers": "3"' in out
    assert '"steps": 40' in out and '"requests": 4' in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layer", "accesses"])
    assert [line.split()[0] for line in lines[header + 1:header + 5]] == ["0", "1", "2", "all"]
    assert lines[header + 4].split()[1] == str(40 * 3 * 2)


def test_info_on_a_bad_trace_fails(bad_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(bad_file)]) == 1
    assert str(bad_file) in capsys.readouterr().err


def test_validate_ok(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(trace_file)]) == 0
    assert capsys.readouterr().out.strip() == f"{trace_file}: ok"


def test_validate_reports_the_bad_file(trace_file: Path, bad_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(trace_file), str(bad_file)]) == 1
    captured = capsys.readouterr()
    assert f"{trace_file}: ok" in captured.out
    assert "bad.safetensors: field 'experts' at [3, 2, 1]: expert id 99" in captured.err


@pytest.mark.parametrize("content", [b"", b"garbage"])
def test_validate_corrupt_and_missing_files(tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(content)
    assert main(["validate", str(broken), str(tmp_path / "missing.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "broken.safetensors" in err and "missing.jsonl" in err


@pytest.mark.parametrize("ext", [".npz", ".csv", ".jsonl", ".safetensors"])
def test_convert_by_extension(trace_file: Path, tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"converted{ext}"
    assert main(["convert", str(trace_file), str(out)]) == 0
    back, orig = io.load_any(out), io.load(trace_file)
    np.testing.assert_array_equal(back.experts, orig.experts)
    np.testing.assert_array_equal(back.gate_weights, orig.gate_weights)
    np.testing.assert_array_equal(back.request_id, orig.request_id)
    assert back.meta == orig.meta


def test_convert_unknown_extension(trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(trace_file), str(tmp_path / "x.h5")]) == 1
    assert "unknown trace extension '.h5'" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


# ---- import ----------------------------------------------------------------------------------

def test_import_olmoe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = 2 * 16  # two tokens of one sequence, 16 layers, top-8 of 64
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(64, 8, replace=False) for _ in range(n)]).astype(np.int16)
    src = tmp_path / "olmoe.npz"
    np.savez(src, sequence_id=np.zeros(n, np.int32), domain_id=np.zeros(n, np.int8),
             generated_token_index=np.repeat([0, 1], 16).astype(np.int32),
             layer_index=np.tile(np.arange(16), 2).astype(np.int16), requested_expert_ids=ids,
             router_weights=np.full((n, 8), 0.01, np.float32))
    out = tmp_path / "olmoe.safetensors"
    assert main(["import", "olmoe", str(src), "--out", str(out)]) == 0
    tr = io.load(out)
    assert (tr.num_steps, tr.num_layers, tr.num_experts, tr.width) == (2, 16, 64, 8)
    np.testing.assert_array_equal(tr.experts[1, 3], ids[16 + 3])
    assert "wrote" in capsys.readouterr().out


def test_import_olmoe_takes_one_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "olmoe", "a.npz", "b.npz", "--out", str(tmp_path / "o.safetensors")]) == 1
    assert "one npz file" in capsys.readouterr().err


def test_import_mixtral_several_files(tmp_path: Path) -> None:
    files = []
    for ds in ("gsm8k", "humaneval"):
        path = tmp_path / f"{ds}.jsonl"
        rows = [{"dataset": ds, "problem_id": 0, "layer": layer, "experts": [t % 8, (t + 1) % 8],
                 "gating_probs": [0.6, 0.4], "token_idx": t} for layer in range(32) for t in range(3)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(str(path))
    out = tmp_path / "mixtral.jsonl"
    assert main(["import", "mixtral", *files, "--out", str(out)]) == 0
    tr = io.load_any(out)
    assert (tr.num_steps, tr.num_layers, tr.width) == (6, 32, 2)
    assert tr.meta.extra["domains"] == ["gsm8k", "humaneval"]


def test_import_bad_input_fails_with_location(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"dataset": "g", "problem_id": 0, "layer": 0, "experts": [0, 9], '
                   '"gating_probs": [0.5, 0.5], "token_idx": 0}\n')
    assert main(["import", "mixtral", str(src), "--out", str(tmp_path / "o.safetensors")]) == 1
    assert f"{src}: field 'experts' at [1]" in capsys.readouterr().err


# ---- stats -----------------------------------------------------------------------------------

def test_stats_writes_table_and_plots(trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stats"
    assert main(["stats", str(trace_file), "--out", str(out), "--window", "5"]) == 0
    names = sorted(p.name for p in out.iterdir())
    table = next(p for p in out.iterdir() if p.stem == "stats")
    assert names == sorted([table.name, *PLOT_NAMES])
    rows = read_data(table)
    assert [r["layer"] for r in rows] == ["0", "1", "2", "all"]
    assert list(rows[0]) == table_columns()
    assert rows[-1]["ws_window"] == 5 and rows[-1]["accesses"] == 240
    assert all((out / n).stat().st_size > 1000 for n in PLOT_NAMES)
    assert str(table) in capsys.readouterr().out


def test_stats_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o")]) == 1
    assert "nope.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- generate / demo -------------------------------------------------------------------------

@pytest.fixture
def fake_synth(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """A stand-in ``traces.synth`` that records its calls (the real one is tested on its own)."""
    calls: list[tuple] = []
    module = types.ModuleType("moesim.traces.synth")

    def generate_preset(name: str, *, seed: int = 0, num_requests: int | None = None, **kw: object) -> Trace:
        calls.append((name, seed, num_requests))
        if name != "default" and name != "tiny":
            raise ValueError(f"unknown preset {name!r}")
        return small_trace(seed, steps=10 * (num_requests or 4))

    module.generate_preset = generate_preset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "moesim.traces.synth", module)
    return calls


def test_generate_passes_preset_seed_and_requests(fake_synth: list[tuple], tmp_path: Path) -> None:
    out = tmp_path / "g.safetensors"
    assert main(["generate", "tiny", "--seed", "5", "--requests", "2", "--out", str(out)]) == 0
    assert fake_synth == [("tiny", 5, 2)]
    np.testing.assert_array_equal(io.load(out).experts, small_trace(5, 20).experts)


def test_generate_unknown_preset(fake_synth: list[tuple], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "nope", "--out", str(tmp_path / "g.safetensors")]) == 1
    assert "unknown preset 'nope'" in capsys.readouterr().err


def test_demo_writes_trace_table_and_plots(fake_synth: list[tuple], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert fake_synth == [("default", 0, None)]
    names = {p.name for p in out.iterdir()}
    assert {"trace.safetensors", *PLOT_NAMES} <= names
    assert any(n.startswith("stats.") for n in names) and len(names) == 5
    printed = capsys.readouterr().out
    assert '"model": "cli-toy"' in printed and "entropy_bits" in printed


@pytest.mark.parametrize("command", ["demo", "generate"])
def test_missing_generator_is_a_clear_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "moesim.traces.synth", None)  # import fails as if the module were absent
    args = ["demo", "--out", str(tmp_path / "d")] if command == "demo" else \
        ["generate", "default", "--out", str(tmp_path / "g.safetensors")]
    assert main(args) == 1
    assert "traces.synth is not available" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def real_synth_or_skip() -> None:
    try:
        from moesim.traces.synth import generate_preset

        generate_preset("default", seed=0, num_requests=1)
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"traces.synth cannot build the default preset here: {exc}")


def test_generate_with_the_real_generator_is_reproducible(tmp_path: Path) -> None:
    real_synth_or_skip()
    paths = []
    for i, seed in enumerate((3, 3, 4)):
        paths.append(tmp_path / f"g{i}.safetensors")
        assert main(["generate", "default", "--seed", str(seed), "--requests", "2", "--out", str(paths[-1])]) == 0
    # safetensors writes its header keys in hash order, so compare what the files hold.
    first, again, other = (io.load(p) for p in paths)
    assert np.array_equal(first.experts, again.experts)
    assert np.array_equal(first.gate_weights, again.gate_weights)
    assert first.meta == again.meta
    assert not np.array_equal(first.experts, other.experts)
    assert len(first.request_bounds()) - 1 == 2


def test_demo_with_the_real_generator(tmp_path: Path) -> None:
    real_synth_or_skip()
    assert main(["demo", "--out", str(tmp_path), "--requests", "3"]) == 0
    assert {"trace.safetensors", *PLOT_NAMES} <= {p.name for p in tmp_path.iterdir()}


# ---- argument handling -----------------------------------------------------------------------

def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["convert", "only-one"]) == 2
    assert main(["import", "parquet", "x", "--out", "y"]) == 2
    assert main(["--help"]) == 0
    assert "validate" in capsys.readouterr().out


def test_runs_as_a_module(trace_file: Path) -> None:
    for module in ("moesim.traces.cli", "moesim.traces"):
        done = subprocess.run([sys.executable, "-m", module, "validate", str(trace_file)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{trace_file}: ok"


def test_pad_only_trace_through_stats(tmp_path: Path) -> None:
    tr = make_trace(np.full((4, 2, 2), PAD, np.int16), TraceMeta("pads", 2, 4, 2))
    path = io.save(tr, tmp_path / "pads.safetensors")
    assert main(["stats", str(path), "--out", str(tmp_path / "s")]) == 0
    rows = read_data(next((tmp_path / "s").glob("stats.*")))
    assert rows[-1]["accesses"] == 0


# ---- hostile inputs: exit 1 (bad input) or 2 (bad usage), one stderr line naming the file ------------

def _hostile_files(tmp_path: Path) -> dict[str, Path]:
    good = io.save_jsonl(small_trace(), tmp_path / "good.jsonl")
    lines = good.read_text().splitlines()
    files = {}
    head = json.loads(lines[0])
    head["predicted_width"] = 100_000_000  # 8 KB that would claim gigabytes per step
    files["bomb.jsonl"] = "\n".join([json.dumps({**head, "fields": [*head["fields"], "predicted"]}), *lines[1:]])
    row = json.loads(lines[1])
    row["experts"] = [1.9, 2]
    files["float-id.jsonl"] = "\n".join([lines[0], json.dumps(row), *lines[2:]])
    files["not-utf8.jsonl"] = good.read_bytes().replace(b"cli-toy", b"cli-\xfftoy")
    files["deep.jsonl"] = '{"meta": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    csv_lines = io.save_csv(small_trace(), tmp_path / "good.csv").read_text().splitlines()
    cols = csv_lines[1].split(",")
    j = cols.index("experts")
    files["no-experts.csv"] = "\n".join([csv_lines[0]] + [",".join(c for i, c in enumerate(x.split(",")) if i != j)
                                                         for x in csv_lines[1:]])
    files["garbage.safetensors"] = b"\xff" * 64
    files["garbage.npz"] = b"PK\x03\x04" + b"\0" * 60
    out = {}
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        out[name] = path
    out["missing.jsonl"] = tmp_path / "missing.jsonl"
    out["folder.safetensors"] = tmp_path / "folder.safetensors"
    out["folder.safetensors"].mkdir()
    return out


@pytest.mark.parametrize("name", ["bomb.jsonl", "float-id.jsonl", "not-utf8.jsonl", "deep.jsonl", "no-experts.csv",
                                  "garbage.safetensors", "garbage.npz", "missing.jsonl", "folder.safetensors"])
@pytest.mark.parametrize("command", ["info", "validate", "convert", "stats"])
def test_hostile_files_through_every_reading_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     name: str, command: str) -> None:
    path = _hostile_files(tmp_path)[name]
    argv = {"info": ["info", str(path)], "validate": ["validate", str(path)],
            "convert": ["convert", str(path), str(tmp_path / "out.safetensors")],
            "stats": ["stats", str(path), "--out", str(tmp_path / "stats")]}[command]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err, err
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "stats").exists()


@pytest.mark.parametrize("argv", [
    ["stats", "t.safetensors", "--out", "o", "--window", "0"],
    ["stats", "t.safetensors", "--out", "o", "--window", "-3"],
    ["stats", "t.safetensors", "--out", "o", "--window", "1_000"],
    ["info", "t.safetensors", "--window", "ten"],
    ["generate", "default", "--out", "g.safetensors", "--requests", "0"],
    ["generate", "default", "--out", "g.safetensors", "--seed", "-1"],
    ["demo", "--out", "d", "--requests", "1.5"],
    ["frobnicate"],
    ["validate"],
    ["import", "olmoe", "--out", "x.safetensors"],
])
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_import_and_write_failures_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 trace_file: Path) -> None:
    bad = tmp_path / "olmoe.npz"
    np.savez(bad, layer_index=np.zeros(3, np.float32))
    assert main(["import", "olmoe", str(bad), "--out", str(tmp_path / "o.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["convert", str(trace_file), str(blocker / "sub" / "t.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err and "Traceback" not in err
    assert main(["stats", str(trace_file), "--out", str(blocker)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err


# ---- hit-rate curves and libCacheSim interchange ------------------------------------------------

def test_mrc_writes_curves_that_agree_with_replay(trace_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    from moesim.sim.replay import replay

    out = tmp_path / "mrc"
    assert main(["mrc", str(trace_file), "--policies", "lru,fifo", "--out", str(out), "--sizes", "4,12,24"]) == 0
    assert {p.name for p in out.iterdir()} == {"mrc.csv", "mrc.png", "mrc.svg"}
    with open(out / "mrc.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["policy"] for r in rows} == {"lru", "fifo", "opt"}  # OPT added as the bound
    trace = io.load(trace_file)
    by = {(r["policy"], int(r["size_experts"])): int(r["hits"]) for r in rows}
    for policy in ("lru", "fifo"):
        for size in (4, 12, 24):
            assert by[(policy, size)] == replay(trace, policy, size).hits
            assert by[(policy, size)] <= by[("opt", size)]
    assert main(["mrc", str(trace_file), "--policies", "nope", "--out", str(out)]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["mrc", str(trace_file), "--out", str(out), "--sizes", "4,x"]) == 2


@pytest.mark.parametrize("name", ["t.oracleGeneral", "t.lcs.csv"])
def test_convert_to_libcachesim_round_trips(trace_file: Path, tmp_path: Path, name: str) -> None:
    from moesim.traces import oracle_general

    dst = tmp_path / name
    assert main(["convert", str(trace_file), str(dst)]) == 0
    rec = oracle_general.read(dst)
    trace = io.load(trace_file)
    ex = np.asarray(trace.experts)
    T, L, _ = ex.shape
    want = [(t * L + layer, layer * 8 + int(e) + 1) for t in range(T) for layer in range(L) for e in ex[t, layer]
            if e >= 0]
    assert [(int(a), int(b)) for a, b in zip(rec["time"], rec["obj_id"], strict=True)] == want
    assert (rec["size"] == 1).all()
    ids = rec["obj_id"].tolist()
    for i, nxt in enumerate(rec["next"].tolist()):  # next_access_vtime: the same object's next request
        later = [j for j in range(i + 1, len(ids)) if ids[j] == ids[i]]
        assert nxt == (later[0] if later else -1)


def test_libcachesim_reads_the_converted_trace_and_agrees(tmp_path: Path) -> None:
    lcs = pytest.importorskip("libcachesim")
    from moesim.sim.replay import replay

    # Top-1 rows: libCacheSim serves one request at a time, which equals moesim's row on width 1.
    rng = np.random.default_rng(3)
    e = rng.zipf(1.3, size=(400, 3, 1)).clip(max=8) - 1
    trace = make_trace(e.astype(np.int16), TraceMeta("lcs-toy", 3, 8, 1, source="synthetic"))
    src = io.save(trace, tmp_path / "t.safetensors")
    assert main(["convert", str(src), str(tmp_path / "t.oracleGeneral")]) == 0
    assert main(["convert", str(src), str(tmp_path / "t.lcs.csv")]) == 0
    n = int((e >= 0).sum())
    params = lcs.ReaderInitParam(has_header=True, has_header_set=True, delimiter=",", obj_id_is_num=True,
                                 obj_id_is_num_set=True)
    params.time_field, params.obj_id_field, params.obj_size_field, params.next_access_vtime_field = 1, 2, 3, 4
    for size in (2, 5, 9):
        for ours, theirs in (("lru", "LRU"), ("fifo", "FIFO"), ("opt", "Belady")):
            want = replay(trace, ours, size).hits
            files = [(tmp_path / "t.oracleGeneral", lcs.TraceType.ORACLE_GENERAL_TRACE, None)]
            if ours != "opt":  # libCacheSim 0.3's CSV reader leaves next_access_vtime unread: Belady needs binary
                files.append((tmp_path / "t.lcs.csv", lcs.TraceType.CSV_TRACE, params))
            for path, kind, p in files:
                reader = lcs.TraceReader(str(path), kind, p) if p is not None else lcs.TraceReader(str(path), kind)
                miss_ratio = getattr(lcs, theirs)(size, hashpower=8).process_trace(reader)[0]
                assert round(n * (1 - miss_ratio)) == want, (ours, size, path.name)


def test_record_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    from moesim.traces.record_cli import main as record_main
    from moesim.traces.record_cli import parse_args

    assert record_main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--model", "--prompts", "--out", "--max-new-tokens", "--batch-size", "--predictions", "--dtype",
                   "--device", "key=value", "Exit status"):
        assert option in out, option
    a = parse_args(["model=m", "prompts=p", "out=o", "max_new_tokens=3", "predictions=true"])
    b = parse_args(["--model", "m", "--prompts", "p", "--out", "o", "--max-new-tokens", "3", "--predictions"])
    assert a == b and a["max_new_tokens"] == 3 and a["predictions"] is True
    assert record_main(["model=m", "prompts=p", "out=o", "batch_size=0"]) == 2
    assert record_main([]) == 2
    err = capsys.readouterr().err
    assert "batch-size" in err


def _app(args: list[str], cwd: Path, module: str = "moesim.sim") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def test_moesim_help_lists_groups_and_knobs(tmp_path: Path) -> None:
    done = _app(["--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    for text in ("policy: arc, clock", "quant: bf16", "cache.l1_experts", "sweep_name", "+experiment=", "Exit status"):
        assert text in done.stdout, text
    done = _app(["--help"], tmp_path, "moesim.kernels.analysis_app")
    assert done.returncode == 0, done.stderr
    assert "checkpoint:" in done.stdout and "formats:" in done.stdout
    assert "policy:" not in done.stdout and "cache:" not in done.stdout  # the simulator's groups do not apply
    done = _app(["cache.l1_expert=3"], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_single_run_prints_its_folder(tmp_path: Path) -> None:
    done = _app(["trace.requests=1", "quant.error_rows=0", "cache.l1_experts=64",
                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"moesim: wrote {tmp_path / 'run'}" in done.stdout
    assert (tmp_path / "run" / "metrics.json").exists()
    done = _app(["trace.requests=1", "cache.l1_experts=0", f"hydra.run.dir={tmp_path / 'bad'}"],
                tmp_path)
    assert done.returncode == 1 and "moesim: error:" in done.stderr and "metrics.json" in done.stderr


def test_analyze_prints_a_summary_and_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from moesim.kernels.analysis_app import AnalysisConf, run_analysis
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    save_file({f"model.layers.0.block_sparse_moe.experts.{e}.{p}.weight": torch.randn(32, 64, generator=g)
               for e in range(2) for p in ("w1", "w2", "w3")}, str(tmp_path / "m.safetensors"))
    cfg = OmegaConf.structured(AnalysisConf(checkpoint="m.safetensors", rules="mixtral", formats=["mxfp4", "nvfp4"],
                                            plots=False, csv=True, quiet=True))
    assert run_analysis(cfg, tmp_path / "a", tmp_path)["status"] == "ok"
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [w[0] for w in lines if w and w[0] in ("mxfp4", "nvfp4")] == ["mxfp4", "nvfp4"]
    assert any(line[:2] == ["format", "bits/weight"] for line in lines)
    for name in ("summary", "quant_error", "matrix_stats", "warnings"):
        assert (tmp_path / "a" / f"{name}.csv").read_text().count("\n") >= 1, name
