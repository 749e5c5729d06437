"""K-quants (Q2_K … Q6_K) in numpy, byte-identical to llama.cpp's reference quantizers.

llama.cpp quantizes a tensor without an importance matrix with ``quantize_row_qN_K_ref``
(ggml/src/ggml-quants.c); :func:`quantize_kquant` reproduces those bytes exactly, including
the ``nearest_int`` bit trick, float32 rounding in C's evaluation order, the truncations to
``uint8``/``int8`` and GGML's float32→float16 conversion (IEEE round-to-nearest-even, which
numpy's ``astype(float16)`` also does). Sums are accumulated element by element in index
order, as the C loops do (numpy's pairwise ``sum`` would round differently).

The quantizers work on super-blocks of 256 values (``QK_K``), each split into sub-blocks
of 16 (Q2_K, Q3_K, Q6_K) or 32 (Q4_K, Q5_K) values. Everything is vectorised over all
sub-blocks of all super-blocks of a chunk at once: arrays are laid out as
``(values_in_sub_block, n_sub_blocks)``, so C's per-value loops become whole-array
operations and its running sums reductions over axis 0, which numpy does row by row, in
C's order. The searches over candidate scales (``make_qkx2_quants`` for Q2_K/Q4_K/Q5_K,
``make_qx_quants`` for Q6_K) evaluate each candidate for every sub-block at once, a mask
recording where it wins; Q3_K's coordinate descent (``make_q3_quants``) runs in rounds
that evaluate every remaining position at once and apply the first accepted move.

Floating point: C's ``a*b + c`` is two roundings here. llama.cpp's ggml-base library (which
holds ggml-quants.c) is built by llama-cpp-python with ``-O3 -std=gnu11`` and no ``-march``
flags, so on x86-64 the compiler has no FMA instruction to contract into (the shipped
libggml-base.so contains none); that is the behaviour reproduced. A build that contracts
writes different bytes: ggml-quants.c built with ``-march=native`` (GCC 12, x86-64)
differs, on normal data, in 25% of super-blocks for Q2_K, 31% for Q5_K, 6% for Q4_K, 0.6%
for Q6_K and 0.01% for Q3_K. Such builds (``-march=native`` in CMAKE_C_FLAGS, and very
likely aarch64, where FMA is baseline and compilers contract by default) are not matched. Inputs with NaN or
infinities are outside the exactness claim (C's ``if (x < min)`` and numpy's NaN
propagation differ); every finite float32 input is covered, including values whose
scales overflow float16 (which llama-quantize then refuses to write).

Block layouts (ggml-common.h), bytes per 256 values:

``q2_k`` (84)  scales[16] (low nibble scale, high nibble min), qs[64], d, dmin
``q3_k`` (110) hmask[32], qs[64], scales[12] (6-bit, packed), d
``q4_k`` (144) d, dmin, scales[12] (6-bit scales and mins, get_scale_min_k4), qs[128]
``q5_k`` (176) d, dmin, scales[12], qh[32], qs[128]
``q6_k`` (210) ql[128], qh[64], scales[16] (int8), d

numpy is imported inside functions: the CLI imports the plugin package on every run.
"""

from __future__ import annotations

from typing import Any

QK_K = 256
BLOCK_BYTES = {"q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210}
KQUANT_TYPES = tuple(BLOCK_BYTES)

# Super-blocks handled per vectorised pass, per type: large enough to amortise numpy's
# per-call overhead over the Python loops (a call with a few super-blocks runs at a
# fraction of the speed), small enough for the working set to stay in cache.
_CHUNK = {"q2_k": 512, "q3_k": 512, "q4_k": 512, "q5_k": 512, "q6_k": 512}


def row_bytes(k: int, qtype: str) -> int:
    """Bytes of one quantized row of ``k`` values (``k`` a multiple of 256)."""
    return k // QK_K * BLOCK_BYTES[_check_type(qtype)]


def _check_type(qtype: str) -> str:
    q = qtype.lower()
    if q not in BLOCK_BYTES:
        raise ValueError(f"not a k-quant type: {qtype!r} (one of {', '.join(KQUANT_TYPES)})")
    return q


def quantize_kquant(rows: Any, qtype: str) -> Any:
    """Quantize float32 ``rows`` of shape ``(n, k)`` to ``qtype``; ``k % 256 == 0``.

    Returns ``uint8`` of shape ``(n, k // 256 * block_bytes)``: exactly the bytes
    llama.cpp's ``quantize_row_<qtype>_ref`` writes (what ``llama-quantize`` produces for
    the tensor when no importance matrix is given). Any leading shape is kept: ``(..., k)``
    gives ``(..., row_bytes)``. Values are converted to float32 first.
    """
    import numpy as np

    q = _check_type(qtype)
    x = np.asarray(rows, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("quantize_kquant needs at least one dimension")
    k = x.shape[-1]
    if k % QK_K:
        raise ValueError(f"{q} needs rows whose length is a multiple of {QK_K}, got {k}")
    lead = x.shape[:-1]
    blocks = np.ascontiguousarray(x).reshape(-1, QK_K)
    nb = blocks.shape[0]
    out = np.empty((nb, BLOCK_BYTES[q]), dtype=np.uint8)
    fn = _QUANTIZERS[q]
    chunk = _CHUNK[q]
    with np.errstate(all="ignore"):
        for s in range(0, nb, chunk):
            e = min(nb, s + chunk)
            out[s:e] = fn(blocks[s:e])
    return out.reshape(*lead, k // QK_K * BLOCK_BYTES[q])


def dequantize_kquant(data: Any, qtype: str, shape: tuple[int, ...]) -> Any:
    """float32 values of quantized ``data`` (gguf-py's dequantizer), reshaped to ``shape``."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    q = _check_type(qtype)
    raw = np.ascontiguousarray(np.asarray(data, dtype=np.uint8)).reshape(-1)
    vals = dequantize(raw, GGMLQuantizationType[q.upper()])
    return np.asarray(vals, dtype=np.float32).reshape(shape)


# --------------------------------------------------------------------------- helpers
# All arrays below are float32/int32; Python scalars are never mixed into float32
# arithmetic (numpy would keep float32 for them, but constants are spelled np.float32 so
# the rounding is explicit).


def _nint(v):
    """C's nearest_int: ``(bits(v + 12582912.f) & 0x7fffff) - 0x400000`` (int32).

    Round-half-to-even for |v| < 2**22, and the same bit-pattern garbage as C elsewhere
    (NaN, infinities, huge values).
    """
    import numpy as np

    t = v + np.float32(12582912.0)
    i = t.view(np.int32)
    i &= 0x7FFFFF
    i -= 0x400000
    return i


def _seqsum(a):
    """``s = a[0]; for i >= 1: s += a[i]`` along axis 0 in float32, in index order.

    For a C-contiguous (n, G) array numpy reduces axis 0 row by row (pairwise summation
    only runs along an innermost reduced axis, which is what a single column, or a
    transposed view, would become); other arrays take the explicit loop. Starting from
    a[0] instead of C's ``0.f + a[0]`` only changes the sign of an all-zero sum, which no
    output byte depends on.
    """
    import numpy as np

    if a.ndim == 2 and a.shape[1] >= 8 and a.flags.c_contiguous:
        return np.add.reduce(a, axis=0)
    s = a[0].copy()
    for row in a[1:]:
        s += row
    return s


def _fp16(v):
    """GGML_FP32_TO_FP16 (round to nearest even): (float16 bits as uint16, value as float32)."""
    import numpy as np

    h = v.astype(np.float16)
    return h.view(np.uint16), h.astype(np.float32)


def _first_absmax(xt):
    """make_qx_quants' scan: ``if (|x[i]| > amax) {amax = |x[i]|; max = x[i];}`` from 0,
    along axis 0. Returns (amax, max): the first value of largest magnitude (0, 0 when all
    are zero or NaN; C's ``>`` never picks a NaN).

    Done with two reductions: the sign is known unless both +amax and -amax occur, and
    only those (rare) columns look for the first one.
    """
    import numpy as np

    f32 = np.float32
    hi = np.fmax.reduce(xt, axis=0)
    lo = np.fmin.reduce(xt, axis=0)
    nlo = -lo
    amax = np.fmax(hi, nlo)
    amax[~(amax > 0)] = f32(0)
    vmax = np.where(nlo == amax, lo, amax)
    both = (hi == amax) & (nlo == amax) & (amax > 0)
    if both.any():
        cols = np.nonzero(both)[0]
        sub = xt[:, cols]
        first = np.argmax(np.abs(sub) == amax[cols], axis=0)
        vmax[cols] = sub[first, np.arange(cols.size)]
    return amax, vmax


def _max_pos(cols):
    """``m = 0; for j: if (v[j] > m) m = v[j];`` over axis 1 of (B, n)."""
    import numpy as np

    m = np.zeros(cols.shape[0], dtype=np.float32)
    for j in range(cols.shape[1]):
        c = cols[:, j]
        np.copyto(m, c, where=c > m)
    return m


def _quants(xt, iscale, offset, lo, hi, unsafe, out):
    """``MAX(lo, MIN(hi, nearest_int(iscale * (x - offset))))`` as float32 into ``out``.

    ``offset`` None means ``iscale * x``. For |v| < 2**22 nearest_int is round-half-even,
    i.e. np.rint; the columns listed in ``unsafe`` (an index array, or None) may hold
    larger, infinite or NaN products and get C's bit trick instead.
    """
    import numpy as np

    if offset is None:
        np.multiply(xt, iscale, out=out)
    else:
        np.subtract(xt, offset, out=out)
        np.multiply(out, iscale, out=out)
    if unsafe is not None:
        exact = _nint(out[:, unsafe])
        np.clip(exact, lo, hi, out=exact)
    np.rint(out, out=out)
    np.clip(out, lo, hi, out=out)
    if unsafe is not None:
        out[:, unsafe] = exact
    return out


def _unsafe_offset(mx, mn, off, skip):
    """Columns where ``num / (mx - off) * (x - off)`` (|num| <= 32, mn <= x <= mx) might
    not stay below 2**21 in magnitude, or the quotient not be finite; None if there are none.

    |x - off| <= M = max(|mx - off|, |mn - off|), so |v| <= 32 * M / (mx - off) (plus a
    few ulps) and ``mx - off >= 2**-100`` keeps the quotient finite.
    """
    import numpy as np

    f32 = np.float32
    d1 = mx - off
    m = np.maximum(np.abs(d1), np.abs(mn - off))
    ok = (d1 >= f32(2.0**-100)) & (m <= f32(2.0**16) * d1)
    ok |= skip
    if ok.all():
        return None
    return np.nonzero(~ok)[0]


def _make_qkx2(xt, wt, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants for every column of ``xt`` (n, G) with weights ``wt``.

    Returns (L uint8 (n, G), scale (G,), the_min (G,)). Instead of copying the winning
    quants at every step, the (iscale, min) that produced them are remembered per column
    and the quants recomputed once at the end (same arithmetic, same values).
    """
    import numpy as np

    f32 = np.float32
    fnmax = f32(nmax)

    mn = np.minimum.reduce(xt, axis=0)  # C's `<`/`>` scans; values equal for finite x
    mx = np.maximum.reduce(xt, axis=0)
    sum_w = _seqsum(wt)
    lf = np.multiply(wt, xt)
    sum_x = _seqsum(lf)
    mn[mn > 0] = f32(0)
    same = mx == mn  # C returns early; whatever is computed for these is replaced
    t = np.empty_like(xt)
    wl = np.empty_like(xt)

    def error(scale, cur_min, lf):
        np.multiply(lf, scale, out=t)
        np.add(t, cur_min, out=t)
        np.subtract(t, xt, out=t)
        if use_mad:
            np.abs(t, out=t)
        else:
            np.multiply(t, t, out=t)
        np.multiply(t, wt, out=t)
        return _seqsum(t)

    unsafe = _unsafe_offset(mx, mn, mn, same)
    iscale = fnmax / (mx - mn)
    scale = f32(1) / iscale
    _quants(xt, iscale, mn, 0, nmax, unsafe, lf)
    best_error = error(scale, mn, lf)
    best_iscale = iscale
    best_off = mn
    cur_min = mn  # C updates `min` in place when a candidate wins; later steps use it

    for step in range(nstep + 1):
        num = (f32(rmin) + f32(rdelta) * f32(step)) + fnmax
        iscale = num / (mx - cur_min)
        _quants(xt, iscale, cur_min, 0, nmax, unsafe, lf)
        np.multiply(wt, lf, out=wl)
        sum_l = _seqsum(wl)
        np.multiply(wl, lf, out=t)
        sum_l2 = _seqsum(t)
        np.multiply(wl, xt, out=t)
        sum_xl = _seqsum(t)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        clampm = this_min > 0
        if clampm.any():
            this_min[clampm] = f32(0)
            this_scale = np.where(clampm, sum_xl / sum_l2, this_scale)
        cur_error = error(this_scale, this_min, lf)
        upd = (D > 0) & (cur_error < best_error)
        if upd.any():
            best_error = np.where(upd, cur_error, best_error)
            scale = np.where(upd, this_scale, scale)
            best_iscale = np.where(upd, iscale, best_iscale)
            best_off = np.where(upd, cur_min, best_off)
            cur_min = np.where(upd, this_min, cur_min)
            unsafe = _unsafe_offset(mx, mn, cur_min, same)

    unsafe = _unsafe_offset(mx, mn, best_off, same)
    _quants(xt, best_iscale, best_off, 0, nmax, unsafe, lf)
    L = lf.astype(np.uint8)
    L[:, same] = 0
    scale = np.where(same, f32(0), scale)
    the_min = -np.where(same, mn, cur_min)
    return L, scale, the_min


def _make_qx_rmse1(xt, nmax):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, NULL) for every column of ``xt`` (n, G).

    Returns (L int32 in 0..2*nmax-1 (0 for an all-zero column), scale (G,)).

    |iscale * x| <= |nmax + 0.9| (plus ulps) as |x| <= |max|, and iscale is finite unless
    amax < 1e-15, where C returns early: np.rint is exact here.
    """
    import numpy as np

    f32 = np.float32
    amax, vmax = _first_absmax(xt)
    zero = amax < f32(1e-15)
    vmax[zero] = f32(1)
    w = xt * xt
    wx = w * xt
    lf = np.empty_like(xt)
    t = np.empty_like(xt)

    def sums(lf):
        np.multiply(wx, lf, out=t)
        slx = _seqsum(t)
        np.multiply(w, lf, out=t)
        np.multiply(t, lf, out=t)
        return slx, _seqsum(t)

    iscale = f32(-nmax) / vmax
    best_iscale = iscale
    _quants(xt, iscale, None, -nmax, nmax - 1, None, lf)
    sumlx, suml2 = sums(lf)
    scale = np.where(suml2 != 0, sumlx / suml2, f32(0))
    best = scale * sumlx
    for s in range(-9, 10):
        if s == 0:
            continue
        num = -(f32(nmax) + f32(0.1) * f32(s))
        iscale = num / vmax
        _quants(xt, iscale, None, -nmax, nmax - 1, None, lf)
        sumlx, suml2 = sums(lf)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        if upd.any():
            new_scale = sumlx / suml2
            scale = np.where(upd, new_scale, scale)
            best = np.where(upd, new_scale * sumlx, best)
            best_iscale = np.where(upd, iscale, best_iscale)
    _quants(xt, best_iscale, None, -nmax, nmax - 1, None, lf)
    L = lf.astype(np.int32)
    L += nmax
    L[:, zero] = 0
    scale[zero] = f32(0)
    return L, scale


def _make_q3(xt, nmax):
    """make_q3_quants(n, nmax, x, L, do_rmse=true) for every column of ``xt`` (n, G).

    Returns (L int32 in 0..2*nmax-1 (0 for an all-zero column), scale (G,)).
    """
    import numpy as np

    f32 = np.float32
    n = xt.shape[0]
    amax, vmax = _first_absmax(xt)
    zero = amax < f32(1e-15)
    iscale = f32(-nmax) / vmax
    L = _nint(iscale * xt)
    np.clip(L, -nmax, nmax - 1, out=L)
    w = xt * xt
    wx = w * xt
    lf = L.astype(f32)
    sumlx = _seqsum(wx * lf)
    suml2 = _seqsum((w * lf) * lf)
    # C's coordinate descent: up to 5 passes over the values, each value moved to its
    # best level given the others (sumlx/suml2 updated as it goes), stopping after a pass
    # without a change. Run in rounds: every remaining position of every active column
    # is evaluated at once against the column's current state; up to the first position
    # that accepts a move nothing changes, so those evaluations are exactly C's. The first
    # accepted move is applied and the column resumes after it in the next round. A pass
    # ending without a move finishes the column (a fixed point), as do 5 passes.
    rows = np.arange(n)[:, None]
    idx = np.arange(xt.shape[1])
    start = np.zeros(idx.size, dtype=np.int64)
    npass = np.zeros(idx.size, dtype=np.int64)
    moved = np.zeros(idx.size, dtype=bool)  # in the current pass
    ever = np.zeros(idx.size, dtype=bool)  # state differs from L/sumlx/suml2
    xa, wa, wxa, La, sx, s2 = xt, w, wx, L.copy(), sumlx.copy(), suml2.copy()
    first = True
    while idx.size:
        lf = La.astype(f32)
        slx = sx - wxa * lf
        sl2 = s2 - (wa * lf) * lf
        new_l = _nint((xa * sl2) / slx)
        np.clip(new_l, -nmax, nmax - 1, out=new_l)
        nf = new_l.astype(f32)
        slx2 = slx + wxa * nf
        sl22 = sl2 + (wa * nf) * nf
        acc = (slx > 0) & (new_l != La) & (sl22 > 0) & ((slx2 * slx2) * s2 > (sx * sx) * sl22)
        if first:
            first = False  # every column starts at position 0
        else:
            acc &= rows >= start
        has = acc.any(axis=0)
        c = np.nonzero(has)[0]
        if c.size:
            p = np.argmax(acc[:, c], axis=0)
            La[p, c] = new_l[p, c]
            sx[c] = slx2[p, c]
            s2[c] = sl22[p, c]
            start[c] = p + 1
            moved[c] = True
            ever[c] = True
        # a column without an accepted move has finished its pass
        again = ~has & moved & (npass < 4)
        start[again] = 0
        npass[again] += 1
        moved[again] = False
        keep = has | again
        out = np.nonzero(~keep & ever)[0]
        if out.size:
            d = idx[out]
            L[:, d] = La[:, out]
            sumlx[d] = sx[out]
            suml2[d] = s2[out]
        k = np.nonzero(keep)[0]
        if k.size < idx.size:
            idx, start, npass, moved, ever = idx[k], start[k], npass[k], moved[k], ever[k]
            xa, wa, wxa, La = xa[:, k], wa[:, k], wxa[:, k], La[:, k]
            sx, s2 = sx[k], s2[k]
    scale = np.where(suml2 > f32(0), sumlx / suml2, f32(0))
    L += nmax
    L[:, zero] = 0
    scale[zero] = f32(0)
    return L, scale


def _sub(blocks, size):
    """(B, 256) → (size, B * 256 // size): column g is sub-block g (block-major order)."""
    return blocks.reshape(-1, size).T.copy()


def _unsub(t, nblocks):
    """Inverse of _sub: (size, G) → (B, 256)."""
    return t.T.reshape(nblocks, QK_K)


def _pack2(L):
    """qs for 2-bit values (B, 256) → (B, 64): per 128, byte l = L[l] | L[l+32]<<2 | …"""
    import numpy as np

    q = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _bytes16(bits):
    import numpy as np

    return bits.astype("<u2").view(np.uint8).reshape(-1, 2)


# --------------------------------------------------------------------------- per type


def _q2_k(blocks):
    import numpy as np

    f32 = np.float32
    B = blocks.shape[0]
    xt = _sub(blocks, 16)
    wt = np.abs(xt)
    Lt, scales, mins = _make_qkx2(xt, wt, 3, -0.5, 0.1, 15, True)
    scales = scales.reshape(B, 16)
    mins = mins.reshape(B, 16)
    max_scale = _max_pos(scales)
    max_min = _max_pos(mins)
    q4 = f32(15)

    pos = max_scale > 0
    isc = q4 / max_scale
    sc = np.where(pos[:, None], _nint(isc[:, None] * scales), 0) & 0xFF
    d_bits, d_f = _fp16(np.where(pos, max_scale / q4, f32(0)))
    posm = max_min > 0
    imn = q4 / max_min
    mq = np.where(posm[:, None], _nint(imn[:, None] * mins) << 4, 0)
    sc = (sc | mq) & 0xFF
    dmin_bits, dmin_f = _fp16(np.where(posm, max_min / q4, f32(0)))

    d = d_f[:, None] * (sc & 0xF).astype(f32)
    dm = dmin_f[:, None] * (sc >> 4).astype(f32)
    L = _unsub(Lt, B).reshape(B, 16, 16)
    x3 = blocks.reshape(B, 16, 16)
    lq = _nint((x3 + dm[:, :, None]) / d[:, :, None])
    np.clip(lq, 0, 3, out=lq)
    L = np.where((d != 0)[:, :, None], lq, L).reshape(B, QK_K)

    out = np.empty((B, 84), dtype=np.uint8)
    out[:, :16] = sc
    out[:, 16:80] = _pack2(L)
    out[:, 80:82] = _bytes16(d_bits)
    out[:, 82:84] = _bytes16(dmin_bits)
    return out


def _q3_k(blocks):
    import numpy as np

    f32 = np.float32
    B = blocks.shape[0]
    xt = _sub(blocks, 16)
    Lt, scales = _make_q3(xt, 4)
    scales = scales.reshape(B, 16)
    _, max_scale = _first_absmax(scales.T)
    nz = max_scale != 0
    iscale = f32(-32) / max_scale
    lq = _nint(iscale[:, None] * scales)
    lq = ((lq + 128) & 0xFF) - 128  # int8_t lq = nearest_int(...)
    np.clip(lq, -32, 31, out=lq)
    lq += 32
    lq = np.where(nz[:, None], lq, 0)
    d_bits, d_f = _fp16(np.where(nz, f32(1) / iscale, f32(0)))

    sb = np.zeros((B, 12), dtype=np.int32)
    sb[:, :8] = (lq[:, :8] & 0xF) | ((lq[:, 8:] & 0xF) << 4)
    hi = lq >> 4
    for j in range(16):
        sb[:, 8 + j % 4] |= hi[:, j] << (2 * (j // 4))
    # decoded scale: the 6-bit value minus 32 (0 bytes decode to -32, times d = 0)
    sc = np.where(nz[:, None], lq, 0) - 32
    d = d_f[:, None] * sc.astype(f32)
    L = _unsub(Lt, B).reshape(B, 16, 16)
    x3 = blocks.reshape(B, 16, 16)
    q = _nint(x3 / d[:, :, None])
    np.clip(q, -4, 3, out=q)
    q += 4
    L = np.where((d != 0)[:, :, None], q, L).reshape(B, QK_K)

    high = L > 3
    # hmask[m] bit b is value 32*b + m
    hb = high.reshape(B, 8, 32).astype(np.uint8)
    hmask = np.zeros((B, 32), dtype=np.uint8)
    for b in range(8):
        hmask |= hb[:, b] << b
    L &= 3

    out = np.empty((B, 110), dtype=np.uint8)
    out[:, :32] = hmask
    out[:, 32:96] = _pack2(L)
    out[:, 96:108] = sb
    out[:, 108:110] = _bytes16(d_bits)
    return out


def _q45_k(blocks, nmax, rmin, nstep):
    """Shared body of Q4_K (nmax 15) and Q5_K (nmax 31): returns (header[:, :16], L)."""
    import numpy as np

    f32 = np.float32
    B = blocks.shape[0]
    xt = _sub(blocks, 32)
    sq = xt * xt
    av_x = np.sqrt(_seqsum(sq) / f32(32))
    wt = np.abs(xt)
    wt += av_x
    Lt, scales, mins = _make_qkx2(xt, wt, nmax, rmin, 0.1, nstep, False)
    scales = scales.reshape(B, 8)
    mins = mins.reshape(B, 8)
    max_scale = _max_pos(scales)
    max_min = _max_pos(mins)
    c63 = f32(63)
    inv_scale = np.where(max_scale > 0, c63 / max_scale, f32(0))
    inv_min = np.where(max_min > 0, c63 / max_min, f32(0))
    ls = np.minimum(_nint(inv_scale[:, None] * scales) & 0xFF, 63)
    lm = np.minimum(_nint(inv_min[:, None] * mins) & 0xFF, 63)
    d_bits, d_f = _fp16(max_scale / c63)
    dmin_bits, dmin_f = _fp16(max_min / c63)

    hdr = np.empty((B, 16), dtype=np.uint8)
    hdr[:, 0:2] = _bytes16(d_bits)
    hdr[:, 2:4] = _bytes16(dmin_bits)
    hdr[:, 4:8] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    hdr[:, 8:12] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    hdr[:, 12:16] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)

    d = d_f[:, None] * ls.astype(f32)
    dm = dmin_f[:, None] * lm.astype(f32)
    L = _unsub(Lt, B).reshape(B, 8, 32)
    x3 = blocks.reshape(B, 8, 32)
    lq = _nint((x3 + dm[:, :, None]) / d[:, :, None])
    np.clip(lq, 0, nmax, out=lq)
    L = np.where((d != 0)[:, :, None], lq, L).reshape(B, QK_K)
    return hdr, L


def _q4_k(blocks):
    import numpy as np

    hdr, L = _q45_k(blocks, 15, -1.0, 20)
    B = blocks.shape[0]
    q = L.reshape(B, 4, 2, 32).astype(np.uint8)
    out = np.empty((B, 144), dtype=np.uint8)
    out[:, :16] = hdr
    out[:, 16:] = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(B, 128)
    return out


def _q5_k(blocks):
    import numpy as np

    hdr, L = _q45_k(blocks, 31, -0.5, 15)
    B = blocks.shape[0]
    q = L.reshape(B, 4, 2, 32).astype(np.uint8)
    hb = q >> 4  # (B, 4, 2, 32): bit for qh[j], m1 = 1 << 2t, m2 = 2 << 2t
    qh = np.zeros((B, 32), dtype=np.uint8)
    for t in range(4):
        qh |= (hb[:, t, 0] << (2 * t)) | (hb[:, t, 1] << (2 * t + 1))
    lo = q & 0xF
    out = np.empty((B, 176), dtype=np.uint8)
    out[:, :16] = hdr
    out[:, 16:48] = qh
    out[:, 48:] = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(B, 128)
    return out


def _q6_k(blocks):
    import numpy as np

    f32 = np.float32
    B = blocks.shape[0]
    xt = _sub(blocks, 16)
    Lt, scales = _make_qx_rmse1(xt, 32)
    scales = scales.reshape(B, 16)
    max_abs, max_scale = _first_absmax(scales.T)
    zero = max_abs < f32(1e-15)
    iscale = f32(-128) / max_scale
    d_bits, d_f = _fp16(f32(1) / iscale)
    sc = np.minimum(_nint(iscale[:, None] * scales), 127)
    sc = ((sc + 128) & 0xFF) - 128  # stored as int8
    d = d_f[:, None] * sc.astype(f32)
    L = _unsub(Lt, B).reshape(B, 16, 16)
    x3 = blocks.reshape(B, 16, 16)
    q = _nint(x3 / d[:, :, None])
    np.clip(q, -32, 31, out=q)
    q += 32
    L = np.where((d != 0)[:, :, None], q, L).reshape(B, 2, 4, 32).astype(np.uint8)

    lo = L & 0xF
    hi = L >> 4
    ql = np.empty((B, 2, 2, 32), dtype=np.uint8)
    ql[:, :, 0] = lo[:, :, 0] | (lo[:, :, 2] << 4)
    ql[:, :, 1] = lo[:, :, 1] | (lo[:, :, 3] << 4)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)

    out = np.empty((B, 210), dtype=np.uint8)
    out[:, :128] = ql.reshape(B, 128)
    out[:, 128:192] = qh.reshape(B, 64)
    out[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    out[:, 208:210] = _bytes16(d_bits)
    out[zero] = 0
    return out


_QUANTIZERS = {"q2_k": _q2_k, "q3_k": _q3_k, "q4_k": _q4_k, "q5_k": _q5_k, "q6_k": _q6_k}
