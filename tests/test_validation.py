"""Bad input gets a clear ValueError/TypeError naming the argument, what was seen and what was expected."""
import pytest
import torch

import vitpose_kernels as vk


def qkv(B=1, H=2, N=20, D=8, dtype=torch.float32):
    return [torch.randn(B, H, N, D).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(grid=(4, 6)), ValueError, r"N\) must equal num_global \+ Hg\*Wg = 0 \+ 4\*6 = 24, got N=20"),
    (dict(grid=(4, 5), num_global=1), ValueError, "num_global"),
    (dict(grid=(4, 5), window=(2, 2), shift=(2, 0)), ValueError, "shift must satisfy 0 <= shift < window"),
    (dict(grid=(4, 5), window=(0, 2)), ValueError, "window must be >= 1"),
    (dict(grid=(4, 5), window=(-1, 2)), ValueError, "window"),
    (dict(grid=(4, 5), window="big"), TypeError, "window must be an int or a pair"),
    (dict(grid=(4, 5), shift=(-1, 0)), ValueError, "shift must be >= 0"),
    (dict(grid=(4, 5), num_global=-1), ValueError, "num_global"),
    (dict(grid=(4, 5), pool=1), TypeError, "pool must be a bool"),
    (dict(grid=(4, 5), window=(2, 2), rel_pos_h=torch.zeros(4, 8)), ValueError,
     r"rel_pos_h must have shape \(2\*2-1, D\) = \(3, 8\)"),
    (dict(grid=(4, 5), rel_pos_w=torch.zeros(9, 4)), ValueError, r"rel_pos_w must have shape .* \(9, 8\) for this grid"),
    (dict(grid=(4, 5), backend="tpu"), ValueError, "backend must be one of"),
    (dict(grid=(4, 5), scale="x"), TypeError, "scale"),
])
def test_window_attention_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        vk.window_attention(*qkv(), **kwargs)


def test_window_attention_bad_tensors():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q must be 4-D \(B, H, N, D\), got q.shape=\(2, 20, 8\)"):
        vk.window_attention(q[0], k, v, grid=(4, 5))
    with pytest.raises(ValueError, match="same shape"):
        vk.window_attention(q, k[:, :1], v, grid=(4, 5))
    with pytest.raises(TypeError, match="floating dtype"):
        vk.window_attention(q.long(), k.long(), v.long(), grid=(4, 5))
    with pytest.raises(TypeError, match="share a dtype"):
        vk.window_attention(q, k.half(), v, grid=(4, 5))
    with pytest.raises(ValueError, match="empty batch"):
        vk.window_attention(*qkv(B=0), grid=(4, 5))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        vk.window_attention(q.numpy(), k, v, grid=(4, 5))


def test_simple_decoder_bad_input():
    x, w = torch.randn(2, 8, 4, 3), torch.randn(17, 8, 3, 3)
    with pytest.raises(ValueError, match=r"x.shape\[1\] \(C=8\) must match weight.shape\[1\] \(C=4\)"):
        vk.simple_decoder(x, torch.randn(17, 4, 3, 3))
    with pytest.raises(ValueError, match="k in \\(1, 3\\)"):
        vk.simple_decoder(x, torch.randn(17, 8, 5, 5))
    with pytest.raises(ValueError, match=r"bias must have shape \(K,\) = \(17,\)"):
        vk.simple_decoder(x, w, torch.randn(3))
    with pytest.raises(ValueError, match="scale_factor must be an int >= 1"):
        vk.simple_decoder(x, w, scale_factor=0)
    with pytest.raises(ValueError, match="scale_factor"):
        vk.simple_decoder(x, w, scale_factor=2.5)
    with pytest.raises(TypeError, match="floating dtype"):
        vk.simple_decoder(x.int(), w)
    with pytest.raises(ValueError, match="4-D"):
        vk.simple_decoder(x[0], w)
    with pytest.raises(ValueError, match="empty batch"):
        vk.simple_decoder(x[:0], w)


def test_decode_heatmaps_bad_input():
    hm = torch.rand(2, 17, 16, 12)
    bad = hm.clone()
    bad[1, 3, 4, 4] = float("nan")
    with pytest.raises(ValueError, match=r"heatmaps contains 1 NaN/Inf"):
        vk.decode_heatmaps(bad)
    with pytest.raises(ValueError, match="4-D"):
        vk.decode_heatmaps(hm[0])
    with pytest.raises(TypeError, match="floating dtype"):
        vk.decode_heatmaps(hm.to(torch.uint8))
    with pytest.raises(ValueError, match="flip_heatmaps must match"):
        vk.decode_heatmaps(hm, flip_heatmaps=hm[:1], flip_indices=list(range(17)))
    with pytest.raises(ValueError, match="flip_indices is required"):
        vk.decode_heatmaps(hm, flip_heatmaps=hm)
    with pytest.raises(ValueError, match="permutation"):
        vk.decode_heatmaps(hm, flip_heatmaps=hm, flip_indices=list(range(16)))
    with pytest.raises(ValueError, match=r"bbox_centers must have shape \(B, 2\) = \(2, 2\)"):
        vk.decode_heatmaps(hm, bbox_centers=torch.zeros(3, 2), bbox_scales=torch.ones(3, 2))
    with pytest.raises(ValueError, match="given together"):
        vk.decode_heatmaps(hm, bbox_centers=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="method must be"):
        vk.decode_heatmaps(hm, method="taylor")  # "dark" is TokenPose's (test_decode_heatmaps_dark.py)
    with pytest.raises(ValueError, match="blur_kernel_size must be an odd"):
        vk.decode_heatmaps(hm, blur_kernel_size=10)


def test_udp_targets_bad_input():
    kp, vis = torch.rand(2, 17, 2), torch.ones(2, 17)
    with pytest.raises(ValueError, match=r"keypoints must be \(B, K, 2\)"):
        vk.udp_targets(torch.rand(2, 17, 3), vis)
    with pytest.raises(ValueError, match=r"visible must have shape \(B, K\) = \(2, 17\)"):
        vk.udp_targets(kp, torch.ones(2, 16))
    with pytest.raises(ValueError, match="sigma must be a positive"):
        vk.udp_targets(kp, vis, sigma=0)
    with pytest.raises(ValueError, match="heatmap_size must be >= 2"):
        vk.udp_targets(kp, vis, heatmap_size=(1, 64))
