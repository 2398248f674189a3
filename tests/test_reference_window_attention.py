"""The reference window_attention against two independent formulations of the spec, and gradcheck."""
import pytest
import torch

import vitpose_kernels as vk


def dense_attention(q, k, v, grid, window, shift, pool, num_global, rel_pos_h=None, rel_pos_w=None):
    """The spec written token by token: an explicit (N x N+P) mask and dense softmax."""
    B, H, N, D = q.shape
    G, (hg, wg) = num_global, grid
    wh, ww = window or grid
    sh, sw = shift
    cells_w = -(-wg // ww)
    P = -(-hg // wh) * cells_w if pool else 0
    allowed = torch.zeros(N, N + P, dtype=torch.bool)
    bias = torch.zeros(B, H, N, N + P, dtype=q.dtype)
    pool_of = torch.zeros(P, hg * wg, dtype=q.dtype)
    for i in range(N):
        if i < G:
            allowed[i, :N] = True
            continue
        yq, xq = divmod(i - G, wg)
        allowed[i, :G] = True
        allowed[i, N:] = True
        for j in range(G, N):
            yk, xk = divmod(j - G, wg)
            if (yq - sh) // wh == (yk - sh) // wh and (xq - sw) // ww == (xk - sw) // ww:
                allowed[i, j] = True
                if rel_pos_h is not None:
                    bias[:, :, i, j] += q[:, :, i] @ rel_pos_h[yq - yk + wh - 1]
                if rel_pos_w is not None:
                    bias[:, :, i, j] += q[:, :, i] @ rel_pos_w[xq - xk + ww - 1]
        if pool:
            pool_of[(yq // wh) * cells_w + xq // ww, i - G] = 1
    keys, values = k, v
    if pool:
        pool_of = pool_of / pool_of.sum(1, keepdim=True)
        keys = torch.cat([k, pool_of @ k[:, :, G:]], 2)
        values = torch.cat([v, pool_of @ v[:, :, G:]], 2)
    logits = (q @ keys.transpose(-1, -2)) * D ** -0.5 + bias
    return torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1) @ values


def swin_attention(q, k, v, grid, window, shift):
    """Swin's recipe (grid a multiple of the window): roll, partition, region mask, reverse.
    Masked pairs get -inf here instead of Swin's -100 (the spec's zero weight)."""
    B, H, N, D = q.shape
    (hg, wg), (wh, ww), (sh, sw) = grid, window, shift

    def part(t):
        t = t.reshape(B, H, hg, wg, D).roll((-sh, -sw), dims=(2, 3))
        return t.reshape(B, H, hg // wh, wh, wg // ww, ww, D).transpose(3, 4).reshape(B, H, -1, wh * ww, D)

    region = torch.zeros(hg, wg)
    if sh or sw:  # Swin's three slices per axis, shifted back by the roll
        r = 0
        for ys in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)) if sh else (slice(None),):
            for xs in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)) if sw else (slice(None),):
                region[ys, xs] = r
                r += 1
    region = region.reshape(hg // wh, wh, wg // ww, ww).transpose(1, 2).reshape(-1, wh * ww)
    mask = region[:, :, None] != region[:, None, :]
    logits = part(q) @ part(k).transpose(-1, -2) * D ** -0.5
    out = torch.softmax(logits.masked_fill(mask, float("-inf")), -1) @ part(v)
    out = out.reshape(B, H, hg // wh, wg // ww, wh, ww, D).transpose(3, 4).reshape(B, H, hg, wg, D)
    return out.roll((sh, sw), dims=(2, 3)).reshape(B, H, N, D)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


CASES = [  # grid, window, shift, pool, num_global, rel_pos
    ((7, 9), None, (0, 0), False, 0, False),
    ((7, 9), None, (0, 0), True, 2, True),
    ((7, 9), (4, 3), (0, 0), False, 0, False),
    ((7, 9), (4, 3), (2, 1), True, 1, True),
    ((6, 8), (3, 4), (1, 2), True, 3, False),
    ((5, 4), (2, 2), (1, 1), False, 1, True),
    ((4, 6), (8, 8), (3, 5), True, 0, True),  # window larger than the grid
    ((3, 3), (1, 1), (0, 0), True, 2, False),
    ((1, 1), None, (0, 0), False, 17, False),
]


@pytest.mark.parametrize("grid,window,shift,pool,G,rel", CASES)
def test_against_dense_mask(grid, window, shift, pool, G, rel):
    B, H, D = 2, 2, 8
    N = G + grid[0] * grid[1]
    q, k, v = rand(B, H, N, D, seed=1), rand(B, H, N, D, seed=2), rand(B, H, N, D, seed=3)
    wh, ww = window or grid
    rh = rand(2 * wh - 1, D, seed=4) if rel else None
    rw = rand(2 * ww - 1, D, seed=5) if rel else None
    out = vk.window_attention(q, k, v, grid=grid, window=window, shift=shift, pool=pool, num_global=G,
                              rel_pos_h=rh, rel_pos_w=rw, backend="reference")
    expected = dense_attention(q, k, v, grid, window, shift, pool, G, rh, rw)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grid,window,shift", [((8, 12), (4, 4), (2, 2)), ((8, 12), (4, 6), (0, 3)),
                                               ((6, 6), (3, 3), (1, 0)), ((8, 8), (8, 8), (0, 0))])
def test_against_swin_roll_partition(grid, window, shift):
    B, H, D = 1, 3, 8
    N = grid[0] * grid[1]
    q, k, v = rand(B, H, N, D, seed=6), rand(B, H, N, D, seed=7), rand(B, H, N, D, seed=8)
    out = vk.window_attention(q, k, v, grid=grid, window=window, shift=shift, backend="reference")
    torch.testing.assert_close(out, swin_attention(q, k, v, grid, window, shift), rtol=1e-10, atol=1e-10)


def test_full_attention_equals_sdpa():
    q, k, v = rand(2, 3, 5 + 7 * 9, 16, seed=9), rand(2, 3, 68, 16, seed=10), rand(2, 3, 68, 16, seed=11)
    out = vk.window_attention(q, k, v, grid=(7, 9), num_global=5, backend="reference")
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("grid,window,shift,pool,G,rel", [
    ((3, 4), None, (0, 0), True, 2, True),
    ((5, 4), (3, 2), (2, 1), True, 1, True),
    ((4, 3), (2, 2), (1, 1), False, 0, False),
])
def test_gradcheck(grid, window, shift, pool, G, rel):
    B, H, D = 1, 1, 4
    N = G + grid[0] * grid[1]
    wh, ww = window or grid
    inputs = [rand(B, H, N, D, seed=s).requires_grad_() for s in (1, 2, 3)]
    inputs += [rand(2 * s - 1, D, seed=s).requires_grad_() if rel else None for s in (wh, ww)]

    def f(q, k, v, rh, rw):
        return vk.window_attention(q, k, v, grid=grid, window=window, shift=shift, pool=pool,
                                   num_global=G, rel_pos_h=rh, rel_pos_w=rw, backend="reference")

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_output_dtype(dtype):
    q = torch.randn(1, 2, 1 + 20, 8).to(dtype)
    out = vk.window_attention(q, q, q, grid=(4, 5), window=(2, 2), pool=True, num_global=1)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_compile_fullgraph_reference():
    q = torch.randn(1, 2, 20, 8)

    def f(q):
        return vk.window_attention(q, q, q, grid=(4, 5), window=(2, 3), shift=(1, 1), pool=True)

    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="eager")(q), f(q))
