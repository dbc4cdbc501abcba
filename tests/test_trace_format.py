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
from moesim.kernels import files
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
    files.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), files.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st_ = os.fstat(fd)
        events.append(("fsync", "folder" if stat.S_ISDIR(st_.st_mode) else f"file of {st_.st_size} bytes"))
        real_fsync(fd)

    def replace(src: str, dst: object) -> None:
        events.append(("replace", Path(str(dst)).name))
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    files.atomic_write_text(tmp_path / "t.txt", "hello")
    assert events == [("fsync", "file of 5 bytes"), ("replace", "t.txt"), ("fsync", "folder")]


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
    trace = make_trace(np.array([[[-1, 3, -1]]], np.int16), meta(L=1))
    assert trace.num_accesses() == 1
    assert trace.experts.tolist() == [[[-1, 3, -1]]]


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


# ---- hostile files: every reader refuses them with one located TraceError -------------------------
#
# Each case starts from a valid file of ``full_trace()`` and breaks one thing. The reader must refuse
# it with a TraceError that names the file and the expected field, and says why (``words``): never
# another exception, never a silent coercion (1.9 -> 1, true -> 1, "5" -> 5), never an allocation
# the file does not pay for.

def _jsonl_lines(tmp_path: Path) -> list[str]:
    return io.save_jsonl(full_trace(), tmp_path / "base.jsonl").read_text().splitlines()


def _edit_json_line(line: str, path: tuple, value: object) -> str:
    obj = json.loads(line)
    node = obj
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(obj)


_DELETE = object()


def jsonl_case(line: int, path: tuple, value: object):
    """A JSONL file whose line ``line`` (0 = head) has the value at ``path`` replaced (or deleted)."""
    def build(tmp_path: Path) -> Path:
        lines = _jsonl_lines(tmp_path)
        lines[line] = _edit_json_line(lines[line], path, value)
        out = tmp_path / "bad.jsonl"
        out.write_text("\n".join(lines) + "\n")
        return out
    return build


def jsonl_rows_case(lines: tuple[int, ...], path: tuple, value: object):
    """Like :func:`jsonl_case` on several lines at once (e.g. every layer of one step)."""
    def build(tmp_path: Path) -> Path:
        text = _jsonl_lines(tmp_path)
        for i in lines:
            text[i] = _edit_json_line(text[i], path, value)
        out = tmp_path / "bad.jsonl"
        out.write_text("\n".join(text) + "\n")
        return out
    return build


def jsonl_text(line: int, text: str | bytes):
    """A JSONL file whose line ``line`` is replaced by raw text or bytes."""
    def build(tmp_path: Path) -> Path:
        lines = [x.encode() for x in _jsonl_lines(tmp_path)]
        lines[line] = text if isinstance(text, bytes) else text.encode()
        out = tmp_path / "bad.jsonl"
        out.write_bytes(b"\n".join(lines) + b"\n")
        return out
    return build


def meta_case(key: str, value: object):
    return jsonl_case(0, ("meta", key), value)


def csv_case(edit):
    """A CSV file of ``full_trace()`` whose lines ``edit`` rewrites (a list of strings, in place)."""
    def build(tmp_path: Path) -> Path:
        lines = io.save_csv(full_trace(), tmp_path / "base.csv").read_text().splitlines()
        edit(lines)
        out = tmp_path / "bad.csv"
        out.write_text("\n".join(lines) + "\n")
        return out
    return build


def csv_cell(column: str, value: str, row: int = 2):
    """Line ``row`` (2 = the first data row) with one column's cell replaced."""
    def edit(lines: list[str]) -> None:
        cols = lines[1].split(",")
        cells = lines[row].split(",")
        cells[cols.index(column)] = value
        lines[row] = ",".join(cells)
    return csv_case(edit)


def csv_drop_column(column: str):
    def edit(lines: list[str]) -> None:
        j = lines[1].split(",").index(column)
        for i in range(1, len(lines)):
            cells = lines[i].split(",")
            del cells[j]
            lines[i] = ",".join(cells)
    return csv_case(edit)


def _st_parts(tmp_path: Path) -> tuple[dict, bytes]:
    raw = io.save(full_trace(), tmp_path / "base.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_write(tmp_path: Path, header: bytes, data: bytes) -> Path:
    out = tmp_path / "bad.safetensors"
    out.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return out


def st_case(edit, data_edit=None):
    """A safetensors file of ``full_trace()`` whose header dict ``edit`` changes in place."""
    def build(tmp_path: Path) -> Path:
        header, data = _st_parts(tmp_path)
        edit(header)
        return st_write(tmp_path, json.dumps(header).encode(), data_edit(data) if data_edit else data)
    return build


def st_entry(name: str, key: str, value: object):
    def edit(h: dict) -> None:
        h[name][key] = value
    return st_case(edit)


def st_raw_header(text: bytes):
    def build(tmp_path: Path) -> Path:
        _, data = _st_parts(tmp_path)
        return st_write(tmp_path, text, data)
    return build


def _swap_offsets(h: dict) -> None:
    h["experts"]["data_offsets"], h["gate_weights"]["data_offsets"] = (h["gate_weights"]["data_offsets"],
                                                                       h["experts"]["data_offsets"])


def _overlap(h: dict) -> None:
    b, _ = h["experts"]["data_offsets"]
    nb = h["request_id"]["data_offsets"][1] - h["request_id"]["data_offsets"][0]
    h["request_id"]["data_offsets"] = [b, b + nb]  # request_id would read the experts' bytes


def npz_case(arrays_edit, compress: bool = False):
    """An npz of ``full_trace()`` whose member dict ``arrays_edit`` changes in place."""
    def build(tmp_path: Path) -> Path:
        t = full_trace()
        arrays = {"experts": np.asarray(t.experts), **{k: np.asarray(v) for k, v in t.optional_fields().items()},
                  "__meta__": np.array(json.dumps(t.meta.to_strings()))}
        arrays_edit(arrays)
        out = tmp_path / "bad.npz"
        (np.savez_compressed if compress else np.savez)(out, **arrays)
        return out
    return build


def npz_raw_member(name: str, payload: bytes, declared: int | None = None):
    """An npz whose member ``name`` holds ``payload`` (a hand-made .npy), optionally with a lying size."""
    def build(tmp_path: Path) -> Path:
        import zipfile

        good = npz_case(lambda a: a.pop(name, None))(tmp_path)
        out = tmp_path / "bad2.npz"
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, src.read(info))
            dst.writestr(f"{name}.npy", payload)
        if declared is not None:  # rewrite the central directory's uncompressed size of the member
            data = bytearray(out.read_bytes())
            cd = data.rfind(b"PK\x01\x02" + data[data.rfind(b"PK\x01\x02") + 4:][:0])
            while True:
                fname_len = struct.unpack("<H", data[cd + 28:cd + 30])[0]
                if data[cd + 46:cd + 46 + fname_len] == f"{name}.npy".encode():
                    data[cd + 24:cd + 28] = struct.pack("<I", declared)
                    break
                cd = data.rfind(b"PK\x01\x02", 0, cd)
            out.write_bytes(bytes(data))
        return out
    return build


def npy_bytes(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    h = header.encode("latin1")
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack("<H", len(h)) + h + data


HOSTILE = [
    # -- JSONL head line --
    ("jsonl width is a float", jsonl_case(0, ("width",), 4.7), "width", "JSON integer"),
    ("jsonl width is a boolean", jsonl_case(0, ("width",), True), "width", "boolean"),
    ("jsonl width is a string", jsonl_case(0, ("width",), "3"), "width", "string"),
    ("jsonl width of a billion", jsonl_case(0, ("width",), 10 ** 9), "width", "outside"),
    ("jsonl width below top_k", jsonl_case(0, ("width",), 2), "width", "outside"),
    ("jsonl predicted_width of 1e8", jsonl_case(0, ("predicted_width",), 100_000_000), "predicted_width",
     "outside"),
    ("jsonl predicted_width is a float", jsonl_case(0, ("predicted_width",), 2.0), "predicted_width",
     "JSON integer"),
    ("jsonl predicted_width without predicted", jsonl_case(0, ("predicted_width",), None), "fields",
     "predicted_width"),
    ("jsonl unknown field listed", jsonl_case(0, ("fields", 0), "router_logits"), "fields", "not one of"),
    ("jsonl fields is a string", jsonl_case(0, ("fields",), "gate_weights"), "fields", "JSON list"),
    ("jsonl field listed twice", jsonl_case(0, ("fields",), ["gate_weights", "gate_weights", "predicted"]),
     "fields", "twice"),
    ("jsonl fields disagree with rows", jsonl_case(0, ("fields",), ["predicted"]), "domain", "lists fields"),
    ("jsonl unknown head key", jsonl_case(0, ("colour",), "red"), "meta", "unknown key"),
    ("jsonl meta is a list", jsonl_case(0, ("meta",), [1, 2]), "meta", "JSON object"),
    ("jsonl meta is missing", jsonl_case(0, ("meta",), _DELETE), "meta", "first line"),
    ("jsonl head is a list", jsonl_text(0, "[1, 2]"), "meta", "JSON object"),
    ("jsonl head is not JSON", jsonl_text(0, "{meta"), "meta", "not JSON"),
    ("jsonl head nested 100000 deep", jsonl_text(0, '{"meta": ' + "[" * 100_000 + "]" * 100_000 + "}"),
     "meta", "nested too deeply"),
    ("jsonl empty first line", jsonl_text(0, ""), "meta", "first line"),
    ("jsonl num_layers is a JSON integer", meta_case("num_layers", 3), "num_layers", "strings"),
    ("jsonl num_layers is a float string", meta_case("num_layers", "3.0"), "num_layers", "not an integer"),
    ("jsonl num_layers with a space", meta_case("num_layers", " 3"), "num_layers", "not an integer"),
    ("jsonl num_layers with a plus", meta_case("num_layers", "+3"), "num_layers", "not an integer"),
    ("jsonl num_layers with an underscore", meta_case("num_layers", "0_3"), "num_layers", "not an integer"),
    ("jsonl num_layers in Arabic digits", meta_case("num_layers", "\u0663"), "num_layers", "not an integer"),
    ("jsonl num_layers of a billion", meta_case("num_layers", "1000000000"), "num_layers", "cache keys"),
    ("jsonl num_experts beyond int16", meta_case("num_experts", "40000"), "num_experts", "int16"),
    ("jsonl top_k of zero", meta_case("top_k", "0"), "top_k", "positive"),
    ("jsonl model is a number", meta_case("model", 7), "model", "strings"),
    ("jsonl another format", meta_case("format", "other.trace"), "format", "is not"),
    ("jsonl a newer format version", meta_case("format_version", "2"), "format_version", "version"),
    ("jsonl extra is a list", meta_case("extra", "[1]"), "extra", "JSON object"),
    ("jsonl extra is not JSON", meta_case("extra", "{oops"), "extra", "not JSON"),
    ("jsonl extra holds NaN", meta_case("extra", '{"a": NaN}'), "extra", "NaN"),
    ("jsonl extra nested 50000 deep", meta_case("extra", "[" * 50_000 + "]" * 50_000), "extra",
     "nested too deeply"),
    # -- JSONL rows --
    ("jsonl step is a float", jsonl_case(1, ("step",), 0.0), "step", "JSON integer"),
    ("jsonl step is a boolean", jsonl_case(1, ("step",), False), "step", "boolean"),
    ("jsonl step is a string", jsonl_case(1, ("step",), "0"), "step", "string"),
    ("jsonl layer 3.7", jsonl_case(2, ("layer",), 3.7), "layer", "JSON integer"),
    ("jsonl negative layer", jsonl_case(2, ("layer",), -1), "layer", "below 0"),
    ("jsonl expert id 1.9", jsonl_case(1, ("experts",), [1.9, 2, 0]), "experts", "float 1.9"),
    ("jsonl expert id true", jsonl_case(1, ("experts",), [True, 2, 0]), "experts", "boolean"),
    ("jsonl expert id as a string", jsonl_case(1, ("experts",), ["5", 2, 0]), "experts", 'string "5"'),
    ("jsonl experts is a scalar", jsonl_case(1, ("experts",), 5), "experts", "JSON list"),
    ("jsonl experts wider than the trace", jsonl_case(1, ("experts",), [0, 1, 2, 3]), "experts", "exceed"),
    ("jsonl expert id beyond int16", jsonl_case(1, ("experts",), [70000]), "experts", "outside"),
    ("jsonl expert id of 2**70", jsonl_case(1, ("experts",), [2 ** 70]), "experts", "outside"),
    ("jsonl gates is a string", jsonl_case(1, ("gates",), "0.5"), "gates", "JSON list"),
    ("jsonl gate as a string", jsonl_case(1, ("gates",), ["0.5", 0.5, 0.5]), "gates", "string"),
    ("jsonl gate true", jsonl_case(1, ("gates",), [True, 0.5, 0.5]), "gates", "boolean"),
    ("jsonl gate of 1e400", jsonl_text(1, '{"step": 0, "layer": 0, "experts": [0], "gates": [1e400]}'),
     "gates", "finite"),
    ("jsonl gate NaN", jsonl_text(1, '{"step": 0, "layer": 0, "experts": [0], "gates": [NaN]}'), "line",
     "NaN"),
    ("jsonl fewer gates than experts", jsonl_case(1, ("gates",), [0.5]), "gates", "one gate per slot"),
    ("jsonl missing gates on one row", jsonl_case(2, ("gates",), _DELETE), "gates", "missing"),
    ("jsonl missing experts", jsonl_case(1, ("experts",), _DELETE), "experts", "no 'experts'"),
    ("jsonl unknown row key", jsonl_case(1, ("gate",), [1.0]), "gate", "unknown field"),
    ("jsonl duplicate key", jsonl_text(1, '{"step": 0, "layer": 0, "step": 0, "experts": [0]}'), "line",
     "twice"),
    ("jsonl row is a list", jsonl_text(1, "[0, 0, [1, 2]]"), "line", "JSON object"),
    ("jsonl row is a number", jsonl_text(1, "7"), "line", "JSON object"),
    ("jsonl an integer of 5000 digits", jsonl_text(1, '{"step": ' + "9" * 5000 + "}"), "line", "not valid JSON"),
    ("jsonl request_id beyond int64", jsonl_case(1, ("request_id",), 2 ** 63), "request_id", "outside"),
    ("jsonl request_id changes inside a step", jsonl_case(2, ("request_id",), 8), "request_id", "differs"),
    ("jsonl phase of 3", jsonl_rows_case((1, 2, 3), ("phase",), 3), "phase", "phase must be"),
    ("jsonl predicted wider than predicted_width", jsonl_case(2, ("predicted",), [0, 1, 2]), "predicted",
     "exceed"),
    ("jsonl row out of order", jsonl_case(1, ("layer",), 1), "layer", "out of order"),
    ("jsonl step repeated", jsonl_case(4, ("step",), 0), "step", "out of order"),
    ("jsonl not UTF-8", jsonl_text(1, b'{"step": 0, "layer": 0, "experts": [0], "x": "\xff"}'), "line",
     "not UTF-8"),
    ("jsonl trailing garbage", jsonl_text(1, '{"step": 0, "layer": 0, "experts": [0]} x'), "line", "not JSON"),
    # -- CSV --
    ("csv without an experts column", csv_drop_column("experts"), "experts", "column 'experts' is missing"),
    ("csv without a step column", csv_drop_column("step"), "step", "missing"),
    ("csv unknown column", csv_case(lambda ls: ls.__setitem__(1, ls[1].replace("domain", "dom"))), "columns",
     "unknown column"),
    ("csv column twice", csv_case(lambda ls: ls.__setitem__(1, ls[1].replace("domain", "phase"))), "columns",
     "twice"),
    ("csv an extra cell", csv_case(lambda ls: ls.__setitem__(2, ls[2] + ",9")), "row", "cells for"),
    ("csv a missing cell", csv_case(lambda ls: ls.__setitem__(2, ls[2].rsplit(",", 1)[0])), "row", "cells for"),
    ("csv step 0.0", csv_cell("step", "0.0"), "step", "not an integer"),
    ("csv step with a space", csv_cell("step", " 0"), "step", "not an integer"),
    ("csv step with a plus", csv_cell("step", "+0"), "step", "not an integer"),
    ("csv layer 1e0", csv_cell("layer", "1e0"), "layer", "not an integer"),
    ("csv expert id 1_0", csv_cell("experts", "1_0 1 2"), "experts", "not an integer"),
    ("csv expert id 1.9", csv_cell("experts", "1.9 1 2"), "experts", "not an integer"),
    ("csv experts with a double space", csv_cell("experts", "0  1"), "experts", "not an integer"),
    ("csv gate nan", csv_cell("gates", "nan 0.5 0.5"), "gates", "not a number"),
    ("csv gate inf", csv_cell("gates", "inf 0.5 0.5"), "gates", "not a number"),
    ("csv gate 1e999", csv_cell("gates", "1e999 0.5 0.5"), "gates", "finite"),
    ("csv gate in hex", csv_cell("gates", "0x1p-2 0.5 0.5"), "gates", "not a number"),
    ("csv gate count differs", csv_cell("gates", "0.5"), "gates", "one gate per slot"),
    ("csv request_id beyond int64", csv_cell("request_id", str(2 ** 64)), "request_id", "outside"),
    ("csv request_id of 40 digits", csv_cell("request_id", "9" * 40), "request_id", "not an integer"),
    ("csv header line is not JSON", csv_case(lambda ls: ls.__setitem__(0, "# moesim.trace {oops")), "header",
     "not JSON"),
    ("csv column names missing", csv_case(lambda ls: ls.__delitem__(slice(1, None))), "columns", "missing"),
    ("csv unterminated quote", csv_case(lambda ls: ls.__setitem__(2, '"' + ls[2])), "row", "cells for"),
    # -- safetensors header --
    ("safetensors negative data_offsets", st_entry("request_id", "data_offsets", [-16, 0]), "request_id",
     "non-negative"),
    ("safetensors offsets overlap another tensor", st_case(_overlap), None, "overlaps"),
    ("safetensors offsets swapped between tensors", st_case(_swap_offsets), None, "bytes"),
    ("safetensors offsets beyond the file", st_entry("experts", "data_offsets", [0, 10 ** 6]), "experts",
     "beyond"),
    ("safetensors offsets as floats", st_entry("experts", "data_offsets", [0.0, 72.0]), "experts",
     "pair of integers"),
    ("safetensors offsets as booleans", st_entry("phase", "data_offsets", [False, True]), "phase",
     "pair of integers"),
    ("safetensors three offsets", st_entry("experts", "data_offsets", [0, 1, 2]), "experts", "pair of integers"),
    ("safetensors shape whose product overflows int64", st_entry("experts", "shape", [2 ** 32, 2 ** 32, 4]),
     "experts", "do not hold"),
    ("safetensors negative shape", st_entry("experts", "shape", [-4, 3, 3]), "experts", "non-negative"),
    ("safetensors shape of booleans", st_entry("experts", "shape", [True, 3, 3]), "experts", "non-negative"),
    ("safetensors shape as a string", st_entry("experts", "shape", "4,3,3"), "experts", "non-negative"),
    ("safetensors unknown dtype", st_entry("experts", "dtype", "BF16"), "experts", "is not one of"),
    ("safetensors dtype is a number", st_entry("experts", "dtype", 16), "experts", "is not one of"),
    ("safetensors entry with an extra key", st_entry("experts", "scale", 2), "experts", "exactly"),
    ("safetensors entry is a list", st_case(lambda h: h.__setitem__("experts", [1, 2])), "experts", "exactly"),
    ("safetensors bytes left over after the tensors", st_case(lambda h: None, lambda d: d + b"\0" * 8), None,
     "belong to no tensor"),
    ("safetensors metadata is a list", st_case(lambda h: h.__setitem__("__metadata__", [1])), "__metadata__",
     "strings"),
    ("safetensors metadata value is a number", st_case(lambda h: h["__metadata__"].__setitem__("top_k", 3)),
     "__metadata__", "strings"),
    ("safetensors duplicate tensor name", st_raw_header(b'{"experts": {}, "experts": {}}'), "header", "twice"),
    ("safetensors header nested deeply", st_raw_header(b"[" * 100_000 + b"]" * 100_000), "header",
     "nested too deeply"),
    ("safetensors header not UTF-8", st_raw_header(b'{"\xff": 1}'), "header", "UTF-8"),
    ("safetensors header holds NaN", st_raw_header(b'{"experts": NaN}'), "header", "NaN"),
    ("safetensors header is a list", st_raw_header(b"[]"), None, "not a JSON object"),
    ("safetensors experts of two dimensions", st_entry("experts", "shape", [12, 3]), "experts", "dimension"),
    # -- npz --
    ("npz object array", npz_case(lambda a: a.__setitem__("experts", np.array([None, 1], dtype=object))),
     "experts", "not allowed"),
    ("npz boolean experts", npz_case(lambda a: a.__setitem__("experts", np.ones((4, 3, 3), bool))), "experts",
     "not allowed"),
    ("npz string experts", npz_case(lambda a: a.__setitem__("experts", np.full((4, 3, 3), "1"))), "experts",
     "not allowed"),
    ("npz complex gates", npz_case(lambda a: a.__setitem__("gate_weights", np.zeros((4, 3, 3), complex))),
     "gate_weights", "not allowed"),
    ("npz experts 1.5", npz_case(lambda a: a.__setitem__("experts", np.full((4, 3, 3), 1.5))), "experts",
     "integers"),
    ("npz metadata is not a string", npz_case(lambda a: a.__setitem__("__meta__", np.arange(3))), "__meta__",
     "not allowed"),
    ("npz metadata is not JSON", npz_case(lambda a: a.__setitem__("__meta__", np.array("{oops"))), "__meta__",
     "not JSON"),
    ("npz metadata is a JSON list", npz_case(lambda a: a.__setitem__("__meta__", np.array("[1]"))), "__meta__",
     "JSON object"),
    ("npz unknown member", npz_case(lambda a: a.__setitem__("router_logits", np.zeros(3))), "router_logits",
     "unknown"),
    ("npy header claims 9 * 10**12 values", npz_raw_member(
        "experts", npy_bytes("{'descr': '<i2', 'fortran_order': False, 'shape': (1000000000000, 3, 3), }")),
     "experts", "needs 18000000000000 bytes"),
    ("npy header that is an expression", npz_raw_member(
        "experts", npy_bytes("{'descr': '<i2', 'fortran_order': False, 'shape': (10**12, 3, 3), }")), "experts",
     "not a Python literal"),
    ("npy header claims more than the member holds", npz_raw_member(
        "experts", npy_bytes("{'descr': '<i2', 'fortran_order': False, 'shape': (100000, 3, 3), }", b"\0" * 72)),
     "experts", "needs 1800000 bytes"),
    ("npy negative shape", npz_raw_member(
        "experts", npy_bytes("{'descr': '<i2', 'fortran_order': False, 'shape': (-4, 3, 3), }")), "experts",
     "non-negative"),
    ("npy structured dtype", npz_raw_member(
        "experts", npy_bytes("{'descr': [('a', '<i2')], 'fortran_order': False, 'shape': (1,), }", b"\0\0")),
     "experts", "structured"),
    ("npy pickled object dtype", npz_raw_member(
        "experts", npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"\0" * 8)), "experts",
     "not allowed"),
    ("npy header with extra keys", npz_raw_member(
        "experts", npy_bytes("{'descr': '<i2', 'fortran_order': False, 'shape': (1,), 'x': 1}", b"\0\0")),
     "experts", "exactly"),
    ("npy bad magic", npz_raw_member("experts", b"NOTNUMPY" + b"\0" * 100), "experts", "bad magic"),
    ("npy unknown version", npz_raw_member(
        "experts", npy_bytes("{'descr': '<i2', 'fortran_order': False, 'shape': (1,), }", b"\0\0", (9, 0))),
     "experts", "version"),
    ("npz member declaring a zip bomb", npz_raw_member(
        "experts", npy_bytes("{'descr': '<i2', 'fortran_order': False, 'shape': (4, 3, 3), }", b"\0" * 72),
        declared=2 ** 31), "experts", "zip bomb"),
]


@pytest.mark.parametrize(("build", "field", "words"), [case[1:] for case in HOSTILE],
                         ids=[case[0] for case in HOSTILE])
def test_hostile_files_are_refused_with_a_located_error(tmp_path: Path, build, field: str | None,
                                                        words: str) -> None:
    path = build(tmp_path)
    with pytest.raises(TraceError) as exc:
        io.load_any(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)), msg
    if field is not None:
        assert exc.value.field == field, msg
    assert words in msg, msg
    assert "\n" not in msg


def test_the_hostile_cases_are_distinct() -> None:
    assert len({case[0] for case in HOSTILE}) == len(HOSTILE) >= 120
