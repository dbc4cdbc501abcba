"""SIEVE (Zhang et al., NSDI 2024): a FIFO queue with a visited bit and a hand that sieves it.

New keys enter at the newest end with the bit clear; a hit sets the bit. To evict, the hand walks
from where it stopped (the oldest key at first) toward newer keys, clearing set bits, and evicts
the first key whose bit is clear; it then rests on the evicted key's newer neighbour (wrapping to
the oldest key past the newest). Unlike CLOCK, survivors keep their place. Keys of the current row
are skipped untouched.

State: an *insertion log* instead of a linked list. Keys are appended to a ring buffer at absolute
positions ``tail, tail + 1, ...``; the queue is the live entries of the window ``[head, tail)`` in
position order, an evicted key leaves a *hole*. Two bitmaps by ring slot (64 slots to a
``uint64`` word) hold which slots are live and which are visited, so the hand passes a run of
visited keys and holes with one count-trailing-zeros per word. The head and the last entry before
the tail are always live (holes there are trimmed), so "the victim was the newest key" is
"it was at ``tail - 1``"; the hand is then reset to the oldest key (``hand = -1``; any hand below
``head`` means the oldest). When a row would not fit in the ring the window is compacted to its
live entries (at most ``capacity``; the ring holds twice that plus a row), amortised O(1).

``replay`` is a specialised loop: the row guard becomes a bitmap of *protected slots*, which the
hand skips untouched (the slots of a wide row's resident keys first, each new key's slot as it is
filled, all released at the row's end); a row of one key needs none (its key is not in the queue
while the hand moves), and the leading one-key rows of a block (all of it for a flattened request
stream) run a loop that reads no row bounds, on a byte-per-slot copy of the bitmaps. ``access`` (one
request at a time, with the engine's guard array) walks slot by slot; the tests check that both give
the same hits, evictions and queue.

``state = (ring int64[M], pos_of int64[num_keys], live uint64[M / 64], visited uint64[M / 64],
st int64[5])`` with ``st = [head, tail, size, capacity, hand]`` (``q & (M - 1)`` is a position's slot).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.policies._loops import (
    ONE,
    clear_bit,
    get_bit,
    one_key_prefix,
    pow2_at_least,
    rows_to_steps,
    set_bit,
    steps_to_rows,
)
from moesim.sim.row_loop import HIT, MISS, NONNEG, row_loop
from numba.cpython.unsafe.numbers import trailing_zeros  # LLVM's cttz (numba's own RNG uses it)

NAME = "sieve"
PARAMS: dict[str, Any] = {}
GUARDED_ALL = "sieve: every resident is guarded (capacity smaller than the row width)"

_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
# ``mask & NONNEG`` tells the compiler that a slot ``q & mask`` is never negative, so numba's
# negative-index fix-ups drop out of the loops (measured ~10% on a one-key stream).

# Byte-per-slot copy of the bitmaps (``_serve_stream``): bit 0 of a byte is live, bit 1 visited, and
# eight slots make a ``uint64`` lane word. ``_LOW`` / ``_HIGH`` pick the live / visited bit of each byte;
# ``_SPREAD`` / ``_PICK`` / ``_ROUND`` spread 8 bits over 8 bytes and ``_GATHER`` packs them back
# (multiplications whose partial products never overlap, so no carries).
_LOW = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x0202020202020202)
_SPREAD = np.uint64(0x0101010101010101)
_PICK = np.uint64(0x8040201008040201)
_ROUND = np.uint64(0x7F7F7F7F7F7F7F7F)
_GATHER = np.uint64(0x0102040810204080)
_BYTE = np.uint64(0xFF)


def ring_size(capacity: int, num_keys: int) -> int:
    """The smallest power of two (at least 64) holding twice the live keys plus one row of new keys."""
    return pow2_at_least(2 * min(max(capacity, 1), num_keys) + num_keys)


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    m = ring_size(capacity, num_keys)
    return (np.full(m, -1, np.int64), np.full(num_keys, -1, np.int64), np.zeros(m // 64, np.uint64),
            np.zeros(m // 64, np.uint64), np.array([0, 0, 0, capacity, -1], np.int64))


@njit
def _compact(ring, pos_of, live, visited, st):
    """Move the live entries of the window to its start, in order, with their visited bits; the
    hand follows the entry it rests on."""
    mask = (ring.shape[0] - 1) & NONNEG
    head = st[0]
    hand = st[4]
    new_hand = -1
    out = head
    for q in range(head, st[1]):
        slot = q & mask
        if get_bit(live, slot) == 0:
            continue
        if new_hand < 0 and hand > head and q >= hand:
            new_hand = out
        v = ring[slot]
        vis = get_bit(visited, slot)
        clear_bit(live, slot)
        clear_bit(visited, slot)
        dest = out & mask
        ring[dest] = v
        pos_of[v] = out
        set_bit(live, dest)
        if vis:
            set_bit(visited, dest)
        out += 1
    st[1] = out
    st[4] = new_hand


@njit(inline="always")
def _remove(ring, pos_of, live, q, head, tail, mask):
    """Evict the entry at position ``q``: (victim, head, tail, hand); trims holes at both ends. (The
    ring keeps the stale key: the live bit says what is a hole; a victim's visited bit is clear.)"""
    v = ring[q & mask]
    pos_of[v] = -1
    clear_bit(live, q & mask)
    if q == tail - 1:  # the newest key: the hand restarts from the oldest
        hand = -1
        tail = q
        while tail > head and get_bit(live, (tail - 1) & mask) == 0:
            tail -= 1
    else:
        hand = q + 1
    if q == head:
        head += 1
        while head < tail and get_bit(live, head & mask) == 0:
            head += 1
        if head > tail:  # the queue is empty now
            head = tail
    return v, head, tail, hand


@njit
def _sweep_words(live, visited, guarded, p, head, tail, mask):
    """The position the hand evicts, starting at ``p``: the first live, unprotected, unvisited entry,
    wrapping from the tail to the head; clears the visited bits of the unprotected entries passed.
    A word of slots at a time. -1 when every live entry is protected: one full pass clears the
    visited bits of the unprotected ones, so the pass after it finds one if any exists, and the
    third return to the head gives up."""
    wraps = 0
    while True:
        if p >= tail:
            p = head
            wraps += 1
            if wraps > 2:
                return -1
        slot = p & mask
        w = slot >> 6
        off = np.uint64(slot & 63)
        g = guarded[w]
        free = (live[w] & ~visited[w] & ~g) >> off
        room = min(64 - (slot & 63), tail - p)  # positions of this word from ``p`` on, before the tail
        if free != 0:
            t = np.int64(trailing_zeros(free))
            if t < room:
                visited[w] &= ~((((ONE << np.uint64(t)) - ONE) << off) & ~g)
                return p + t
        passed = _ALL if room == 64 else (ONE << np.uint64(room)) - ONE
        visited[w] &= ~((passed << off) & ~g)
        p += room


@njit
def access(state, key, now, next_use, guard, stamp):
    ring, pos_of, live, visited, st = state
    mask = (ring.shape[0] - 1) & NONNEG
    p = pos_of[key]
    if p >= 0:
        set_bit(visited, p & mask)
        return HIT
    victim = MISS
    if st[2] >= st[3]:
        head = st[0]
        tail = st[1]
        q = max(st[4], head)
        wraps = 0
        while True:
            if q >= tail:
                q = head
                wraps += 1
                if wraps > 2:  # two full passes found no unguarded entry (see _sweep_words)
                    raise ValueError(GUARDED_ALL)
            if get_bit(live, q & mask) and guard[ring[q & mask]] != stamp:
                if get_bit(visited, q & mask) == 0:
                    break
                clear_bit(visited, q & mask)
            q += 1
        victim, head, tail, hand = _remove(ring, pos_of, live, q, head, tail, mask)
        st[0] = head
        st[1] = tail
        st[4] = hand
        st[2] -= 1
    if st[1] - st[0] >= ring.shape[0]:
        _compact(ring, pos_of, live, visited, st)
    q = st[1]
    ring[q & mask] = key
    pos_of[key] = q
    set_bit(live, q & mask)  # its visited bit is clear: only live entries have one set
    st[1] = q + 1
    st[2] += 1
    return victim


@njit
def _bits_to_bytes(live, visited, lanes):
    """Spread the bitmaps over the zeroed byte-per-slot copy (``lanes``: its ``uint64`` view)."""
    for w in range(live.shape[0]):
        lw = live[w]
        vw = visited[w]
        if lw | vw == 0:
            continue
        for g in range(8):
            sh = np.uint64(g << 3)
            lb = (((((lw >> sh) & _BYTE) * _SPREAD) & _PICK) + _ROUND) >> np.uint64(7)
            vb = (((((vw >> sh) & _BYTE) * _SPREAD) & _PICK) + _ROUND) >> np.uint64(7)
            lanes[(w << 3) + g] = (lb & _LOW) | ((vb & _LOW) << ONE)


@njit
def _bytes_to_bits(lanes, live, visited):
    """Pack the byte-per-slot copy back into the bitmaps."""
    for w in range(live.shape[0]):
        lw = np.uint64(0)
        vw = np.uint64(0)
        for g in range(8):
            x = lanes[(w << 3) + g]
            sh = np.uint64(g << 3)
            lw |= (((x & _LOW) * _GATHER) >> np.uint64(56)) << sh
            vw |= ((((x >> ONE) & _LOW) * _GATHER) >> np.uint64(56)) << sh
        live[w] = lw
        visited[w] = vw


@njit
def _compact_bytes(ring, pos_of, flags, head, tail, hand, mask):
    """:func:`_compact` on the byte-per-slot copy: (new tail, new hand)."""
    new_hand = -1
    out = head
    for q in range(head, tail):
        slot = q & mask
        b = flags[slot]
        if b & 1 == 0:
            continue
        if new_hand < 0 and hand > head and q >= hand:
            new_hand = out
        v = ring[slot]
        flags[slot] = 0
        dest = out & mask
        ring[dest] = v
        pos_of[v] = out
        flags[dest] = b
        out += 1
    return out, new_hand


@njit
def _serve_stream(ring, pos_of, live, visited, st, keys, row_ptr, hits):
    """Serve the leading rows of one key each (nothing to protect): (rows served, evictions).

    The caller passes the keys and hits as slices from the first row's key, so that the index starts
    at 0 (numba then drops its negative-index fix-ups). The loop works on a byte per slot (bit 0
    live, bit 1 visited; copied from the bitmaps and back, O(ring) a call): a hit is then a plain
    store, not a read-modify-write of a word that the next miss reads back. Once the cache is full,
    the common access (a hit, or a miss whose victim is the live unvisited key at the hand, neither
    the oldest nor the newest, with no compaction due) runs without a branch on hit or miss, which
    is random from access to access (~1/3 hits on the benchmark stream): each store is made for both,
    a hit's with an address or value that changes nothing, and the selects are written as masks
    (``mneg`` is -1 on a miss, 0 on a hit; LLVM turns a ``select`` back into a branch). The other
    misses take the written-out sweep (8 slots at a time), removal and compaction. Together 1.7-1.8x
    the bitmap loop on the benchmark stream."""
    n = one_key_prefix(row_ptr)
    if n == 0:
        return 0, 0
    m = ring.shape[0]
    mask = (m - 1) & NONNEG
    dummy = m  # a slot past the ring: where a hit's copy of a miss's store goes
    flags = np.zeros(m + 8, np.uint8)
    lanes = flags[:m].view(np.uint64)
    _bits_to_bytes(live, visited, lanes)
    head = st[0]
    tail = st[1]
    size = st[2]
    cap = st[3]
    hand = st[4]
    i0 = 0
    while i0 < n and size < cap:  # filling: nothing to evict
        k = keys[i0] & NONNEG
        p = pos_of[k]
        if p >= 0:
            hits[i0] = 1
            flags[p & mask] = 3
        else:
            hits[i0] = 0
            if tail - head >= m:
                tail, hand = _compact_bytes(ring, pos_of, flags, head, tail, hand, mask)
            slot = tail & mask
            ring[slot] = k
            pos_of[k] = tail
            flags[slot] = 1
            tail += 1
            size += 1
        i0 += 1
    # Full from here on: every miss evicts one key (the size stays), so the evictions are counted
    # from the hits at the end. Slices again let the index start at 0.
    ks = keys[i0:n]
    hs = hits[i0:n]
    for i in range(n - i0):
        k = ks[i] & NONNEG
        p = pos_of[k]
        q = hand
        vslot = q & mask
        mneg = p >> 63
        # Negative when the key at the hand is not the victim SIEVE would take the plain way: not
        # live and unvisited, the oldest (or a hand reset below the head), the newest or beyond, or
        # the window full (a compaction is due).
        bad = (tail - 2 - q) | (q - head - 1) | (m - 1 - tail + head) | -np.int64(flags[vslot] ^ 1)
        if (p & bad) >= 0:
            hs[i] = np.uint8(1 + mneg)
            pm = p & mask
            flags[pm ^ ((pm ^ vslot) & mneg)] = np.uint8(3 & ~mneg)  # hit: visited; miss: the victim's hole
            v = ring[vslot] & NONNEG  # the victim on a miss (a hit discards it: any slot may be read)
            pos_of[k ^ ((k ^ v) & mneg)] = p | mneg  # miss: the victim is out; hit: pos_of[k] = p again
            tslot = tail & mask
            ring[tslot] = k ^ ((k ^ ring[tslot]) & ~mneg)  # a hit keeps the stale key (it is state)
            pos_of[k] = p ^ ((p ^ tail) & mneg)
            flags[(tslot ^ ((tslot ^ dummy) & ~mneg)) & NONNEG] = 1  # tslot may be the head's when full
            hand -= mneg  # the victim's newer neighbour
            tail -= mneg
            continue
        hs[i] = 0
        q = max(hand, head)
        while True:
            if q >= tail:
                q = head
            slot = q & mask
            off = np.uint64((slot & 7) << 3)
            x = lanes[slot >> 3]
            free = ((x & ~(x >> ONE)) & _LOW) >> off
            room = min(8 - (slot & 7), tail - q)  # positions of this lane word from ``q`` on, before the tail
            if free != 0:
                t = np.int64(trailing_zeros(free)) >> 3
                if t < room:
                    lanes[slot >> 3] = x & ~((((ONE << np.uint64(t << 3)) - ONE) & _HIGH) << off)
                    q += t
                    break
            passed = _ALL if room == 8 else (ONE << np.uint64(room << 3)) - ONE
            lanes[slot >> 3] = x & ~((passed & _HIGH) << off)
            q += room
        slot = q & mask
        pos_of[ring[slot]] = -1
        flags[slot] = 0
        if q == tail - 1:
            hand = -1
            tail = q
            while tail > head and flags[(tail - 1) & mask] & 1 == 0:
                tail -= 1
        else:
            hand = q + 1
        if q == head:
            head += 1
            while head < tail and flags[head & mask] & 1 == 0:
                head += 1
            if head > tail:
                head = tail
        if tail - head >= m:
            tail, hand = _compact_bytes(ring, pos_of, flags, head, tail, hand, mask)
        slot = tail & mask
        ring[slot] = k
        pos_of[k] = tail
        flags[slot] = 1
        tail += 1
    evictions = 0
    for i in range(n - i0):
        evictions += 1 - hs[i]
    _bytes_to_bits(lanes, live, visited)
    st[0] = head
    st[1] = tail
    st[2] = size
    st[4] = hand
    return n, evictions


@njit
def _serve_rows(ring, pos_of, live, visited, guarded, st, keys, row_ptr, hits):
    """Serve the CSR rows; returns the evictions. A wider row protects the slots of its keys while
    it is served."""
    mask = (ring.shape[0] - 1) & NONNEG
    head = st[0]
    tail = st[1]
    size = st[2]
    cap = st[3]
    hand = st[4]
    evictions = 0
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        if tail - head + (hi - lo) > ring.shape[0]:
            st[0] = head
            st[1] = tail
            st[4] = hand
            _compact(ring, pos_of, live, visited, st)
            tail = st[1]
            hand = st[4]
        wide = hi - lo > 1
        if wide:
            for i in range(lo, hi):
                p = pos_of[keys[i] & NONNEG]
                if p >= 0:
                    set_bit(guarded, p & mask)
        for i in range(lo, hi):
            k = keys[i] & NONNEG
            p = pos_of[k]
            if p >= 0:
                hits[i] = 1
                set_bit(visited, p & mask)
                continue
            hits[i] = 0
            if size >= cap:
                q = _sweep_words(live, visited, guarded, max(hand, head), head, tail, mask)
                if q < 0:
                    st[0] = head
                    st[1] = tail
                    st[2] = size
                    st[4] = hand
                    raise ValueError(GUARDED_ALL)
                # _remove written out: as a call it cost this loop ~30%
                pos_of[ring[q & mask]] = -1
                live[(q & mask) >> 6] &= ~(ONE << np.uint64(q & 63))
                if q == tail - 1:
                    hand = -1
                    tail = q
                    while tail > head and get_bit(live, (tail - 1) & mask) == 0:
                        tail -= 1
                else:
                    hand = q + 1
                if q == head:
                    head += 1
                    while head < tail and get_bit(live, head & mask) == 0:
                        head += 1
                    if head > tail:
                        head = tail
                size -= 1
                evictions += 1
            ring[tail & mask] = k
            pos_of[k] = tail
            set_bit(live, tail & mask)
            if wide:
                set_bit(guarded, tail & mask)
            tail += 1
            size += 1
        if wide:
            for i in range(lo, hi):
                clear_bit(guarded, pos_of[keys[i]] & mask)  # every key of the row is in the queue now
    st[0] = head
    st[1] = tail
    st[2] = size
    st[4] = hand
    return evictions


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    ring, pos_of, live, visited, st = state
    if row_ptr.shape[0] < 2:
        return 0
    lo = row_ptr[0]
    done, evictions = _serve_stream(ring, pos_of, live, visited, st, keys[lo:], row_ptr, hits_out[lo:])
    if done < row_ptr.shape[0] - 1:
        guarded = np.zeros(live.shape[0], np.uint64)
        evictions += _serve_rows(ring, pos_of, live, visited, guarded, st, keys, row_ptr[done:], hits_out)
    return evictions


@njit
def replay_steps(state, chunk, num_experts, step_hits, step_acc):
    """Fused fast path of :func:`replay` (one shared cache, nothing pinned, row order as recorded):
    builds the rows from ``chunk`` ``[T, L, K]`` in place of the engine's CSR block and scatter,
    serves them with the same loop and writes each (step, layer)'s hits and accesses; returns the
    evictions."""
    ring, pos_of, live, visited, st = state
    keys, row_ptr = steps_to_rows(chunk, num_experts)
    hits = np.empty(keys.shape[0], np.uint8)
    guarded = np.zeros(live.shape[0], np.uint64)
    evictions = _serve_rows(ring, pos_of, live, visited, guarded, st, keys, row_ptr, hits)
    rows_to_steps(hits, row_ptr, step_hits, step_acc)
    return evictions


@njit
def replay_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared per-access loop over :func:`access`; gives exactly what :func:`replay` gives."""
    return row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    queue: list[int] = []  # oldest first
    visited: dict[int, bool] = {}
    hand: int | None = None  # index into queue
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in visited:
                visited[k] = True
                hits[i] = 1
                continue
            if len(queue) >= capacity:
                j = 0 if hand is None else hand
                while queue[j] in row or visited[queue[j]]:
                    if queue[j] not in row:
                        visited[queue[j]] = False
                    j = (j + 1) % len(queue)
                del visited[queue.pop(j)]
                hand = j if j < len(queue) else None
                evictions += 1
            queue.append(k)
            visited[k] = False
    return hits, evictions
