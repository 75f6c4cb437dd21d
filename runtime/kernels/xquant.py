"""Activation quantization for the integer kernels (int8 per block, one float scale each, float
group sums), shared by the row-parallel driver (driver.py) and the tiled prefill (tiled.py)."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def quant_x(x, xblk, sgroup, unit, order, xq, xd, xs):
    """x (T, colsp) float32 -> int8 codes per block of xblk (max-abs / 127 scale),
    block scales xd (T, >= colsp/xblk), float sums xs (T, >= colsp/sgroup) of x per
    sgroup (entries past the data zeroed), codes in kernel order: within each whole
    unit, position k holds element order[k] (no reordering when order is empty; a
    last partial unit stays in stored order).  Rounds half away from zero.  No fastmath: every
    compiled copy must round the same way (it vectorizes without: the max is an integer max)."""
    T, n = x.shape
    reorder = order.shape[0] > 0
    tmp = np.empty(n if reorder else 0, np.int8)
    bits = x.view(np.int32)  # max |x| as an integer max over the bit patterns: vectorizes (a float max does not)
    cell = np.empty(1, np.int32)
    cellf = cell.view(np.float32)
    for t in range(T):
        xt = x[t]
        bt = bits[t]
        dst = tmp if reorder else xq[t]
        for blk in range(n // xblk):
            i0 = blk * xblk
            m = np.int32(0)
            for i in range(xblk):
                a = bt[i0 + i] & np.int32(0x7FFFFFFF)
                m = a if a > m else m
            cell[0] = m
            amax = cellf[0]
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
            xd[t, blk] = amax / np.float32(127.0)
            for i in range(xblk):
                v = xt[i0 + i] * inv
                q = np.int32(abs(v) + np.float32(0.5))
                dst[i0 + i] = np.int8(q if v >= 0 else -q)
        for blk in range(n // xblk, xd.shape[1]):
            xd[t, blk] = 0.0
        # sums of the *quantized* activations (like ggml's Q8_K bsums): the offset term
        # (mins, biases, Q6_K's -32) then cancels the rounding error of the code term
        # instead of adding it back through exact float sums.  Summed as integers (a group
        # lies inside one activation block), so no float reassociation can change them.
        for g in range(n // sgroup):
            si = np.int32(0)
            for i in range(sgroup):
                si += np.int32(dst[g * sgroup + i])
            xs[t, g] = np.float32(si) * xd[t, (g * sgroup) // xblk]
        for g in range(n // sgroup, xs.shape[1]):
            xs[t, g] = 0.0
        if reorder:
            xqt = xq[t]
            nmain = n - n % unit
            for u0 in range(0, nmain, unit):
                for k in range(unit):
                    xqt[u0 + k] = tmp[u0 + order[k]]
            for i in range(nmain, n):
                xqt[i] = tmp[i]


@njit(cache=True)
def empty_i8_64(T, n):
    """np.empty((T, n), np.int8) starting on a 64-byte boundary (numba's arrays start on 32; so do
    the rows where n is a multiple of 64, as for every super-block type): the 512-bit kernels load
    64 activation bytes at a time, and loads straddling two cache lines cost (Q4_K, 512 x 2048 by
    5632 x 2048, one thread, Zen 5: 46 ms on a buffer at 32 mod 64, 37 ms aligned)."""
    buf = np.empty(T * n + 64, np.int8)
    off = (64 - buf.ctypes.data % 64) % 64
    return buf[off:off + T * n].reshape((T, n))
