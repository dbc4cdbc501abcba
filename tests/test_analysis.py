"""Checkpoint reading (gpt-oss MXFP4, per-expert and fused layouts) and the weight-analysis tables.

Every fixture is a tiny safetensors checkpoint written here; expected values are computed in the
test from the arrays written (bf16 widened from its bit pattern by hand, formats called directly).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from moesim.kernels import analysis
from moesim.kernels import tables as table_io
from moesim.kernels.analysis import COLUMNS, TABLES, analyze_checkpoint, read_table
from moesim.kernels.analysis_plots import PLOT_NAMES, plot_all
from moesim.kernels.checkpoint import Checkpoint, CheckpointError, NameRule, resolve_rules
from moesim.kernels.formats import get_format
from moesim.kernels.formats.base import FormatError
from moesim.kernels.formats.gptoss import decode_gptoss, encode_gptoss, interleave_rows
from safetensors.torch import save_file

E, FF, H = 3, 32, 64  # experts, intermediate (FFN) width, hidden; multiples of 32 for MX / NVFP4 blocks
SEED = 7


# ---- fixtures ------------------------------------------------------------------------------------

def _bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
    """A bf16 tensor and its exact float32 values, widened from the bit pattern without torch."""
    f = rng.standard_normal(shape).astype(np.float32)
    bits = (f.view(np.uint32) >> 16).astype(np.uint16)  # truncation: any bf16 pattern will do
    exact = (bits.astype(np.uint32) << 16).view(np.float32)
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16), exact


@pytest.fixture(scope="module")
def gptoss(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """gpt-oss ``original/`` layout: 2 layers, mlp1 rows interleaved gate/up, plus attention tensors."""
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("gptoss")
    tensors, raw = {}, {}
    for layer in range(2):
        gate = rng.standard_normal((E, FF, H)).astype(np.float32)
        up = rng.standard_normal((E, FF, H)).astype(np.float32)
        down = rng.standard_normal((E, H, FF)).astype(np.float32)
        b1, s1 = encode_gptoss(interleave_rows(gate, up, axis=-2))
        b2, s2 = encode_gptoss(down)
        raw[layer] = {"gate": gate, "up": up, "down": down, "b1": b1, "s1": s1, "b2": b2, "s2": s2}
        tensors[f"block.{layer}.mlp.mlp1_weight.blocks"] = torch.from_numpy(b1)
        tensors[f"block.{layer}.mlp.mlp1_weight.scales"] = torch.from_numpy(s1)
        tensors[f"block.{layer}.mlp.mlp2_weight.blocks"] = torch.from_numpy(b2)
        tensors[f"block.{layer}.mlp.mlp2_weight.scales"] = torch.from_numpy(s2)
        tensors[f"block.{layer}.mlp.mlp1_bias"] = torch.zeros(E, 2 * FF, dtype=torch.bfloat16)
        tensors[f"block.{layer}.attn.qkv.weight"] = torch.randn(8, H, dtype=torch.bfloat16)
    path = d / "model.safetensors"
    save_file(tensors, str(path))
    return {"path": path, "raw": raw}


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Mixtral per-expert bf16 tensors, sharded over two files with an index, plus a router."""
    rng = np.random.default_rng(1)
    d = tmp_path_factory.mktemp("mixtral")
    exact, shards = {}, [{}, {}]
    for layer in range(2):
        for e in range(2):
            for proj, shape in (("w1", (FF, H)), ("w3", (FF, H)), ("w2", (H, FF))):
                name = f"model.layers.{layer}.block_sparse_moe.experts.{e}.{proj}.weight"
                t, f = _bf16(rng, shape)
                shards[layer][name] = t
                exact[name] = f
        shards[layer][f"model.layers.{layer}.block_sparse_moe.gate.weight"] = torch.randn(2, H, dtype=torch.bfloat16)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(shard, str(d / fname))
        weight_map.update({n: fname for n in shard})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return {"path": d, "exact": exact}


def _fused(d: Path, rows: int, rng: np.random.Generator) -> dict:
    """transformers' fused experts: gate_up_proj [E, rows, H] (bf16), down_proj [E, H, I] (fp32)."""
    gu, gu_f = _bf16(rng, (E, rows, H))
    down = rng.standard_normal((E, H, FF)).astype(np.float32)
    tensors = {"model.layers.0.mlp.experts.gate_up_proj": gu,
               "model.layers.0.mlp.experts.down_proj": torch.from_numpy(down),
               "model.layers.0.mlp.gate.weight": torch.randn(E, H)}
    save_file(tensors, str(d / "model.safetensors"))
    return {"path": d / "model.safetensors", "gate_up": gu_f, "down": down}


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _fused(tmp_path_factory.mktemp("fused"), 2 * FF, np.random.default_rng(2))


@pytest.fixture(scope="module")
def fused_odd(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _fused(tmp_path_factory.mktemp("fused_odd"), 2 * FF + 1, np.random.default_rng(3))


@pytest.fixture(scope="module")
def gptoss_tables(gptoss: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("gptoss_out")
    tables = analyze_checkpoint(gptoss["path"], rules="gptoss", formats=["mxfp4", "nvfp4"], seed=SEED,
                                out_dir=out, quiet=True)
    return tables, out


def _by_key(rows: list[dict], **key: object) -> dict:
    hits = [r for r in rows if all(r[k] == v for k, v in key.items())]
    assert len(hits) == 1, (key, len(hits))
    return hits[0]


def _roundtrip(name: str, w: np.ndarray) -> np.ndarray:
    fmt = get_format(name)
    return fmt.decode(fmt.encode(w), dtype=np.float32)


def _output_error(w: np.ndarray, wq: np.ndarray, seed: int, n: int = 64) -> float:
    x = np.random.default_rng(seed).standard_normal((n, w.shape[1]))
    ref = x @ w.astype(np.float64).T
    return float(np.linalg.norm(ref - x @ wq.astype(np.float64).T) / np.linalg.norm(ref))


# ---- reading checkpoints -------------------------------------------------------------------------

def test_gptoss_matrices_are_deinterleaved_and_dequantized(gptoss: dict) -> None:
    ck = Checkpoint(gptoss["path"], rules="gptoss")
    mats = {(m.layer, m.expert, m.proj): m for ms in ck.matrices() for m in ms}
    assert len(mats) == 2 * E * 3
    for layer, raw in gptoss["raw"].items():
        mlp1 = decode_gptoss(raw["b1"], raw["s1"])  # [E, 2I, H], rows gate, up, gate, ...
        mlp2 = decode_gptoss(raw["b2"], raw["s2"])
        for e in range(E):
            np.testing.assert_array_equal(mats[(layer, e, "gate")].weight, mlp1[e, 0::2])
            np.testing.assert_array_equal(mats[(layer, e, "up")].weight, mlp1[e, 1::2])
            np.testing.assert_array_equal(mats[(layer, e, "down")].weight, mlp2[e])
            # MXFP4 quantizes each row on its own, so the gate is the OCP round trip of the original gate
            np.testing.assert_array_equal(mats[(layer, e, "gate")].weight, _roundtrip("mxfp4", raw["gate"][e]))
            assert mats[(layer, e, "gate")].source_dtype == "mxfp4"
    assert ck.unmatched == sorted(f"block.{i}.{t}" for i in range(2) for t in ("attn.qkv.weight", "mlp.mlp1_bias"))
    status = {r["tensor"]: r["status"] for r in ck.inventory()}
    assert status["block.0.mlp.mlp1_weight.scales"] == "companion"
    assert status["block.1.mlp.mlp2_weight.blocks"] == "matched"
    assert status["block.0.attn.qkv.weight"] == "unmatched"


def test_mixtral_bf16_sharded_with_index(mixtral: dict) -> None:
    ck = Checkpoint(mixtral["path"], rules="mixtral")
    assert [f.name for f in ck.files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    mats = [m for ms in ck.matrices() for m in ms]
    assert len(mats) == 2 * 2 * 3
    names = {"gate": "w1", "up": "w3", "down": "w2"}
    for m in mats:
        want = mixtral["exact"][f"model.layers.{m.layer}.block_sparse_moe.experts.{m.expert}.{names[m.proj]}.weight"]
        assert m.weight.dtype == np.float32 and m.source_dtype == "bfloat16"
        np.testing.assert_array_equal(m.weight, want)
    assert ck.unmatched == [f"model.layers.{i}.block_sparse_moe.gate.weight" for i in range(2)]


def test_fused_gate_up_split_in_halves(fused: dict) -> None:
    ck = Checkpoint(fused["path"], rules="fused")
    mats = {(m.layer, m.expert, m.proj): m.weight for ms in ck.matrices() for m in ms}
    assert sorted({p for _, _, p in mats}) == ["down", "gate", "up"] and len(mats) == 3 * E
    for e in range(E):
        np.testing.assert_array_equal(mats[(0, e, "gate")], fused["gate_up"][e, :FF])
        np.testing.assert_array_equal(mats[(0, e, "up")], fused["gate_up"][e, FF:])
        np.testing.assert_array_equal(mats[(0, e, "down")], fused["down"][e])
    assert ck.unmatched == ["model.layers.0.mlp.gate.weight"]


def test_uneven_split_strict_raises_lenient_keeps_whole(fused_odd: dict) -> None:
    with pytest.raises(CheckpointError, match="does not split in two"):
        Checkpoint(fused_odd["path"], rules="fused", strict=True)
    ck = Checkpoint(fused_odd["path"], rules="fused", strict=False)
    assert [w["code"] for w in ck.warnings] == ["uneven_split"]
    mats = {(m.expert, m.proj): m.weight for ms in ck.matrices() for m in ms}
    assert sorted({p for _, p in mats}) == ["down", "gate_up_proj"]
    np.testing.assert_array_equal(mats[(1, "gate_up_proj")], fused_odd["gate_up"][1])
    assert mats[(1, "gate_up_proj")].shape == (2 * FF + 1, H)


def test_in_out_layout_is_transposed_and_interleaved_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    gu = rng.standard_normal((E, H, 2 * FF)).astype(np.float32)  # [E, in, out], gate/up interleaved columns
    save_file({"model.layers.3.mlp.experts.gate_up_proj": torch.from_numpy(gu)}, str(tmp_path / "m.safetensors"))
    ck = Checkpoint(tmp_path, rules="gptoss_hf")
    mats = {(m.layer, m.expert, m.proj): m.weight for ms in ck.matrices() for m in ms}
    np.testing.assert_array_equal(mats[(3, 2, "gate")], gu[2][:, 0::2].T)
    np.testing.assert_array_equal(mats[(3, 2, "up")], gu[2][:, 1::2].T)
    assert mats[(3, 2, "gate")].shape == (FF, H)


def test_missing_scales_strict_and_lenient(tmp_path: Path) -> None:
    b, _ = encode_gptoss(np.ones((E, 4, H), np.float32))
    save_file({"block.0.mlp.mlp2_weight.blocks": torch.from_numpy(b)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="no companion"):
        Checkpoint(tmp_path, rules="gptoss")
    ck = Checkpoint(tmp_path, rules="gptoss", strict=False)
    assert [w["code"] for w in ck.warnings] == ["missing_scales", "no_expert_tensors"] and ck.units == []
    assert ck.inventory()[0]["status"] == "skipped"


def test_rules_from_mapping_and_bad_rules(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((FF, H)).astype(np.float32)
    save_file({"moe.0.e5.fc_in": torch.from_numpy(w), "moe.0.e5.other": torch.from_numpy(w.copy())},
              str(tmp_path / "m.safetensors"))
    rule = {"name": "custom", "pattern": r"^moe\.(?P<layer>\d+)\.e(?P<expert>\d+)\.(?P<proj>fc_in)$",
            "proj_map": {"fc_in": "gate"}}
    ck = Checkpoint(tmp_path, rules=[rule])
    (m,) = [m for ms in ck.matrices() for m in ms]
    assert (m.layer, m.expert, m.proj) == (0, 5, "gate")
    np.testing.assert_array_equal(m.weight, w)
    assert ck.unmatched == ["moe.0.e5.other"]
    assert [r.name for r in resolve_rules("mixtral,olmoe")] == ["mixtral", "qwen_moe"]
    with pytest.raises(CheckpointError, match="no tensor matched"):
        Checkpoint(tmp_path, rules="mixtral")
    lenient = Checkpoint(tmp_path, rules="mixtral", strict=False)
    assert [w["code"] for w in lenient.warnings] == ["no_expert_tensors"] and len(lenient.unmatched) == 2
    with pytest.raises(CheckpointError, match="unknown rule preset"):
        resolve_rules("nope")
    with pytest.raises(CheckpointError, match="'layer'"):
        NameRule(name="x", pattern=r"(?P<expert>\d+)", proj="gate")


# ---- analysis tables -----------------------------------------------------------------------------

def _pair(case: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(8)
    w = rng.standard_normal((5, 32)).astype(np.float32)
    zero = np.zeros_like(w)
    return {"random": (w, _roundtrip("nvfp4", w)), "exact": (w, w.copy()), "zero_both": (zero, zero),
            "zero_ref": (zero, w), "zero_quant": (w, zero)}[case]


@pytest.mark.parametrize("case", ["random", "exact", "zero_both", "zero_ref", "zero_quant"])
def test_error_metrics_match_kernels_metrics(case: str) -> None:
    from moesim.kernels import metrics

    w, wq = _pair(case)
    got = analysis.error_metrics(w, wq, seed=3, n_activations=16)
    want = {"mse": metrics.mse(w, wq), "rel_frobenius": metrics.relative_frobenius(w, wq),
            "sqnr_db": metrics.sqnr_db(w, wq), "max_abs_error": metrics.max_abs_error(w, wq),
            "cosine": metrics.cosine_similarity(w, wq), "output_error": metrics.output_error(w.T, wq.T, seed=3, n=16)}
    for k, v in want.items():
        if math.isnan(v) or math.isinf(v):
            assert got[k] == v or (math.isnan(v) and math.isnan(got[k])), (k, got[k], v)
        else:
            assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-300), k
    assert got["noise_sq"] == pytest.approx(float(np.sum((w.astype(np.float64) - wq) ** 2)), rel=1e-12)


def test_gptoss_tables_rows_and_values(gptoss: dict, gptoss_tables: tuple[dict, Path]) -> None:
    tables, _ = gptoss_tables
    assert set(tables) == set(TABLES)
    for name, rows in tables.items():
        assert all(tuple(r) == COLUMNS[name] for r in rows), name
    n_mat = 2 * E * 3
    assert len(tables["matrix_stats"]) == n_mat
    assert len(tables["quant_error"]) == 2 * n_mat
    assert len(tables["inventory"]) == 12
    assert sum(r["status"] == "unmatched" for r in tables["inventory"]) == 4
    # re-encoding dequantized MXFP4 with the same OCP rule is exact
    mx = [r for r in tables["quant_error"] if r["format"] == "mxfp4"]
    assert all(r["mse"] == 0.0 and r["sqnr_db"] == math.inf and r["output_error"] == 0.0 for r in mx)
    assert all(r["bits_per_weight"] == 4.25 for r in mx)
    # one matrix checked against values computed here
    raw = gptoss["raw"][1]
    w = decode_gptoss(raw["b1"], raw["s1"])[2, 1::2].astype(np.float64)  # layer 1, expert 2, up
    st = _by_key(tables["matrix_stats"], layer=1, expert=2, proj="up")
    assert (st["rows"], st["cols"], st["shape"], st["source_dtype"], st["rank"]) == (FF, H, f"{FF}x{H}", "mxfp4", -1)
    assert st["mean"] == pytest.approx(w.mean(), rel=1e-12, abs=1e-15)
    assert st["std"] == pytest.approx(w.std(), rel=1e-12)
    assert st["absmax"] == np.abs(w).max()
    assert st["sparsity"] == np.count_nonzero(w == 0) / w.size
    dev = w - w.mean()
    assert st["kurtosis"] == pytest.approx(np.mean(dev ** 4) / np.var(w) ** 2 - 3.0, rel=1e-9)
    qe = _by_key(tables["quant_error"], layer=1, expert=2, proj="up", format="nvfp4")
    wq = _roundtrip("nvfp4", w.astype(np.float32)).astype(np.float64)
    assert qe["mse"] == pytest.approx(np.mean((w - wq) ** 2), rel=1e-12)
    assert qe["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(w * w) / np.sum((w - wq) ** 2)), rel=1e-12)
    assert qe["max_abs_error"] == pytest.approx(np.abs(w - wq).max(), rel=1e-12)
    assert qe["output_error"] == pytest.approx(_output_error(w, wq, SEED), rel=1e-10)
    assert qe["bits_per_weight"] == get_format("nvfp4").bits_per_weight((FF, H))


def test_summary_and_deltas(gptoss_tables: tuple[dict, Path]) -> None:
    tables, _ = gptoss_tables
    summary = tables["summary"]
    # per format: 2 layers x (3 projs + all) + all layers x (3 projs + all)
    assert len(summary) == 2 * (2 * 4 + 4)
    nv = [r for r in tables["quant_error"] if r["format"] == "nvfp4"]
    top = _by_key(summary, format="nvfp4", layer=-1, proj="all")
    assert top["n_matrices"] == len(nv) == 2 * E * 3
    assert top["sqnr_db_mean"] == pytest.approx(np.mean([r["sqnr_db"] for r in nv]), rel=1e-12)
    down0 = [r for r in nv if r["layer"] == 0 and r["proj"] == "down"]
    assert _by_key(summary, format="nvfp4", layer=0, proj="down")["output_error_max"] == \
        max(r["output_error"] for r in down0)
    stats = tables["matrix_stats"]
    pooled = 10 * np.log10(sum(s["sum_sq"] for s in stats) / sum(r["noise_sq"] for r in nv))
    assert top["sqnr_db_pooled"] == pytest.approx(pooled, rel=1e-12)
    assert _by_key(summary, format="mxfp4", layer=-1, proj="all")["sqnr_db_pooled"] == math.inf
    deltas = tables["format_deltas"]
    assert len(deltas) == 2 * 4 + 4 and {d["baseline"] for d in deltas} == {"mxfp4"}
    d = _by_key(deltas, format="nvfp4", layer=-1, proj="all")
    # the baseline is exact everywhere, so nvfp4 is worse on every matrix
    assert (d["frac_better"], d["frac_worse"], d["n_matrices"]) == (0.0, 1.0, 2 * E * 3)
    assert d["delta_bits_per_weight"] == pytest.approx(get_format("nvfp4").bits_per_weight((FF, H)) - 4.25)


def test_tables_written_and_read_back(gptoss_tables: tuple[dict, Path]) -> None:
    tables, out = gptoss_tables
    for name in TABLES:
        back = read_table(out / f"{name}.parquet")
        assert len(back) == len(tables[name]), name
    assert read_table(out / "warnings.parquet") == []
    import pyarrow.parquet as pq

    assert tuple(pq.read_schema(out / "warnings.parquet").names) == COLUMNS["warnings"]
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["settings"]["formats"] == ["mxfp4", "nvfp4"] and meta["settings"]["seed"] == SEED
    assert [r["name"] for r in meta["settings"]["rules"]] == ["gptoss"]
    assert meta["counts"]["quant_error"] == len(tables["quant_error"])
    assert meta["inputs"]["unmatched"] == sorted(r["tensor"] for r in tables["inventory"] if r["status"] == "unmatched")
    assert "safetensors" in meta["versions"]
    assert not list(out.glob(".*.tmp"))


def test_csv_fallback(fused: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_io, "have_pyarrow", lambda: False)
    tables = analyze_checkpoint(fused["path"], rules="fused", formats="bf16", out_dir=tmp_path, quiet=True)
    for name in TABLES:
        assert (tmp_path / f"{name}.csv").is_file() and not (tmp_path / f"{name}.parquet").exists()
    back = read_table(tmp_path / "matrix_stats.csv")
    assert back == tables["matrix_stats"]
    assert read_table(tmp_path / "format_deltas.csv") == []


def test_bf16_fused_stats_and_exact_bf16_format(fused: dict) -> None:
    tables = analyze_checkpoint(fused["path"], rules="fused", formats=["bf16", "mxfp4"], out_dir=None, quiet=True)
    assert len(tables["matrix_stats"]) == 3 * E
    gate = fused["gate_up"][1, :FF].astype(np.float64)
    st = _by_key(tables["matrix_stats"], layer=0, expert=1, proj="gate")
    assert st["source_dtype"] == "bfloat16"
    assert (st["mean"], st["absmax"]) == (pytest.approx(gate.mean(), rel=1e-12), np.abs(gate).max())
    # bf16 values survive the bf16 format unchanged; fp32 ones do not
    assert _by_key(tables["quant_error"], layer=0, expert=1, proj="gate", format="bf16")["mse"] == 0.0
    assert _by_key(tables["quant_error"], layer=0, expert=1, proj="down", format="bf16")["mse"] > 0.0
    mq = _by_key(tables["quant_error"], layer=0, expert=1, proj="gate", format="mxfp4")
    wq = _roundtrip("mxfp4", gate.astype(np.float32)).astype(np.float64)
    assert mq["mse"] == pytest.approx(np.mean((gate - wq) ** 2), rel=1e-12)
    assert mq["cosine"] == pytest.approx(gate.ravel() @ wq.ravel() / np.linalg.norm(gate) / np.linalg.norm(wq),
                                         rel=1e-12)


def test_uneven_split_through_analysis(fused_odd: dict) -> None:
    with pytest.raises(CheckpointError):
        analyze_checkpoint(fused_odd["path"], rules="fused", formats="bf16", out_dir=None, quiet=True)
    tables = analyze_checkpoint(fused_odd["path"], rules="fused", formats="bf16", out_dir=None, strict=False,
                                quiet=True)
    assert [w["code"] for w in tables["warnings"]] == ["uneven_split"]
    assert sorted({r["proj"] for r in tables["matrix_stats"]}) == ["down", "gate_up_proj"]
    assert len(tables["matrix_stats"]) == 2 * E


def test_format_that_cannot_take_the_shape(mixtral: dict) -> None:
    # int4-g128 needs the last axis to be a multiple of 128; every matrix here has 32 or 64 columns
    with pytest.raises(FormatError, match="int4-g128"):
        analyze_checkpoint(mixtral["path"], formats="bf16,int4-g128", out_dir=None, quiet=True)
    tables = analyze_checkpoint(mixtral["path"], formats="bf16,int4-g128", out_dir=None, strict=False, quiet=True)
    assert {w["code"] for w in tables["warnings"]} == {"format_shape"}
    assert {r["format"] for r in tables["quant_error"]} == {"bf16"}
    assert len(tables["quant_error"]) == len(tables["matrix_stats"]) == 12
    with pytest.raises(FormatError, match="unknown weight format"):
        analyze_checkpoint(mixtral["path"], formats="nope", out_dir=None, quiet=True)


def test_sample_rows_and_rank(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    low = (rng.standard_normal((H, 3)) @ rng.standard_normal((3, H))).astype(np.float32)  # rank 3
    low[:, :5] = 0.0
    save_file({"model.layers.0.mlp.experts.0.down_proj.weight": torch.from_numpy(low)},
              str(tmp_path / "m.safetensors"))
    (full,) = analyze_checkpoint(tmp_path, formats="fp32", out_dir=None, rank=True, quiet=True)["matrix_stats"]
    assert full["rank"] == 3 and full["sparsity"] == 5 / H and full["proj"] == "down"
    runs = [analyze_checkpoint(tmp_path, formats="fp32", sample_rows=10, seed=s, out_dir=None, quiet=True)
            for s in (1, 1, 2)]
    sts = [r["matrix_stats"][0] for r in runs]
    assert sts[0]["sampled_rows"] == 10 and sts[0]["numel"] == 10 * H and sts[0]["rows"] == H
    assert sts[0] == sts[1] and sts[0]["mean"] != sts[2]["mean"]
    picked = analysis.sample_matrix_rows(low, 10, seed=1, layer=0, expert=0, proj="down")
    assert sts[0]["mean"] == pytest.approx(picked.astype(np.float64).mean(), rel=1e-12)
    assert all(any(np.array_equal(p, r) for r in low) for p in picked)


# ---- plots and command line ---------------------------------------------------------------------

def test_plots_are_non_empty_pngs(gptoss_tables: tuple[dict, Path], tmp_path: Path) -> None:
    tables, _ = gptoss_tables
    paths = plot_all(tables, tmp_path)
    assert [p.name for p in paths] == list(PLOT_NAMES)
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli(mixtral: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = analysis.main([str(mixtral["path"]), "--formats", "mxfp4,bf16", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    assert "12 expert matrices, 2 unmatched tensors" in capsys.readouterr().out
    assert len(read_table(tmp_path / "quant_error.parquet")) == 24
    assert all((tmp_path / "plots" / n).stat().st_size > 0 for n in PLOT_NAMES)
