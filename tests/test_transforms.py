"""slice_requests, select_layers, decode_only and batch_decode on hand-made traces with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.traces.errors import TraceError
from moesim.traces.trace import DECODE, PAD, PREFILL, Trace, TraceMeta, make_trace
from moesim.traces.transforms import batch_decode, decode_only, select_layers, slice_requests


def three_requests() -> Trace:
    """Requests 5, 3, 8 (in that order) of 2, 3, 1 steps; layer l of step t uses expert (t + l) % 6."""
    T, L = 6, 3
    experts = np.array([[[(t + layer) % 6, (t + layer + 1) % 6] for layer in range(L)] for t in range(T)],
                       np.int16)
    gates = (np.arange(T * L * 2).reshape(T, L, 2) / 100).astype(np.float32)
    return make_trace(experts, TraceMeta("m", L, 6, 2), gate_weights=gates,
                      request_id=[5, 5, 3, 3, 3, 8], position=[0, 1, 0, 1, 2, 0],
                      phase=[PREFILL, DECODE, PREFILL, DECODE, DECODE, DECODE], domain=[0, 0, 1, 1, 1, 2],
                      predicted=np.full((T, L, 1), PAD, np.int16))


# ---- slice_requests ----------------------------------------------------------------------------

def test_slice_requests_by_ids_keeps_trace_order_and_every_field() -> None:
    tr = three_requests()
    out = slice_requests(tr, [8, 5])
    np.testing.assert_array_equal(out.request_id, [5, 5, 8])
    np.testing.assert_array_equal(out.experts, np.asarray(tr.experts)[[0, 1, 5]])
    np.testing.assert_array_equal(out.gate_weights, np.asarray(tr.gate_weights)[[0, 1, 5]])
    np.testing.assert_array_equal(out.position, [0, 1, 0])
    np.testing.assert_array_equal(out.phase, [PREFILL, DECODE, DECODE])
    np.testing.assert_array_equal(out.domain, [0, 0, 2])
    assert out.predicted is not None and out.predicted.shape == (3, 3, 1)
    assert out.meta == tr.meta


def test_slice_requests_by_slice_counts_requests_in_order() -> None:
    tr = three_requests()
    np.testing.assert_array_equal(slice_requests(tr, slice(1, 3)).request_id, [3, 3, 3, 8])
    np.testing.assert_array_equal(slice_requests(tr, slice(None, None, 2)).request_id, [5, 5, 8])
    assert slice_requests(tr, [42]).num_steps == 0


def test_slice_requests_needs_request_ids() -> None:
    tr = make_trace(np.zeros((2, 1, 1)), TraceMeta("m", 1, 2, 1))
    with pytest.raises(TraceError, match="request_id"):
        slice_requests(tr, [0])


# ---- select_layers ---------------------------------------------------------------------------

def test_select_layers_in_given_order() -> None:
    tr = three_requests()
    out = select_layers(tr, [2, 0])
    assert out.num_layers == 2 and out.meta.num_layers == 2
    assert out.meta.extra["selected_layers"] == [2, 0]
    e = np.asarray(tr.experts)
    np.testing.assert_array_equal(out.experts[:, 0], e[:, 2])
    np.testing.assert_array_equal(out.experts[:, 1], e[:, 0])
    np.testing.assert_array_equal(out.gate_weights[:, 0], np.asarray(tr.gate_weights)[:, 2])
    assert out.predicted.shape == (6, 2, 1)
    np.testing.assert_array_equal(out.request_id, tr.request_id)


@pytest.mark.parametrize("layers", [[], [3], [-1], [0, 5]])
def test_select_layers_out_of_range(layers: list[int]) -> None:
    with pytest.raises(TraceError, match="layers"):
        select_layers(three_requests(), layers)


# ---- decode_only -----------------------------------------------------------------------------

def test_decode_only_drops_prefill() -> None:
    out = decode_only(three_requests())
    np.testing.assert_array_equal(out.request_id, [5, 3, 3, 8])
    np.testing.assert_array_equal(out.position, [1, 1, 2, 0])
    assert set(np.asarray(out.phase).tolist()) == {DECODE}


def test_decode_only_without_phases_is_identity() -> None:
    tr = make_trace(np.zeros((2, 1, 1)), TraceMeta("m", 1, 2, 1))
    assert decode_only(tr) is tr


# ---- batch_decode ----------------------------------------------------------------------------

def one_hot_requests(lengths: list[int]) -> Trace:
    """Token i of request r uses expert 8 * r + i at its only layer, so a union names its tokens."""
    experts, rid = [], []
    for r, n in enumerate(lengths):
        for i in range(n):
            experts.append([[8 * r + i]])
            rid.append(r)
    return make_trace(np.array(experts, np.int16).reshape(-1, 1, 1), TraceMeta("m", 1, 8 * len(lengths), 1),
                      request_id=rid, gate_weights=np.ones((len(rid), 1, 1), np.float32))


def test_continuous_batching_refills_slots_in_request_order() -> None:
    # Lengths 1, 3, 2, 1 with two slots: request 2 takes request 0's slot after step 0, request 3
    # waits until both 1 and 2 have finished after step 2.
    out = batch_decode(one_hot_requests([1, 3, 2, 1]), 2)
    rows = [sorted(int(x) for x in row if x != PAD) for row in np.asarray(out.experts)[:, 0]]
    assert rows == [[0, 8], [9, 16], [10, 17], [24]]
    np.testing.assert_array_equal(out.position, [2, 2, 2, 1])
    np.testing.assert_array_equal(out.request_id, [0, 1, 2, 3])
    assert out.meta.extra["batch_size"] == 2 and out.meta.extra["batched_from_steps"] == 7


def test_batch_union_is_sorted_padded_and_of_width_min_bk_e() -> None:
    # Two requests at 2 layers, top-2 of 5 experts: B * K = 4 < E = 5, then B = 3 -> width E = 5.
    e = np.array([[[0, 3], [1, 2]], [[4, 1], [2, 1]],  # request 0
                  [[3, 2], [0, 4]], [[1, 0], [2, 3]]], np.int16)  # request 1
    tr = make_trace(e, TraceMeta("m", 2, 5, 2), request_id=[0, 0, 1, 1])
    out = batch_decode(tr, 2)
    assert out.width == 4
    np.testing.assert_array_equal(out.experts, [[[0, 2, 3, -1], [0, 1, 2, 4]],
                                                [[0, 1, 4, -1], [1, 2, 3, -1]]])
    assert batch_decode(tr, 3).width == 5
    assert batch_decode(tr, 1).width == 2


def test_batch_gates_sum_over_sequences_sharing_an_expert() -> None:
    e = np.array([[[0, 1]], [[1, 2]]], np.int16)
    g = np.array([[[0.75, 0.25]], [[0.5, 0.125]]], np.float32)
    out = batch_decode(make_trace(e, TraceMeta("m", 1, 4, 2), gate_weights=g, request_id=[0, 1]), 2)
    np.testing.assert_array_equal(out.experts, [[[0, 1, 2, -1]]])
    np.testing.assert_array_equal(out.gate_weights, [[[0.75, 0.75, 0.125, 0.0]]])


def test_batch_drops_prefill_steps() -> None:
    out = batch_decode(three_requests(), 8)
    # Decode steps: request 5 has 1, request 3 has 2, request 8 has 1: all three start together.
    np.testing.assert_array_equal(out.position, [3, 1])
    assert out.width == 6


@pytest.mark.parametrize("trace", [
    make_trace(np.array([[[0, 1]]]), TraceMeta("m", 1, 4, 2), phase=[PREFILL]),
    make_trace(np.zeros((0, 1, 2)), TraceMeta("m", 1, 4, 2)),
    make_trace(np.zeros((0, 1, 2)), TraceMeta("m", 1, 4, 2), gate_weights=np.zeros((0, 1, 2))),
], ids=["prefill-only", "empty", "empty-with-gates"])
def test_batch_of_no_decode_steps_is_empty(trace: Trace) -> None:
    out = batch_decode(trace, 3)
    assert out.num_steps == 0 and out.width == min(3 * 2, 4)
    assert (out.gate_weights is None) == (trace.gate_weights is None)


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(TraceError, match="batch size"):
        batch_decode(three_requests(), 0)


def reference_batches(lengths: list[int], batch: int) -> list[list[tuple[int, int]]]:
    """(request, token) pairs of each batched step, from an explicit slot table."""
    slots: list[list[int] | None] = [None] * batch  # [request, next token]
    waiting = [r for r, n in enumerate(lengths) if n > 0]
    steps = []
    while True:
        for s in range(batch):
            if slots[s] is None and waiting:
                slots[s] = [waiting.pop(0), 0]
        if all(s is None for s in slots):
            return steps
        steps.append([(s[0], s[1]) for s in slots if s is not None])
        for i, s in enumerate(slots):
            if s is not None:
                s[1] += 1
                if s[1] == lengths[s[0]]:
                    slots[i] = None


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 5), min_size=1, max_size=6), batch=st.integers(1, 4))
def test_batch_matches_a_slot_table(lengths: list[int], batch: int) -> None:
    out = batch_decode(one_hot_requests(lengths), batch)
    expected = reference_batches(lengths, batch)
    got = [sorted(int(x) for x in row if x != PAD) for row in np.asarray(out.experts)[:, 0]]
    assert got == [sorted(8 * r + i for r, i in step) for step in expected]
    np.testing.assert_array_equal(out.position, [len(s) for s in expected])
    np.testing.assert_array_equal(out.gate_weights[:, 0].sum(axis=1), [len(s) for s in expected])
    assert out.width == min(batch, 8 * len(lengths))
