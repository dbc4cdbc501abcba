"""CLOCK (second chance): a circular buffer of slots with one reference bit per expert.

A hit sets the bit. On a miss with a full cache the hand sweeps: a set bit is cleared and the
hand moves on; the first key with a clear bit is replaced by the new key (bit clear) and the hand
moves past it. Keys of the current row are skipped untouched. This is FIFO with reinsertion:
``reference`` uses that formulation (a queue whose head is re-queued while its bit is set).

State: ``slots[capacity]`` (the key in each slot), ``slot_of[key]`` (-1 if absent), ``bits`` (the
reference bits by slot, 64 to a ``uint64`` word; bits past the last slot stay clear),
``[size, capacity, hand]``. Keeping the bits by slot in words lets the hand pass a run of set bits
with one count-trailing-zeros instead of a loop that mispredicts at its unpredictable exit.

``replay`` is a specialised loop that sweeps word by word. The row guard becomes a mask of
*protected slots* (``guarded``, words like ``bits``): the hand treats a protected slot as one whose
bit is set but leaves its bit alone, which is exactly "skipped untouched". A row of one key needs
no protection (its key is not resident while the hand moves); a wider row protects the slots of
its resident keys first and each new key's slot as it is filled, and unprotects them at its end.
The leading one-key rows of a block (all of it for a flattened request stream) run a loop that
reads no row bounds, on a private word per slot holding the key and the hand's turn in which its bit
is set (see ``_serve_stream``).
``access`` (one request at a time, with the engine's guard array) sweeps slot by slot; the tests
check that both give the same hits, evictions and state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.policies._loops import (
    ONE,
    clear_bit,
    get_bit,
    one_key_prefix,
    rows_to_steps,
    set_bit,
    steps_to_rows,
)
from moesim.sim.row_loop import HIT, MISS, NONNEG, row_loop
from numba.cpython.unsafe.numbers import trailing_zeros  # LLVM's cttz (numba's own RNG uses it)

NAME = "clock"
PARAMS: dict[str, Any] = {}
GUARDED_ALL = "clock: every resident is guarded (capacity smaller than the row width)"

# ``_serve_stream``'s word per slot: the key in the low bits, the turn of its reference bit above.
_ROT = 48
_KEY = (1 << _ROT) - 1


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    cap = max(capacity, 1)
    return (np.full(cap, -1, np.int64), np.full(num_keys, -1, np.int64), np.zeros((cap + 63) // 64, np.uint64),
            np.array([0, capacity, 0], np.int64))


@njit
def _sweep(slots, bits, guard, stamp, hand, cap):
    """Move the hand to the first unguarded slot whose bit is clear, clearing set bits on the way
    (-1: every slot is guarded; two full turns clear every unguarded bit and then find one)."""
    for _ in range(2 * cap + 1):
        if guard[slots[hand]] != stamp:
            if get_bit(bits, hand) == 0:
                return hand
            clear_bit(bits, hand)
        hand += 1
        if hand == cap:
            hand = 0
    return -1


@njit
def _sweep_words(bits, guarded, hand, cap):
    """Move the hand to the first unprotected slot whose bit is clear, clearing the bits of the
    unprotected slots on the way; a word at a time (-1: every slot is protected, found on the
    third return to slot 0: a full turn clears every unprotected bit, the next one finds a slot)."""
    wraps = 0
    while True:
        w = hand >> 6
        off = np.uint64(hand & 63)
        free = (~(bits[w] | guarded[w])) >> off  # the slots the hand may take, from the hand on
        room = min(64, cap - (w << 6)) - (hand & 63)  # slots of this word from the hand on
        if free != 0:
            t = np.int64(trailing_zeros(free))
            if t < room:
                bits[w] &= ~((((ONE << np.uint64(t)) - ONE) << off) & ~guarded[w])
                return hand + t
        bits[w] &= ((ONE << off) - ONE) | guarded[w]  # every slot from the hand on was passed
        hand = (w + 1) << 6
        if hand >= cap:
            hand = 0
            wraps += 1
            if wraps > 2:
                return -1


@njit
def access(state, key, now, next_use, guard, stamp):
    slots, slot_of, bits, ctr = state
    s = slot_of[key]
    if s >= 0:
        set_bit(bits, s)
        return HIT
    cap = ctr[1]
    if ctr[0] < cap:
        slots[ctr[0]] = key
        slot_of[key] = ctr[0]
        clear_bit(bits, ctr[0])
        ctr[0] += 1
        return MISS
    hand = _sweep(slots, bits, guard, stamp, ctr[2], cap)
    if hand < 0:
        raise ValueError(GUARDED_ALL)
    v = slots[hand]
    slot_of[v] = -1
    slots[hand] = key
    slot_of[key] = hand
    ctr[2] = hand + 1 if hand + 1 < cap else 0
    return v


@njit
def _to_turns(slots, bits, size, hand, r, sk):
    """``_serve_stream``'s words of the resident slots from ``slots`` and the bits, with ``r`` the
    current turn (its own function: written out in the loop's, it slowed the loop's code)."""
    for s in range(size):
        turn = r - 1 + (1 if s < hand else 0) + np.int64((bits[s >> 6] >> np.uint64(s & 63)) & ONE)
        sk[s] = slots[s] | ((turn & 255) << _ROT)


@njit
def _from_turns(sk, size, hand, r, slots, bits):
    """``slots`` and the bits back from ``_serve_stream``'s words (a word of bits at a time)."""
    for s in range(size):
        slots[s] = sk[s] & _KEY
    for w in range(bits.shape[0]):
        word = np.uint64(0)
        for s in range(w << 6, min(size, (w + 1) << 6)):
            on = (sk[s] >> _ROT) == ((r + (1 if s < hand else 0)) & 255)
            word |= np.uint64(on) << np.uint64(s & 63)
        bits[w] = word


@njit
def _serve_stream(slots, slot_of, bits, ctr, keys, row_ptr, hits):
    """Serve the leading rows of one key each (nothing to protect): (rows served, evictions).

    The caller passes the keys and hits as slices from the first row's key, so that the index starts
    at 0 (numba then drops its negative-index fix-ups). The loop works on a private word per slot,
    ``sk[slot] = key | rot << _ROT`` (copied from ``slots`` and the bits and back, O(capacity) a
    call): ``rot`` is the hand's turn (mod 256) in which the slot's bit is set, so a slot's bit is
    set when ``rot`` is the current turn ``r`` (slots from the hand on) or ``r + 1`` (slots behind
    it). The hand then passes a slot without a store (its bit clears as the hand moves past it), a
    hit is one plain store, and one load at the hand gives both the key and the bit. Resident slots
    only hold ``r - 1 .. r + 1``: a slot is rewritten whenever the hand takes it.

    Once the cache is full, the common access (a hit, or a miss whose victim is the slot at the
    hand, short of the last slot) runs without a branch on hit or miss, which is random from access
    to access (~60% hits on the benchmark stream): each store is made for both, a hit's with an
    address or value that changes nothing, the selects written as masks (``mneg`` is -1 on a miss,
    0 on a hit; LLVM turns a ``select`` back into a branch). The hand's own move stays off the loads
    at the hand, so hits do not wait for them. A miss whose hand slot has its bit set (about half of
    them) checks the next six slots at once and takes the first clear one, else sweeps slot by slot.
    Together ~1.35x the bitmap loop on the benchmark stream."""
    n = one_key_prefix(row_ptr)
    cap = ctr[1]
    if n == 0 or cap < 1:  # (no capacity: the row loop refuses the rows)
        return 0, 0
    size = ctr[0]
    hand = ctr[2]
    sk = np.empty(cap, np.int64)
    r = 1  # the current turn
    _to_turns(slots, bits, size, hand, r, sk)
    i0 = 0
    while i0 < n and size < cap:  # filling: nothing to evict
        k = keys[i0] & NONNEG
        s = slot_of[k]
        if s >= 0:
            hits[i0] = 1
            sk[s] = k | (((r + (1 if s < hand else 0)) & 255) << _ROT)
        else:
            hits[i0] = 0
            slot_of[k] = size
            sk[size] = k | (((r - 1 + (1 if size < hand else 0)) & 255) << _ROT)
            size += 1
        i0 += 1
    # Full from here on: every miss evicts one key, so the evictions are counted from the hits at the
    # end. Slices again let the index start at 0.
    ks = keys[i0:n]
    hs = hits[i0:n]
    last = cap - 2  # the fast path leaves the hand short of the wrap (the turn changes there)
    for i in range(n - i0):
        k = ks[i] & NONNEG
        s = slot_of[k]
        mneg = s >> 63
        h = hand & NONNEG
        x = sk[h]
        # Negative when the miss cannot take the slot at the hand: its bit is set, or it is the last.
        bad = (((x >> _ROT) ^ r) - 1) | (last - h)
        if (s & bad) >= 0:
            hs[i] = np.uint8(1 + mneg)
            v = x & _KEY  # the victim on a miss
            slot_of[k ^ ((k ^ v) & mneg)] = s | mneg  # miss: the victim is out; hit: slot_of[k] = s again
            slot_of[k] = s ^ ((s ^ h) & mneg)
            # hit: the bit set (turn r ahead of the hand, r + 1 behind it); miss: the new key, bit clear
            rot = (r - (((s - h) >> 63) & ~mneg)) & 255
            sk[(s ^ ((s ^ h) & mneg)) & NONNEG] = k | (rot << _ROT)
            hand = h - mneg
            continue
        hs[i] = 0
        q = h  # its bit is set or it is the last slot
        if h + 8 <= cap:  # the first clear bit of the next six slots, 7 if none
            clear = np.int64(128)
            for j in range(1, 7):
                clear |= np.int64(((sk[h + j] >> _ROT) ^ r) != 0) << j
            q = h + np.int64(trailing_zeros(clear))
        while (sk[q] >> _ROT) == r:
            q += 1
            if q == cap:
                q = 0
                r = (r + 1) & 255
        slot_of[sk[q] & _KEY] = -1
        sk[q] = k | (r << _ROT)
        slot_of[k] = q
        hand = q + 1
        if hand == cap:
            hand = 0
            r = (r + 1) & 255
    evictions = 0
    for i in range(n - i0):
        evictions += 1 - hs[i]
    _from_turns(sk, size, hand, r, slots, bits)
    ctr[0] = size
    ctr[2] = hand
    return n, evictions


@njit
def _serve_rows(slots, slot_of, bits, guarded, keys, row_ptr, hits, size, cap, hand):
    """Serve the CSR rows: (size, hand, evictions). A wider row protects the slots of its keys
    while it is served (see the module docstring)."""
    evictions = 0
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        wide = hi - lo > 1
        if wide:
            for i in range(lo, hi):
                s = slot_of[keys[i] & NONNEG]
                if s >= 0:
                    set_bit(guarded, s)
        for i in range(lo, hi):
            k = keys[i] & NONNEG
            s = slot_of[k]
            if s >= 0:
                hits[i] = 1
                set_bit(bits, s)
                continue
            hits[i] = 0
            if size < cap:
                s = size
                size += 1
            else:
                s = _sweep_words(bits, guarded, hand, cap)
                if s < 0:
                    raise ValueError(GUARDED_ALL)
                slot_of[slots[s]] = -1
                hand = s + 1 if s + 1 < cap else 0
                evictions += 1
            slots[s] = k
            slot_of[k] = s
            clear_bit(bits, s)
            if wide:
                set_bit(guarded, s)
        if wide:
            for i in range(lo, hi):
                clear_bit(guarded, slot_of[keys[i]])  # every key of the row is resident now
    return size, hand, evictions


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    slots, slot_of, bits, ctr = state
    if row_ptr.shape[0] < 2:
        return 0
    lo = row_ptr[0]
    done, evictions = _serve_stream(slots, slot_of, bits, ctr, keys[lo:], row_ptr, hits_out[lo:])
    if done < row_ptr.shape[0] - 1:
        guarded = np.zeros(bits.shape[0], np.uint64)
        size, hand, ev = _serve_rows(slots, slot_of, bits, guarded, keys, row_ptr[done:], hits_out, ctr[0],
                                     ctr[1], ctr[2])
        ctr[0] = size
        ctr[2] = hand
        evictions += ev
    return evictions


@njit
def replay_steps(state, chunk, num_experts, step_hits, step_acc):
    """Fused fast path of :func:`replay` (one shared cache, nothing pinned, row order as recorded):
    builds the rows from ``chunk`` ``[T, L, K]`` in place of the engine's CSR block and scatter,
    serves them with the same loop and writes each (step, layer)'s hits and accesses; returns the
    evictions."""
    slots, slot_of, bits, ctr = state
    keys, row_ptr = steps_to_rows(chunk, num_experts)
    hits = np.empty(keys.shape[0], np.uint8)
    guarded = np.zeros(bits.shape[0], np.uint64)
    size, hand, evictions = _serve_rows(slots, slot_of, bits, guarded, keys, row_ptr, hits, ctr[0], ctr[1],
                                        ctr[2])
    ctr[0] = size
    ctr[2] = hand
    rows_to_steps(hits, row_ptr, step_hits, step_acc)
    return evictions


@njit
def replay_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared per-access loop over :func:`access`; gives exactly what :func:`replay` gives."""
    return row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    queue: deque[int] = deque()  # head = where the hand points
    bit: dict[int, int] = {}
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in bit:
                bit[k] = 1
                hits[i] = 1
                continue
            if len(queue) >= capacity:
                while True:
                    v = queue.popleft()
                    if v in row:
                        queue.append(v)
                    elif bit[v]:
                        bit[v] = 0
                        queue.append(v)
                    else:
                        break
                del bit[v]
                evictions += 1
            queue.append(k)
            bit[k] = 0
    return hits, evictions
