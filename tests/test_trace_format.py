"""The trace format: exact round trips through every file form, memory-mapped reads, and one test
per validation rule checking the exception type and that the message locates the problem."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.traces import io
from moesim.traces.errors import (
    CorruptTraceFileError,
    DuplicateExpertError,
    ExpertIdRangeError,
    GateWeightError,
    ImportFormatError,
    MissingMetadataError,
    ShapeMismatchError,
    TraceError,
)
from moesim.traces.trace import DECODE, PAD, PREFILL, Trace, TraceMeta, make_trace
from safetensors.numpy import save as st_save

FORMATS = [".safetensors", ".npz", ".csv", ".jsonl"]
OPTIONAL = ("gate_weights", "request_id", "position", "phase", "domain", "predicted")


def meta(L: int = 3, E: int = 6, K: int = 3, **kw: object) -> TraceMeta:
    return TraceMeta(model="toy-moe", num_layers=L, num_experts=E, top_k=K, source="synthetic",
                     generator="tests", generator_version="9", created_at="2024-01-02T03:04:05+00:00",
                     notes="hand made; ünïcode ok", extra={"domains": ["a", "b"], "knob": 1.5, **kw})


def full_trace() -> Trace:
    """Every optional field, pads at the end AND in the middle of rows, both phases."""
    experts = np.array([
        [[0, 1, 2], [3, -1, 4], [5, -1, -1]],
        [[2, 1, 0], [-1, -1, -1], [0, 5, 3]],
        [[4, 3, 5], [1, 2, -1], [2, -1, 1]],
        [[1, 0, -1], [4, 5, 0], [3, 2, 1]],
    ], np.int16)
    gates = np.where(experts >= 0, (np.arange(experts.size).reshape(experts.shape) + 1) / 7.0, 0.0)
    gates[0, 0, 0] = 1e-30  # tiny but exact float32 values must survive the text forms
    predicted = np.array([[[-1, -1], [0, 1], [5, -1]]] * 4, np.int16)
    return make_trace(experts, meta(), gate_weights=gates.astype(np.float32),
                      request_id=np.array([7, 7, 9, 9]), position=np.array([0, 1, 0, 1]),
                      phase=np.array([PREFILL, DECODE, PREFILL, DECODE]), domain=np.array([1, 1, 0, 0]),
                      predicted=predicted)


def minimal_trace() -> Trace:
    return make_trace(np.array([[[0, 1, 2], [3, 4, 5], [1, 0, 2]]], np.int16), meta())


def empty_trace(with_optional: bool) -> Trace:
    kw = {}
    if with_optional:
        kw = {"gate_weights": np.zeros((0, 3, 3), np.float32), "request_id": np.zeros(0, np.int64),
              "position": np.zeros(0, np.int32), "phase": np.zeros(0, np.int8),
              "domain": np.zeros(0, np.int16), "predicted": np.zeros((0, 3, 2), np.int16)}
    return make_trace(np.zeros((0, 3, 3), np.int16), meta(), **kw)


def assert_same(a: Trace, b: Trace) -> None:
    assert a.meta == b.meta
    assert sorted(a.optional_fields()) == sorted(b.optional_fields())
    for name in ("experts", *OPTIONAL):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            continue
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        # Compare bit patterns: a float that merely compares equal (-0.0 vs 0.0) is not a round trip.
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), name


# ---- round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("make", [full_trace, minimal_trace, lambda: empty_trace(True),
                                  lambda: empty_trace(False)], ids=["full", "minimal", "empty", "empty-bare"])
def test_round_trip_is_exact(tmp_path: Path, ext: str, make) -> None:
    trace = make()
    path = io.save_any(trace, tmp_path / f"t{ext}")
    back = io.load_any(path)
    assert_same(trace, back)
    assert back.file == str(path)


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_keeps_unusual_gate_bits(tmp_path: Path, ext: str) -> None:
    # Gates that are legal but easy to lose: -0.0, a non-zero gate on a pad slot, float32 extremes.
    experts = np.array([[[0, -1, 1], [2, -1, -1]]], np.int16)
    gates = np.array([[[-0.0, 0.5, np.float32(3.4028235e38)], [np.float32(1.4e-45), 0.0, 0.25]]], np.float32)
    trace = make_trace(experts, meta(L=2), gate_weights=gates)
    assert_same(trace, io.load_any(io.save_any(trace, tmp_path / f"g{ext}")))


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    L = draw(st.integers(1, 3))
    E = draw(st.integers(1, 7))
    K = draw(st.integers(1, E))
    T = draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    experts = np.full((T, L, K), PAD, np.int16)
    for t in range(T):
        for layer in range(L):
            ids = rng.choice(E, K, replace=False)
            keep = rng.random(K) < 0.8
            experts[t, layer] = np.where(keep, ids, PAD)
    kw: dict[str, np.ndarray] = {}
    if draw(st.booleans()):
        kw["gate_weights"] = np.where(experts >= 0, rng.random(experts.shape), 0).astype(np.float32)
    if draw(st.booleans()):
        kw["request_id"] = np.sort(rng.integers(0, 3, T))
        kw["position"] = rng.integers(0, 1000, T).astype(np.int32)
        kw["phase"] = rng.integers(0, 2, T).astype(np.int8)
        kw["domain"] = rng.integers(-5, 5, T).astype(np.int16)
    if draw(st.booleans()):
        kp = draw(st.integers(1, E))
        pred = np.full((T, L, kp), PAD, np.int16)
        for t in range(T):
            for layer in range(L):
                pred[t, layer] = np.where(rng.random(kp) < 0.7, rng.choice(E, kp, replace=False), PAD)
        kw["predicted"] = pred
    return make_trace(experts, TraceMeta("h", L, E, min(K, E)), **kw)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=traces(), ext=st.sampled_from(FORMATS))
def test_round_trip_property(tmp_path: Path, trace: Trace, ext: str) -> None:
    assert_same(trace, io.load_any(io.save_any(trace, tmp_path / f"p{ext}")))


def test_save_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "t.safetensors"
    io.save(full_trace(), path)
    io.save(minimal_trace(), path)  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["t.safetensors"]
    assert io.load(path).num_steps == 1


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    io.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), io.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


# ---- memory-mapped reads -----------------------------------------------------------------------

def test_load_memory_maps_and_iter_chunks_walks_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    T, L, E, K = 50, 2, 9, 3
    experts = np.stack([[rng.choice(E, K, replace=False) for _ in range(L)] for _ in range(T)]).astype(np.int16)
    trace = make_trace(experts, TraceMeta("m", L, E, K), gate_weights=rng.random((T, L, K)),
                       request_id=np.arange(T) // 10)
    path = io.save(trace, tmp_path / "m.safetensors")
    back = io.load(path)
    assert isinstance(back.experts, np.memmap)
    assert isinstance(back.gate_weights, np.memmap)
    assert isinstance(back.request_id, np.memmap)
    assert not back.experts.flags.writeable
    chunks = list(back.iter_chunks(steps=7))
    assert [c.num_steps for c in chunks] == [7] * 7 + [1]
    assert all(isinstance(c.experts, np.memmap) for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.experts for c in chunks]), experts)
    np.testing.assert_array_equal(np.concatenate([c.request_id for c in chunks]), np.arange(T) // 10)
    assert back.num_accesses() == T * L * K
    eager = io.load(path, mmap=False)
    assert not isinstance(eager.experts, np.memmap)
    assert_same(back, eager)


def test_iter_chunks_of_empty_trace_yields_nothing() -> None:
    assert list(empty_trace(True).iter_chunks(4)) == []


# ---- validation: one test per rule ---------------------------------------------------------------

def saved_invalid(tmp_path: Path, experts: np.ndarray, m: TraceMeta | None = None, **kw: np.ndarray) -> Path:
    """Write a trace that breaks a rule (validation skipped), so loading must catch it."""
    bad = make_trace(experts, m or meta(L=experts.shape[1]), validate=False, **kw)
    return io.save(bad, tmp_path / "bad.safetensors")


def ok_experts(T: int = 3, L: int = 2) -> np.ndarray:
    return np.tile(np.array([0, 1, 2], np.int16), (T, L, 1))


def check(exc: pytest.ExceptionInfo[TraceError], path: Path | str, field: str, index: str | None) -> None:
    msg = str(exc.value)
    assert str(path) in msg
    assert f"field '{field}'" in msg
    assert exc.value.field == field
    if index is not None:
        assert f"at {index}" in msg


@pytest.mark.parametrize("bad_id", [6, 100, -2])
def test_expert_id_out_of_range(tmp_path: Path, bad_id: int) -> None:
    e = ok_experts()
    e[2, 1, 1] = bad_id
    path = saved_invalid(tmp_path, e)
    with pytest.raises(ExpertIdRangeError) as exc:
        io.load(path)
    check(exc, path, "experts", "[2, 1, 1]")
    assert str(bad_id) in str(exc.value)


def test_pad_is_allowed_anywhere_in_a_row(tmp_path: Path) -> None:
    e = ok_experts()
    e[0, 0] = [-1, 2, -1]
    e[1, 1] = [-1, -1, -1]
    trace = io.load(saved_invalid(tmp_path, e))
    assert trace.num_accesses() == e.size - 5


def test_predicted_id_out_of_range(tmp_path: Path) -> None:
    pred = np.full((3, 2, 2), PAD, np.int16)
    pred[1, 0, 1] = 6
    path = saved_invalid(tmp_path, ok_experts(), predicted=pred)
    with pytest.raises(ExpertIdRangeError) as exc:
        io.load(path)
    check(exc, path, "predicted", "[1, 0, 1]")


def test_duplicate_expert_in_a_row(tmp_path: Path) -> None:
    e = ok_experts()
    e[1, 0] = [4, 2, 4]
    path = saved_invalid(tmp_path, e)
    with pytest.raises(DuplicateExpertError) as exc:
        io.load(path)
    check(exc, path, "experts", "[1, 0]")
    assert "expert 4 appears twice" in str(exc.value)


def test_duplicate_pads_are_not_duplicates() -> None:
    make_trace(np.array([[[-1, 3, -1]]], np.int16), meta(L=1))


def test_layers_disagree_with_metadata(tmp_path: Path) -> None:
    path = saved_invalid(tmp_path, ok_experts(L=2), meta(L=3))
    with pytest.raises(ShapeMismatchError) as exc:
        io.load(path)
    check(exc, path, "experts", None)
    assert "2 layers but metadata num_layers=3" in str(exc.value)


def test_width_below_top_k(tmp_path: Path) -> None:
    path = saved_invalid(tmp_path, ok_experts()[:, :, :2], meta(L=2, K=3))
    with pytest.raises(ShapeMismatchError) as exc:
        io.load(path)
    check(exc, path, "experts", None)
    assert "width 2" in str(exc.value)


def test_gate_weights_shape(tmp_path: Path) -> None:
    path = saved_invalid(tmp_path, ok_experts(), gate_weights=np.ones((3, 2, 2), np.float32))
    with pytest.raises(ShapeMismatchError) as exc:
        io.load(path)
    check(exc, path, "gate_weights", None)
    assert "(3, 2, 2)" in str(exc.value) and "(3, 2, 3)" in str(exc.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_gate(tmp_path: Path, value: float) -> None:
    g = np.ones((3, 2, 3), np.float32)
    g[2, 0, 1] = value
    path = saved_invalid(tmp_path, ok_experts(), gate_weights=g)
    with pytest.raises(GateWeightError) as exc:
        io.load(path)
    check(exc, path, "gate_weights", "[2, 0, 1]")
    assert "not finite" in str(exc.value)


def test_negative_gate(tmp_path: Path) -> None:
    g = np.ones((3, 2, 3), np.float32)
    g[0, 1, 2] = -0.25
    path = saved_invalid(tmp_path, ok_experts(), gate_weights=g)
    with pytest.raises(GateWeightError) as exc:
        io.load(path)
    check(exc, path, "gate_weights", "[0, 1, 2]")
    assert "-0.25 is negative" in str(exc.value)


@pytest.mark.parametrize("name", ["request_id", "position", "phase", "domain"])
def test_step_field_length(tmp_path: Path, name: str) -> None:
    path = saved_invalid(tmp_path, ok_experts(), **{name: np.zeros(2, dtype=io._EXPECTED_DTYPES[name])})
    with pytest.raises(ShapeMismatchError) as exc:
        io.load(path)
    check(exc, path, name, None)
    assert "must be [3]" in str(exc.value)


def test_bad_phase_value(tmp_path: Path) -> None:
    path = saved_invalid(tmp_path, ok_experts(), phase=np.array([0, 1, 5], np.int8))
    with pytest.raises(ShapeMismatchError) as exc:
        io.load(path)
    check(exc, path, "phase", "[2]")


def raw_file(tmp_path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Path:
    path = tmp_path / "raw.safetensors"
    path.write_bytes(st_save(tensors, metadata=metadata))
    return path


@pytest.mark.parametrize("key", ["model", "num_layers", "num_experts", "top_k"])
def test_missing_metadata_key(tmp_path: Path, key: str) -> None:
    strings = minimal_trace().meta.to_strings()
    del strings[key]
    path = raw_file(tmp_path, {"experts": minimal_trace().experts}, strings)
    with pytest.raises(MissingMetadataError) as exc:
        io.load(path)
    check(exc, path, key, None)


def test_no_metadata_at_all(tmp_path: Path) -> None:
    path = raw_file(tmp_path, {"experts": minimal_trace().experts}, {})
    with pytest.raises(MissingMetadataError) as exc:
        io.load(path)
    check(exc, path, "model", None)


@pytest.mark.parametrize(("key", "value"), [("num_experts", "many"), ("top_k", "2.5"), ("num_layers", "")])
def test_non_integer_metadata(tmp_path: Path, key: str, value: str) -> None:
    strings = {**minimal_trace().meta.to_strings(), key: value}
    path = raw_file(tmp_path, {"experts": minimal_trace().experts}, strings)
    with pytest.raises(MissingMetadataError) as exc:
        io.load(path)
    check(exc, path, key, None)


@pytest.mark.parametrize(("key", "value"), [("num_experts", "0"), ("top_k", "-1")])
def test_non_positive_metadata(tmp_path: Path, key: str, value: str) -> None:
    strings = {**minimal_trace().meta.to_strings(), key: value}
    path = raw_file(tmp_path, {"experts": minimal_trace().experts}, strings)
    with pytest.raises(MissingMetadataError) as exc:
        io.load(path)
    check(exc, path, key, None)


def test_bad_extra_metadata(tmp_path: Path) -> None:
    strings = {**minimal_trace().meta.to_strings(), "extra": "{not json"}
    path = raw_file(tmp_path, {"experts": minimal_trace().experts}, strings)
    with pytest.raises(MissingMetadataError) as exc:
        io.load(path)
    check(exc, path, "extra", None)


@pytest.mark.parametrize("cut", [1, 17, 40])
def test_truncated_data(tmp_path: Path, cut: int) -> None:
    path = io.save(full_trace(), tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    data_len = len(data) - cut - 8 - n
    cut_off = {k for k, v in header.items() if k != "__metadata__" and v["data_offsets"][1] > data_len}
    with pytest.raises(CorruptTraceFileError) as exc:
        io.load(path)
    # A tensor whose bytes run past the end is named, with its byte range and the bytes present.
    assert exc.value.field in cut_off
    check(exc, path, exc.value.field, None)
    begin, end = header[exc.value.field]["data_offsets"]
    assert f"[{begin}, {end})" in str(exc.value) and f"{data_len} data bytes" in str(exc.value)


def test_truncated_header(tmp_path: Path) -> None:
    path = io.save(full_trace(), tmp_path / "t.safetensors")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CorruptTraceFileError) as exc:
        io.load(path)
    assert str(path) in str(exc.value) and "truncated" in str(exc.value)


@pytest.mark.parametrize("content", [b"", b"abc", b"\x05\x00\x00\x00\x00\x00\x00\x00{not}", b"\x02\x00\x00\x00\x00\x00\x00\x00[]"])
def test_corrupt_header(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.safetensors"
    path.write_bytes(content)
    with pytest.raises(CorruptTraceFileError) as exc:
        io.load(path)
    assert str(path) in str(exc.value)


def test_malformed_header_entry(tmp_path: Path) -> None:
    header = json.dumps({"experts": {"dtype": "I16", "shape": [1, 1, 1]}}).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00\x00")
    with pytest.raises(CorruptTraceFileError) as exc:
        io.load(path)
    check(exc, path, "experts", None)


def test_unknown_tensor(tmp_path: Path) -> None:
    t = minimal_trace()
    path = raw_file(tmp_path, {"experts": t.experts, "router_logits": np.zeros(3, np.float32)},
                    t.meta.to_strings())
    with pytest.raises(ShapeMismatchError) as exc:
        io.load(path)
    check(exc, path, "router_logits", None)


def test_missing_experts_tensor(tmp_path: Path) -> None:
    path = raw_file(tmp_path, {"position": np.zeros(1, np.int32)}, minimal_trace().meta.to_strings())
    with pytest.raises(ShapeMismatchError) as exc:
        io.load(path)
    check(exc, path, "experts", None)


@pytest.mark.parametrize(("name", "array"), [
    ("experts", np.zeros((1, 3, 3), np.int32)),
    ("experts", np.zeros((1, 3, 3), np.float32)),
    ("gate_weights", np.zeros((1, 3, 3), np.float64)),
    ("request_id", np.zeros(1, np.int32)),
])
def test_wrong_dtype_on_disk(tmp_path: Path, name: str, array: np.ndarray) -> None:
    t = minimal_trace()
    path = raw_file(tmp_path, {"experts": t.experts, name: array}, t.meta.to_strings())
    with pytest.raises(ShapeMismatchError) as exc:
        io.load(path)
    check(exc, path, name, None)
    assert "but the format stores" in str(exc.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TraceError) as exc:
        io.load(tmp_path / "nope.safetensors")
    assert "nope.safetensors" in str(exc.value)


def test_errors_in_memory_name_memory() -> None:
    e = ok_experts()
    e[0, 0, 0] = 9
    with pytest.raises(ExpertIdRangeError) as exc:
        make_trace(e, meta(L=2))
    assert str(exc.value).startswith("<memory>: field 'experts' at [0, 0, 0]")


def test_validation_walks_every_chunk() -> None:
    from moesim.traces.trace import validate_trace

    e = np.tile(np.array([0, 1, 2], np.int16), (10, 2, 1))
    e[9, 1, 2] = 7
    trace = make_trace(e, meta(L=2), validate=False)
    with pytest.raises(ExpertIdRangeError) as exc:
        validate_trace(trace, chunk_steps=3)
    assert exc.value.index == (9, 1, 2)


def test_non_integer_experts_are_refused() -> None:
    with pytest.raises(ShapeMismatchError) as exc:
        make_trace(np.array([[[0.5, 1.0, 2.0]]]), meta(L=1))
    assert exc.value.field == "experts"


# ---- the other file forms report their own problems -------------------------------------------------

@pytest.mark.parametrize("ext", [".npz", ".csv", ".jsonl"])
def test_text_and_npz_forms_validate_with_file_name(tmp_path: Path, ext: str) -> None:
    e = ok_experts()
    e[1, 1, 0] = 6
    bad = make_trace(e, meta(L=2), validate=False)
    path = io.save_any(bad, tmp_path / f"bad{ext}")
    with pytest.raises(ExpertIdRangeError) as exc:
        io.load_any(path)
    check(exc, path, "experts", "[1, 1, 0]")


def test_npz_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, experts=ok_experts())
    with pytest.raises(ImportFormatError) as exc:
        io.load_npz(path)
    check(exc, path, "__meta__", None)


def test_npz_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(CorruptTraceFileError) as exc:
        io.load_npz(path)
    assert str(path) in str(exc.value)


def test_jsonl_bad_line_is_located(tmp_path: Path) -> None:
    path = io.save_jsonl(full_trace(), tmp_path / "t.jsonl")
    lines = path.read_text().splitlines()
    lines[4] = "{broken"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportFormatError) as exc:
        io.load_jsonl(path)
    check(exc, path, "line", "[5]")


def test_jsonl_without_meta_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"step": 0, "layer": 0, "experts": [1]}\n')
    with pytest.raises(ImportFormatError) as exc:
        io.load_jsonl(path)
    check(exc, path, "meta", "[1]")


def test_jsonl_rows_out_of_order(tmp_path: Path) -> None:
    path = io.save_jsonl(full_trace(), tmp_path / "t.jsonl")
    lines = path.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportFormatError) as exc:
        io.load_jsonl(path)
    check(exc, path, "layer", "[3]")


def test_csv_bad_integer_is_located(tmp_path: Path) -> None:
    path = io.save_csv(full_trace(), tmp_path / "t.csv")
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("7", "seven", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportFormatError) as exc:
        io.load_csv(path)
    check(exc, path, "request_id", "[4]")


def test_csv_bad_expert_list_is_located(tmp_path: Path) -> None:
    path = io.save_csv(minimal_trace(), tmp_path / "t.csv")
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("0 1 2", "0 x 2")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportFormatError) as exc:
        io.load_csv(path)
    check(exc, path, "experts", "[3]")


def test_csv_bad_header_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("# moesim.trace {not json\nstep,layer,experts\n")
    with pytest.raises(ImportFormatError) as exc:
        io.load_csv(path)
    check(exc, path, "header", "[1]")


def test_csv_without_header_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("step,layer,experts\n0,0,1\n")
    with pytest.raises(ImportFormatError) as exc:
        io.load_csv(path)
    check(exc, path, "header", "[1]")


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(TraceError) as exc:
        io.save_any(minimal_trace(), tmp_path / "t.parquet")
    assert "t.parquet" in str(exc.value)
    with pytest.raises(TraceError):
        io.load_any(tmp_path / "t.h5")


def test_jsonl_missing_layer_row_is_refused(tmp_path: Path) -> None:
    # A step whose rows stop early would otherwise come back as silent pads.
    path = io.save_jsonl(full_trace(), tmp_path / "t.jsonl")
    lines = path.read_text().splitlines()
    del lines[3]  # step 0, layer 2
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportFormatError) as exc:
        io.load_jsonl(path)
    check(exc, path, "layer", "[4]")
    assert "step 0 stops at layer 1 of 3" in str(exc.value)


def test_jsonl_truncated_last_step_is_refused(tmp_path: Path) -> None:
    path = io.save_jsonl(full_trace(), tmp_path / "t.jsonl")
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ImportFormatError) as exc:
        io.load_jsonl(path)
    check(exc, path, "layer", None)


@pytest.mark.parametrize(("field", "value"), [("experts", [0, 1, 2, 3]), ("experts", [70000]),
                                              ("experts", "abc"), ("gates", [0.5, "x"])])
def test_jsonl_bad_row_values_are_located(tmp_path: Path, field: str, value: object) -> None:
    path = io.save_jsonl(full_trace(), tmp_path / "t.jsonl")
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    row[field] = value
    lines[2] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportFormatError) as exc:
        io.load_jsonl(path)
    check(exc, path, field, "[3]")


def test_row_forms_keep_inner_pads_in_the_file(tmp_path: Path) -> None:
    # The written rows drop trailing pads only, so the slot of an inner pad is visible in the file.
    path = io.save_jsonl(full_trace(), tmp_path / "t.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert rows[1]["experts"] == [3, -1, 4]
    assert rows[2]["experts"] == [5]
    assert rows[4]["experts"] == []
    assert rows[0]["predicted"] == []


def test_row_forms_read_rows_without_inner_pads(tmp_path: Path) -> None:
    # Rows with every pad removed (as earlier files were written) still load, padded at the end.
    head = {"meta": meta(L=1).to_strings(), "width": 3}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(head) + "\n" + json.dumps({"step": 0, "layer": 0, "experts": [4, 2]}) + "\n")
    np.testing.assert_array_equal(io.load_jsonl(path).experts, [[[4, 2, -1]]])
