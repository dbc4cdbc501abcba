"""The OLMoE npz and Mixtral JSONL importers: small fixtures in the real formats, the real shared
data when present, and malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from moesim.traces.errors import ImportFormatError
from moesim.traces.importers import OLMOE_DOMAINS, import_mixtral_jsonl, import_olmoe_npz, shared_data_dir
from moesim.traces.trace import DECODE

# ---- OLMoE fixture ---------------------------------------------------------------------------

# Two sequences (ids 100 and 7, domains 1 and 0) of 2 and 1 generated tokens, 3 layers, top-2 of 6.
OLMOE_TOKENS = {  # (sequence, token) -> per-layer expert rows
    (100, 0): [[5, 1], [0, 2], [3, 4]],
    (100, 1): [[1, 5], [2, 3], [4, 0]],
    (7, 0): [[0, 1], [2, 3], [4, 5]],
}


def olmoe_events(shuffle: bool = True) -> dict[str, np.ndarray]:
    rows = []
    for (seq, tok), layers in OLMOE_TOKENS.items():
        for layer, ids in enumerate(layers):
            rows.append((seq, 1 if seq == 100 else 0, tok, layer, ids))
    order = np.random.default_rng(1).permutation(len(rows)) if shuffle else np.arange(len(rows))
    rows = [rows[i] for i in order]
    n = len(rows)
    ids = np.array([r[4] for r in rows], np.int16)
    return {
        "sequence_id": np.array([r[0] for r in rows], np.int32),
        "domain_id": np.array([r[1] for r in rows], np.int8),
        "prompt_index": np.array([r[0] for r in rows], np.int32),
        "generated_token_index": np.array([r[2] for r in rows], np.int32),
        "layer_index": np.array([r[3] for r in rows], np.int16),
        "token_id": np.arange(n, dtype=np.int32),
        "prompt_length": np.full(n, 5, np.int32),
        "generation_length": np.full(n, 2, np.int32),
        "event_index": np.arange(n, dtype=np.int64),
        "requested_expert_ids": ids,
        # Softmax over all experts: the top-2 weights need not sum to 1.
        "router_weights": (ids.astype(np.float32) + 1) / 40,
    }


def write_npz(tmp_path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = tmp_path / "olmoe.npz"
    np.savez(path, **arrays)
    return path


def test_olmoe_fixture_imports_in_sequence_token_layer_order(tmp_path: Path) -> None:
    tr = import_olmoe_npz(write_npz(tmp_path, olmoe_events()), num_experts=6)
    assert (tr.num_steps, tr.num_layers, tr.width, tr.num_experts) == (3, 3, 2, 6)
    # Sequences sorted by id: 7 first, then 100's two tokens.
    np.testing.assert_array_equal(tr.request_id, [7, 100, 100])
    np.testing.assert_array_equal(tr.position, [0, 0, 1])
    np.testing.assert_array_equal(tr.domain, [0, 1, 1])
    np.testing.assert_array_equal(tr.phase, [DECODE] * 3)
    expected = [OLMOE_TOKENS[(7, 0)], OLMOE_TOKENS[(100, 0)], OLMOE_TOKENS[(100, 1)]]
    np.testing.assert_array_equal(tr.experts, expected)
    np.testing.assert_array_equal(tr.gate_weights, (np.array(expected, np.float32) + 1) / 40)
    assert tr.meta.top_k == 2 and tr.meta.source == "imported:olmoe-npz"
    assert tr.meta.extra["domains"] == OLMOE_DOMAINS
    assert tr.file == str(tmp_path / "olmoe.npz")


def test_olmoe_order_of_events_in_the_file_does_not_matter(tmp_path: Path) -> None:
    a = import_olmoe_npz(write_npz(tmp_path, olmoe_events(shuffle=True)), num_experts=6)
    b = import_olmoe_npz(write_npz(tmp_path, olmoe_events(shuffle=False)), num_experts=6)
    np.testing.assert_array_equal(a.experts, b.experts)
    np.testing.assert_array_equal(a.gate_weights, b.gate_weights)


def test_olmoe_missing_array(tmp_path: Path) -> None:
    ev = olmoe_events()
    del ev["router_weights"]
    path = write_npz(tmp_path, ev)
    with pytest.raises(ImportFormatError) as exc:
        import_olmoe_npz(path, num_experts=6)
    assert str(path) in str(exc.value) and exc.value.field == "router_weights"


def test_olmoe_token_missing_a_layer(tmp_path: Path) -> None:
    ev = olmoe_events(shuffle=False)
    keep = np.ones(len(ev["layer_index"]), bool)
    keep[4] = False  # sequence 100, token 1, layer 1
    path = write_npz(tmp_path, {k: v[keep] for k, v in ev.items()})
    with pytest.raises(ImportFormatError) as exc:
        import_olmoe_npz(path, num_experts=6)
    assert str(path) in str(exc.value) and exc.value.field == "layer_index"
    assert "not a multiple of 3 layers" in str(exc.value)
    # With one more event (token 9, layer 0) the count is a multiple of the layers again, but token 1
    # still lacks layer 1: the error names the file row where layer 1 was expected (row 4, its layer 2).
    ev2 = {k: np.concatenate([v[keep], v[3:4]]) for k, v in ev.items()}
    ev2["generated_token_index"][-1] = 9
    path = write_npz(tmp_path, ev2)
    with pytest.raises(ImportFormatError) as exc:
        import_olmoe_npz(path, num_experts=6)
    assert str(exc.value).startswith(f"{path}: field 'layer_index' at [4]: token at event 4 lacks layer 1")


@pytest.mark.parametrize(("bad", "field", "row"), [
    ({"ids": (2, 1, 6)}, "requested_expert_ids", 2),
    ({"ids": (5, 0, -1)}, "requested_expert_ids", 5),
    ({"ids": (3, 1, 1)}, "requested_expert_ids", 3),  # duplicate of slot 0
    ({"w": (1, 0, np.nan)}, "router_weights", 1),
    ({"w": (4, 1, -0.5)}, "router_weights", 4),
])
def test_olmoe_bad_rows_name_the_event(tmp_path: Path, bad: dict, field: str, row: int) -> None:
    ev = olmoe_events(shuffle=False)
    if "ids" in bad:
        r, k, v = bad["ids"]
        ev["requested_expert_ids"][r, k] = v
    else:
        r, k, v = bad["w"]
        ev["router_weights"][r, k] = v
    path = write_npz(tmp_path, ev)
    with pytest.raises(ImportFormatError) as exc:
        import_olmoe_npz(path, num_experts=6)
    assert str(exc.value).startswith(f"{path}: field '{field}' at [{row}]")


def test_olmoe_empty_and_mismatched_files(tmp_path: Path) -> None:
    ev = olmoe_events()
    path = write_npz(tmp_path, {k: v[:0] for k, v in ev.items()})
    with pytest.raises(ImportFormatError, match="no events"):
        import_olmoe_npz(path)
    ev["router_weights"] = ev["router_weights"][:, :1]
    path = write_npz(tmp_path, ev)
    with pytest.raises(ImportFormatError) as exc:
        import_olmoe_npz(path, num_experts=6)
    assert exc.value.field == "requested_expert_ids"


def test_olmoe_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_text("hello")
    with pytest.raises(ImportFormatError) as exc:
        import_olmoe_npz(path)
    assert str(path) in str(exc.value)


# ---- Mixtral fixture -------------------------------------------------------------------------

def mixtral_rows(dataset: str, problem: int, tokens: int, layers: int, drop: set[tuple[int, int]] = frozenset()
                 ) -> list[dict]:
    """Row (layer, token) uses experts [(t + l) % 8, (t + l + 3) % 8]; ``drop`` removes (layer, token)
    rows and renumbers the tokens of that layer, as the collector did."""
    rows = []
    for layer in range(layers):
        idx = 0
        for t in range(tokens):
            if (layer, t) in drop:
                continue
            rows.append({"dataset": dataset, "problem_id": problem, "layer": layer,
                         "experts": [(t + layer) % 8, (t + layer + 3) % 8], "gating_probs": [0.75, 0.25],
                         "token_idx": idx})
            idx += 1
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mixtral_fixture_two_files_make_one_trace(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "humaneval.jsonl", mixtral_rows("humaneval", 3, 4, 2, drop={(1, 2)}))
    b = write_jsonl(tmp_path / "gsm8k.jsonl", mixtral_rows("gsm8k", 0, 2, 2) + mixtral_rows("gsm8k", 1, 1, 2))
    tr = import_mixtral_jsonl([a, b], num_layers=2)
    # Requests sorted by (dataset, problem): gsm8k/0 (2 tokens), gsm8k/1 (1), humaneval/3 (4 -> 3 kept).
    np.testing.assert_array_equal(tr.request_id, [0, 0, 1, 2, 2, 2])
    np.testing.assert_array_equal(tr.position, [0, 1, 0, 0, 1, 2])
    assert tr.meta.extra["domains"] == ["gsm8k", "humaneval"]
    np.testing.assert_array_equal(tr.domain, [0, 0, 0, 1, 1, 1])
    assert tr.meta.extra["requests"] == ["gsm8k/0", "gsm8k/1", "humaneval/3"]
    assert tr.meta.extra["dropped_rows"] == 1
    assert (tr.meta.num_layers, tr.meta.num_experts, tr.meta.top_k) == (2, 8, 2)
    np.testing.assert_array_equal(tr.experts[0], [[0, 3], [1, 4]])
    np.testing.assert_array_equal(tr.experts[1], [[1, 4], [2, 5]])
    # humaneval layer 1 lost token 2, so its tokens are 0, 1, 3 there (aligned per layer by index).
    np.testing.assert_array_equal(tr.experts[3:, 1], [[1, 4], [2, 5], [4, 7]])
    np.testing.assert_array_equal(tr.experts[3:, 0], [[0, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(tr.gate_weights[..., 0], 0.75)
    assert set(np.asarray(tr.phase).tolist()) == {DECODE}


def test_mixtral_single_path_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in mixtral_rows("gsm8k", 0, 2, 3)) + "\n\n")
    tr = import_mixtral_jsonl(path, num_layers=3)
    assert tr.num_steps == 2 and tr.num_layers == 3


@pytest.mark.parametrize(("change", "field"), [
    ({"layer": 5}, "layer"),
    ({"experts": [1, 9]}, "experts"),
    ({"experts": [2, 2]}, "experts"),
    ({"experts": [1]}, "gating_probs"),  # lengths differ
    ({"gating_probs": [0.5, -0.1]}, "gating_probs"),
    ({"gating_probs": [0.5, "nan"]}, "gating_probs"),
    ({"token_idx": "x"}, "token_idx"),
    ({"dataset": None, "problem_id": None}, "row"),
])
def test_mixtral_bad_row_names_file_field_line(tmp_path: Path, change: dict, field: str) -> None:
    rows = mixtral_rows("gsm8k", 0, 3, 2)
    rows[4].update(change)
    if change.get("dataset", 1) is None:
        del rows[4]["problem_id"]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ImportFormatError) as exc:
        import_mixtral_jsonl(path, num_layers=2)
    assert str(exc.value).startswith(f"{path}: field '{field}' at [5]")


def test_mixtral_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(mixtral_rows("g", 0, 1, 1)[0]) + "\n{oops\n")
    with pytest.raises(ImportFormatError) as exc:
        import_mixtral_jsonl(path, num_layers=1)
    assert str(exc.value).startswith(f"{path}: field 'line' at [2]")


def test_mixtral_request_without_a_layer(tmp_path: Path) -> None:
    rows = [r for r in mixtral_rows("gsm8k", 4, 2, 3) if r["layer"] != 1]
    path = write_jsonl(tmp_path / "gap.jsonl", rows)
    with pytest.raises(ImportFormatError) as exc:
        import_mixtral_jsonl(path, num_layers=3)
    assert str(exc.value).startswith(f"{path}: field 'layer'")
    assert "gsm8k/4" in str(exc.value) and "layer 1" in str(exc.value)


def test_mixtral_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ImportFormatError, match="no rows"):
        import_mixtral_jsonl(path)


# ---- the real shared traces --------------------------------------------------------------------

def shared(sub: str) -> Path:
    base = shared_data_dir()
    if base is None or not (base / sub).exists():
        pytest.skip("shared routing data is not present")
    return base / sub


def assert_rows_are_full_and_distinct(experts: np.ndarray, k: int) -> None:
    e = np.asarray(experts)
    assert (e >= 0).all()
    srt = np.sort(e, axis=-1)
    assert (srt[..., 1:] != srt[..., :-1]).all()
    assert e.shape[-1] == k


@pytest.mark.realdata
def test_real_olmoe_trace() -> None:
    tr = import_olmoe_npz(shared("olmoe-1b-7b/olmoe_decode_all.npz"))
    assert (tr.num_layers, tr.num_experts, tr.width) == (16, 64, 8)
    assert tr.num_steps * 16 == 817_792
    rid = np.asarray(tr.request_id)
    assert len(np.unique(rid)) == 400
    assert len(tr.request_bounds()) - 1 == 400  # each request is one contiguous run
    # Domains by sequence id: 100 each, in blocks of 100 ids.
    dom = np.asarray(tr.domain)
    np.testing.assert_array_equal(dom, rid // 100)
    assert tr.meta.extra["domains"] == OLMOE_DOMAINS
    assert_rows_are_full_and_distinct(tr.experts, 8)
    assert int(np.asarray(tr.position).max()) <= 127
    g = np.asarray(tr.gate_weights)
    assert (g > 0).all() and (g.sum(axis=-1) <= 1 + 1e-5).all()
    # Ids are sorted by router probability: weights descend within a row.
    assert (np.diff(g, axis=-1) <= 0).all()


@pytest.mark.realdata
def test_real_mixtral_trace() -> None:
    files = sorted(shared("mixtral-8x7b").glob("*.jsonl"))
    tr = import_mixtral_jsonl(files)
    assert (tr.num_layers, tr.num_experts, tr.width) == (32, 8, 2)
    assert len(tr.request_bounds()) - 1 == 4
    assert tr.meta.extra["domains"] == ["gsm8k", "humaneval"]
    assert 500 < tr.num_steps < 600
    assert_rows_are_full_and_distinct(tr.experts, 2)
    np.testing.assert_allclose(np.asarray(tr.gate_weights).sum(axis=-1), 1.0, atol=1e-5)


# ---- hostile inputs: one located ImportFormatError each, never a coercion ------------------------

def _olmoe_with(change) -> object:
    def build(tmp_path: Path) -> Path:
        ev = olmoe_events(shuffle=False)
        change(ev)
        return write_npz(tmp_path, ev)
    return build


OLMOE_HOSTILE = [
    ("float layer index", _olmoe_with(lambda ev: ev.__setitem__("layer_index", ev["layer_index"] + 0.9)),
     "layer_index", "not an integer dtype"),
    ("boolean domain", _olmoe_with(lambda ev: ev.__setitem__("domain_id", ev["domain_id"] > 0)), "domain_id",
     "dtype bool is not allowed here (only integers, floats)"),
    ("float expert ids", _olmoe_with(lambda ev: ev.__setitem__("requested_expert_ids",
                                                               ev["requested_expert_ids"] + 0.5)),
     "requested_expert_ids", "not an integer dtype"),
    ("integer router weights", _olmoe_with(lambda ev: ev.__setitem__("router_weights",
                                                                     np.ones_like(ev["requested_expert_ids"]))),
     "router_weights", "not a float dtype"),
    ("object array", _olmoe_with(lambda ev: ev.__setitem__("sequence_id", np.array([None] * 9, dtype=object))),
     "sequence_id", "not allowed"),
    ("domain beyond the four domains", _olmoe_with(lambda ev: ev["domain_id"].__setitem__(0, 99)), "domain_id",
     "outside"),
    ("negative layer", _olmoe_with(lambda ev: ev["layer_index"].__setitem__(0, -1)), "layer_index", "outside"),
    ("layer of a billion", _olmoe_with(lambda ev: ev.__setitem__(
        "layer_index", np.where(np.arange(9) == 0, 10 ** 9, ev["layer_index"]).astype(np.int64))), "layer_index",
     "outside"),
    ("token index beyond int32", _olmoe_with(lambda ev: ev.__setitem__(
        "generated_token_index", np.full(9, 2 ** 40, np.int64))), "generated_token_index", "outside"),
    ("top-k wider than the experts", _olmoe_with(lambda ev: (
        ev.__setitem__("requested_expert_ids", np.tile(np.arange(7, dtype=np.int16), (9, 1))),
        ev.__setitem__("router_weights", np.ones((9, 7), np.float32)))), "requested_expert_ids", "top_k"),
]


@pytest.mark.parametrize(("build", "field", "words"), [c[1:] for c in OLMOE_HOSTILE],
                         ids=[c[0] for c in OLMOE_HOSTILE])
def test_olmoe_hostile_inputs(tmp_path: Path, build, field: str, words: str) -> None:
    path = build(tmp_path)
    with pytest.raises(ImportFormatError) as exc:
        import_olmoe_npz(path, num_experts=6)
    assert str(exc.value).startswith(str(path)) and exc.value.field == field and words in str(exc.value)


def test_olmoe_missing_file_and_folder(tmp_path: Path) -> None:
    for path, words in ((tmp_path / "nope.npz", "no such file"), (tmp_path, "not a regular file")):
        with pytest.raises(ImportFormatError, match=words):
            import_olmoe_npz(path)


MIXTRAL_HOSTILE = [
    ({"problem_id": 1.9}, "problem_id", "float 1.9"),
    ({"problem_id": True}, "problem_id", "boolean"),
    ({"problem_id": "0"}, "problem_id", "string"),
    ({"layer": 1.0}, "layer", "JSON integer"),
    ({"token_idx": -1}, "token_idx", "below 0"),
    ({"dataset": 5}, "dataset", "JSON string"),
    ({"experts": [True, 2]}, "experts", "boolean"),
    ({"experts": ["1", 2]}, "experts", "string"),
    ({"experts": [1.5, 2]}, "experts", "float"),
    ({"experts": "1 2"}, "experts", "JSON list"),
    ({"experts": list(range(9))}, "experts", "exceed"),
    ({"gating_probs": ["0.5", 0.5]}, "gating_probs", "string"),
    ({"gating_probs": [True, 0.5]}, "gating_probs", "boolean"),
    ({"gating_probs": 0.5}, "gating_probs", "JSON list"),
    ({"token_idx": 0}, "token_idx", "twice"),  # row 5 repeats token 0 of its request and layer
]


@pytest.mark.parametrize(("change", "field", "words"), MIXTRAL_HOSTILE, ids=[str(c[0]) for c in MIXTRAL_HOSTILE])
def test_mixtral_hostile_rows(tmp_path: Path, change: dict, field: str, words: str) -> None:
    rows = mixtral_rows("gsm8k", 0, 3, 2)
    rows[4].update(change)
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ImportFormatError) as exc:
        import_mixtral_jsonl(path, num_layers=2)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: field '{field}' at [5]") and words in msg, msg


@pytest.mark.parametrize(("text", "words"), [
    (b'{"dataset": "g\xff"}\n', "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
    (b'{"dataset": "g", "problem_id": NaN}\n', "NaN"),
    (b"[1, 2]\n", "JSON object"),
])
def test_mixtral_hostile_lines(tmp_path: Path, text: bytes, words: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(text)
    with pytest.raises(ImportFormatError) as exc:
        import_mixtral_jsonl(path, num_layers=2)
    assert str(exc.value).startswith(f"{path}: field 'line' at [1]") and words in str(exc.value)


def test_mixtral_missing_file_and_bad_counts(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match=r"nope\.jsonl: no such file"):
        import_mixtral_jsonl(tmp_path / "nope.jsonl")
    path = write_jsonl(tmp_path / "ok.jsonl", mixtral_rows("g", 0, 1, 2))
    for kw in ({"num_layers": 0}, {"num_layers": 2.5}, {"num_experts": 10 ** 6}, {"num_layers": 10 ** 9}):
        with pytest.raises(ImportFormatError):
            import_mixtral_jsonl(path, **kw)
