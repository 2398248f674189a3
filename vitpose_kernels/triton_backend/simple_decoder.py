"""Triton simple_decoder: ReLU, bilinear x s, k x k conv, without the upsampled map.

Bilinear upsampling and the conv's channel mixing are both linear, so they commute. Per conv tap
(i, j) the contraction over C runs at low resolution, all taps in one GEMM::

    Y = W_taps @ relu(x)        # (k*k*K, C) @ (B, C, h*w) -> (B, k*k*K, h*w)   (cuBLAS)

and one fused kernel bilinearly upsamples each tap's map, shifts it by (i - k//2, j - k//2) with
the conv's zero padding at the high-resolution border, and sums the taps plus the bias. That is
s*s times fewer multiply-adds than convolving the (B, C, s*h, s*w) map, which is never formed.

Backward is the transposed path: grad_out -> (adjoint of shift + upsample, a Triton gather at low
resolution) -> per-tap grads dY, then GEMMs for dweight = dY @ relu(x)^T and dx = W_taps^T @ dY
masked by x > 0; dbias is a plain reduction.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _alloc, dispatch
from .._head_ops import define_simple_decoder, tap_weights


@triton.jit
def _bilinear_src(dst, inv_s, n_in):
    """PyTorch's align_corners=False source index for output coordinate `dst` (any int, the
    caller masks out-of-range ones): clamped below at 0, the upper neighbour clamped to n_in - 1.
    Returns (i0, i1, lambda0, lambda1)."""
    src = tl.maximum((dst.to(tl.float32) + 0.5) * inv_s - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), n_in - 1)  # src >= 0, so the cast is a floor
    l1 = src - i0.to(tl.float32)
    i1 = tl.minimum(i0 + 1, n_in - 1)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _upsample_taps_fwd(y_ptr, bias_ptr, out_ptr, K, h, w, H, W, inv_s,
                       KS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[b, kk] = bias[kk] + sum_taps up(Y[b, tap*K + kk]) shifted by the tap, zero outside.

    A program covers BLOCK_K channels (1 on the GPU; a whole block under the CPU interpreter,
    whose cost is per operation) and a BLOCK_H x BLOCK_W tile of the output."""
    n_kb = tl.cdiv(K, BLOCK_K)
    pid = tl.program_id(0)
    b = pid // n_kb
    kk = (pid % n_kb) * BLOCK_K + tl.arange(0, BLOCK_K)[:, None, None]
    k_ok = kk < K
    oy = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H))[None, :, None]
    ox = (tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W))[None, None, :]
    P: tl.constexpr = KS // 2
    hw = h * w
    acc = tl.zeros([BLOCK_K, BLOCK_H, BLOCK_W], dtype=tl.float32)
    for i in tl.static_range(KS):
        uy = oy + (i - P)  # row of the upsampled map this tap reads
        vy = (uy >= 0) & (uy < H)
        y0, y1, ly0, ly1 = _bilinear_src(uy, inv_s, h)
        for j in tl.static_range(KS):
            ux = ox + (j - P)
            vx = (ux >= 0) & (ux < W)
            x0, x1, lx0, lx1 = _bilinear_src(ux, inv_s, w)
            # Indices are clamped into the map, so only the channel needs a load mask; the
            # shift's zero padding is applied by the `where` below.
            base = y_ptr + ((b * (KS * KS) + (i * KS + j)) * K + kk).to(tl.int64) * hw
            v00 = tl.load(base + y0 * w + x0, mask=k_ok, other=0.0).to(tl.float32)
            v01 = tl.load(base + y0 * w + x1, mask=k_ok, other=0.0).to(tl.float32)
            v10 = tl.load(base + y1 * w + x0, mask=k_ok, other=0.0).to(tl.float32)
            v11 = tl.load(base + y1 * w + x1, mask=k_ok, other=0.0).to(tl.float32)
            # Same association as PyTorch's upsample_bilinear2d kernel.
            val = ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11)
            acc += tl.where(vy & vx, val, 0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
    mask = k_ok & (oy < H) & (ox < W)
    out = out_ptr + (b * K + kk).to(tl.int64) * H * W + oy * W + ox
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _upsample_taps_bwd(g_ptr, dy_ptr, B, K, h, w, H, W, inv_s, S,
                       s_gb, s_gk, s_gh, s_gw, s_dt, s_db,
                       KS: tl.constexpr, TWO_S: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """dY[tap*K + kk, b] (low res) = adjoint of (upsample, shift by tap) applied to grad[b, kk].

    Low-res row y is read only by upsampled rows whose floor source is y - 1 or y; those lie in
    [S*y - (S+1)//2, S*y - (S+1)//2 + 2S). Rows of candidates are a loop, columns a tensor axis
    (TWO_S = next_pow2(2S), extra lanes masked), so each output gathers 2S x 2S gradient values.
    Tensors are (channel, row, column, column candidate).
    """
    n_kb = tl.cdiv(K, BLOCK_K)
    pid = tl.program_id(0)  # (tap * B + b) * n_kb + channel block
    kk = (pid % n_kb) * BLOCK_K + tl.arange(0, BLOCK_K)[:, None, None]
    b = (pid // n_kb) % B
    t = pid // (n_kb * B)
    di = t // KS - KS // 2
    dj = t % KS - KS // 2
    k_ok = kk < K
    ly = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H))[None, :, None]
    lx = (tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W))[None, None, :]
    first = (S + 1) // 2
    # Column candidates, (1, 1, BLOCK_W, TWO_S): weight of upsampled column ux on column lx.
    cc = tl.arange(0, TWO_S)[None, None, None, :]
    lx4 = lx[:, :, :, None]
    ux = S * lx4 - first + cc
    x0, x1, wx0, wx1 = _bilinear_src(ux, inv_s, w)
    wx = tl.where(x0 == lx4, wx0, 0.0) + tl.where(x1 == lx4, wx1, 0.0)
    gx = ux - dj  # output column that read upsampled column ux through this tap
    vx = (cc < 2 * S) & (ux >= 0) & (ux < W) & (gx >= 0) & (gx < W)
    wx = tl.where(vx, wx, 0.0)
    g_base = g_ptr + b.to(tl.int64) * s_gb + kk.to(tl.int64) * s_gk
    acc = tl.zeros([BLOCK_K, BLOCK_H, BLOCK_W], dtype=tl.float32)
    for a in range(0, 2 * S):
        uy = S * ly - first + a
        y0, y1, wy0, wy1 = _bilinear_src(uy, inv_s, h)
        wy = tl.where(y0 == ly, wy0, 0.0) + tl.where(y1 == ly, wy1, 0.0)
        gy = uy - di
        vy = (uy >= 0) & (uy < H) & (gy >= 0) & (gy < H)
        ok = (k_ok & vy)[:, :, :, None] & vx
        gv = tl.load((g_base + gy * s_gh)[:, :, :, None] + gx * s_gw, mask=ok, other=0.0)
        acc += tl.where(vy, wy, 0.0) * tl.sum(gv.to(tl.float32) * wx, axis=3)
    mask = k_ok & (ly < h) & (lx < w)
    out = dy_ptr + (t * K + kk).to(tl.int64) * s_dt + b.to(tl.int64) * s_db + ly * w + lx
    tl.store(out, acc.to(dy_ptr.dtype.element_ty), mask=mask)


# None: wide blocks exactly when interpreting. Tests set False to run the GPU tiling on the CPU.
_WIDE_BLOCKS = None


def _blocks(K: int, H: int, W: int, cap_h: int, cap_w: int):
    """(channels, rows, columns) per program. On the GPU one channel per program; under the CPU
    interpreter, whose cost is per operation rather than per element, whole maps and channels."""
    wide = dispatch.interpreting() if _WIDE_BLOCKS is None else _WIDE_BLOCKS
    if wide:
        return (min(32, triton.next_power_of_2(K)), min(64, triton.next_power_of_2(H)),
                min(64, triton.next_power_of_2(W)))
    return 1, min(cap_h, triton.next_power_of_2(H)), min(cap_w, triton.next_power_of_2(W))


def _forward(x, weight, bias, scale_factor):
    B, C, h, w = x.shape
    K, _, k, _ = weight.shape
    H, W = h * scale_factor, w * scale_factor
    r = torch.relu(x).reshape(B, C, h * w)
    y = torch.matmul(tap_weights(weight), r).contiguous()  # (B, k*k*K, h*w), fp32 accumulation in cuBLAS
    out = _alloc.empty(B, K, H, W, dtype=x.dtype, device=x.device)
    BK, BH, BW = _blocks(K, H, W, 8, 64)
    grid = (B * triton.cdiv(K, BK), triton.cdiv(H, BH), triton.cdiv(W, BW))
    _upsample_taps_fwd[grid](y, bias if bias is not None else y, out, K, h, w, H, W,
                             1.0 / scale_factor, KS=k, HAS_BIAS=bias is not None,
                             BLOCK_K=BK, BLOCK_H=BH, BLOCK_W=BW)
    return out


def _backward(grad, x, weight, scale_factor):
    B, C, h, w = x.shape
    K, _, k, _ = weight.shape
    H, W = h * scale_factor, w * scale_factor
    T = k * k
    # Per-tap low-res grads laid out (tap*K + kk, B, h*w): one GEMM each for dweight and dx.
    dy = _alloc.empty(T * K, B, h * w, dtype=x.dtype, device=x.device)
    BK, BH, BW = _blocks(K, h, w, 16, 16)
    grid = (T * B * triton.cdiv(K, BK), triton.cdiv(h, BH), triton.cdiv(w, BW))
    _upsample_taps_bwd[grid](grad, dy, B, K, h, w, H, W, 1.0 / scale_factor, scale_factor,
                             *grad.stride(), dy.stride(0), dy.stride(1),
                             KS=k, TWO_S=triton.next_power_of_2(2 * scale_factor),
                             BLOCK_K=BK, BLOCK_H=BH, BLOCK_W=BW)
    dy2 = dy.view(T * K, B * h * w)
    r = torch.relu(x)
    r_rows = r.permute(0, 2, 3, 1).reshape(B * h * w, C)
    dweight = _alloc.empty(K, C, k, k, dtype=weight.dtype, device=x.device)
    dweight.copy_(torch.matmul(dy2, r_rows).view(k, k, K, C).permute(2, 3, 0, 1))
    dr = torch.matmul(tap_weights(weight).t(), dy2).view(C, B, h, w).permute(1, 0, 2, 3)
    dx = _alloc.empty(B, C, h, w, dtype=x.dtype, device=x.device)
    torch.where(x > 0, dr, torch.zeros((), dtype=x.dtype, device=x.device), out=dx)
    dbias = _alloc.empty(K, dtype=weight.dtype, device=x.device)
    dbias.copy_(grad.sum(dim=(0, 2, 3), dtype=torch.float32))
    return dx, dweight, dbias


simple_decoder_op, simple_decoder_backward_op = define_simple_decoder("triton", _forward, _backward)


def reasons(x, weight, bias, scale_factor) -> list[str]:
    out = []
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        out.append(f"x.dtype={x.dtype}: the Triton kernels take float32/float16/bfloat16 "
                   "(float64, e.g. for gradcheck, runs on backend='reference')")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        out.append(f"x, weight and bias must share a dtype, got x.dtype={x.dtype}, "
                   f"weight.dtype={weight.dtype}, bias.dtype={None if bias is None else bias.dtype}")
    if x.device.type != "cuda" and not (x.device.type == "cpu" and dispatch.interpreting()):
        out.append(f"x.device={x.device}: Triton needs a CUDA tensor (or CPU with TRITON_INTERPRET=1)")
    return out


@dispatch.register("simple_decoder", "triton", reasons=reasons)
def simple_decoder(x, weight, bias, scale_factor):
    return simple_decoder_op(x, weight, bias, scale_factor)
